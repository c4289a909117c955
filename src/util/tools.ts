/**
 * Every host tool imagebuilder runs, the Debian package that carries it and what needs it. One table: the
 * "not installed" hints of exec, `imagebuilder doctor`'s tool checks and the Dockerfile's package list (a unit
 * test checks the Dockerfile installs each package) all come from here.
 */
export interface HostTool {
  /** The Debian 13 package. */
  package: string;
  /** Where Debian 12 differs. */
  bookwormPackage?: string;
  /** What cannot work without it, in words: "the fuse mount backend". */
  neededBy: string;
  /** Needed by a default `imagebuilder apply` on the fuse backend (the path that works on most hosts). */
  required: boolean;
}

export const HOST_TOOLS: Record<string, HostTool> = {
  'qemu-img': { package: 'qemu-utils', neededBy: 'every build (format detection, the work overlay, conversion)', required: true },
  'qemu-storage-daemon': { package: 'qemu-utils', bookwormPackage: 'qemu-system-common', neededBy: 'the fuse mount backend', required: true },
  losetup: { package: 'mount', neededBy: 'the fuse mount backend (loop device over the export)', required: true },
  partx: { package: 'util-linux', neededBy: 'partitions of loop and nbd devices on kernels that do not scan them', required: true },
  blkid: { package: 'util-linux', neededBy: 'finding the guest filesystems', required: true },
  blockdev: { package: 'util-linux', neededBy: 'dropping a reused loop device\'s stale page cache', required: true },
  fsfreeze: { package: 'util-linux', neededBy: 'quiescing the guest filesystems before a step-cache snapshot', required: true },
  mount: { package: 'mount', neededBy: 'mounting the guest filesystems', required: true },
  umount: { package: 'mount', neededBy: 'unmounting the guest filesystems', required: true },
  flock: { package: 'util-linux', neededBy: 'the locks of the image cache and of nbd devices (held by the kernel, released when a build dies)', required: true },
  setpriv: { package: 'util-linux', neededBy: 'helpers that die with a killed build (--pdeathsig); host programs reading hostile input, dropped to nobody with no capabilities', required: true },
  getent: { package: 'libc-bin', neededBy: 'claiming a uid no user or group has, for qemu and the DNS relay to run as alone', required: true },
  capsh: { package: 'libcap2-bin', neededBy: 'emptying the bounding set of guest commands but for their capability allowlist', required: true },
  unshare: { package: 'util-linux', neededBy: 'the build\'s network namespace for guest commands, kept by a bind mount of our own', required: true },
  nsenter: { package: 'util-linux', neededBy: 'guest commands joining the build\'s network namespace', required: true },
  pasta: { package: 'passt', neededBy: 'the network of guest commands: a namespace of their own with NAT to the outside, nothing of this host', required: true },
  ip: { package: 'iproute2', neededBy: 'the build\'s network namespace and its routes refusing host and link-local addresses', required: true },
  script: { package: 'bsdutils', neededBy: 'interactive shells in the guest get a pty of their own, relayed to the terminal', required: true },
  fusermount3: { package: 'fuse3', neededBy: 'ending a FUSE export whose daemon left it mounted', required: true },
  mknod: { package: 'coreutils', neededBy: 'the chroot\'s minimal /dev', required: true },
  touch: { package: 'coreutils', neededBy: 'restoring guest file times', required: true },
  rm: { package: 'coreutils', neededBy: 'removing device nodes made for a build', required: true },
  sync: { package: 'coreutils', neededBy: 'flushing the FUSE export and unfrozen filesystems', required: true },
  'virt-sparsify': { package: 'guestfs-tools', neededBy: 'the default --sparsify virt-sparsify (--sparsify fstrim works without it)', required: true },
  fstrim: { package: 'util-linux', neededBy: '--sparsify fstrim', required: false },
  'qemu-nbd': { package: 'qemu-utils', neededBy: 'the nbd mount backend', required: false },
  guestmount: { package: 'guestmount', neededBy: 'the guestmount mount backend', required: false },
  guestunmount: { package: 'guestmount', neededBy: 'the guestmount mount backend', required: false },
  guestfish: { package: 'libguestfs-tools', neededBy: 'probing whether the libguestfs appliance can use KVM', required: false },
  gpg: { package: 'gpg', neededBy: 'the repository step (key fingerprints)', required: false },
  gpgv: { package: 'gpgv', neededBy: 'signed sums files of base images', required: false },
  xz: { package: 'xz-utils', neededBy: '.xz base images', required: false },
  zstd: { package: 'zstd', neededBy: '.zst base images', required: false },
  bwrap: { package: 'bubblewrap', neededBy: 'the sandbox of every guest command, and reading hostile input with host programs (qemu-img info of an input image, rpm over a guest database) without privileges', required: true },
  rpm: { package: 'rpm', neededBy: 'the BOM of RPM-family guests (Fedora, RHEL, Amazon Linux …)', required: false },
  setfiles: { package: 'policycoreutils', neededBy: 'relabelling SELinux guests with their own file_contexts', required: false },
  getfattr: { package: 'attr', neededBy: 'apply --format tar (extended attributes: capabilities, SELinux labels)', required: false },
  'qemu-system-aarch64': { package: 'qemu-system-arm', neededBy: 'booting arm64 images to test them (with their UEFI firmware, package qemu-efi-aarch64)', required: false },
  'qemu-system-x86_64': { package: 'qemu-system-x86', neededBy: 'booting amd64 images to test them (those with an EFI System Partition also need the UEFI firmware, package ovmf)', required: false },
};

/** "the Debian package qemu-utils (qemu-system-common on Debian 12)", or a generic phrase for a tool we do not list. */
export function packageHint(tool: string): string {
  const entry = HOST_TOOLS[tool];
  if (!entry) return `the package that provides ${tool}`;
  return `the Debian package ${entry.package}${entry.bookwormPackage ? ` (${entry.bookwormPackage} on Debian 12)` : ''}`;
}
