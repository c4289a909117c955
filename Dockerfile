# imagebuilder in a container. Run it privileged, with the host's /dev and your files in /work (README:
# "Running from the container" says why each is needed):
#   docker run --rm --privileged -v /dev:/dev -v "$PWD:/work" -v imagebuilder-cache:/var/cache/imagebuilder \
#     imagebuilder apply recipe.yaml --disk-image base.qcow2

# Build stage: compile the TypeScript, keep only production dependencies, lay out the installed tree in /out.
FROM debian:trixie-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The lock file alone first: this layer (and its cache) survives every change to the sources.
# Behind a TLS-intercepting proxy, hand npm the proxy's CA (never stored in the image):
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=ca-certificates,required=false \
    if [ -s /run/secrets/ca-certificates ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca-certificates; fi \
 && npm ci --no-audit --no-fund
# Then the rest of the context (.dockerignore keeps it to what the image needs): compile, drop the dev
# dependencies, and lay the installed tree out in /out, copied by one instruction below.
COPY . .
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund \
 && mkdir -p /out/opt/imagebuilder /out/usr/local/bin \
 && cp -a package.json oclif.manifest.json bin dist node_modules recipes schemas /out/opt/imagebuilder/ \
 && ln -s /opt/imagebuilder/bin/run.js /out/usr/local/bin/imagebuilder

# Runtime: Node.js and the host tools imagebuilder shells out to (src/util/tools.ts lists them), nothing else.
FROM debian:trixie-slim
#   qemu-utils                  qemu-img, qemu-nbd (nbd backend), qemu-storage-daemon (fuse backend; on bookworm
#                               it was in qemu-system-common)
#   fuse3                       fusermount3, to end a FUSE export its daemon left mounted
#   util-linux mount            losetup, partx, blkid, fstrim, unshare; mount, umount
#   libcap2-bin                 capsh: guest commands run without the capabilities that reach the host
#   fdisk gdisk                 partition tables, for whoever inspects an image in this container
#   e2fsprogs xfsprogs btrfs-progs dosfstools
#                               the guest filesystems; libguestfs also builds its appliance from these host packages
#   guestmount libguestfs-tools libguestfs-xfs guestfs-tools linux-image-<arch>
#                               guestmount backend, guestfish (the KVM probe), virt-sparsify (default sparsify);
#                               the kernel is what the appliance boots
#   qemu-user-static            static emulators for foreign-architecture guests (imagebuilder registers them with
#                               binfmt_misc for a build; on trixie it brings qemu-user and qemu-user-binfmt)
#   gpg gpgv                    repository keys' fingerprints; signed sums files of base images
#   xz-utils zstd               compressed base images
#   rpm                         the BOM of an RPM-family guest, read from its rpm database
#   bubblewrap                  bwrap: host programs reading hostile input (qemu-img info, rpm) run unprivileged in a sandbox;
#                               every guest command runs in one too
#   passt iproute2              pasta: guest commands' own network namespace with NAT; ip: that namespace and its routes
#   bsdutils                    script: interactive guest shells get a pty of their own (essential; named for the check)
#   policycoreutils attr        setfiles: SELinux guests relabelled; getfattr: extended attributes for --format tar
#   qemu-system-x86 ovmf        booting a throw-away copy of an amd64 image to test it (OVMF: UEFI firmware for images
#                               with an EFI System Partition; SeaBIOS for the others comes with qemu)
#   qemu-system-arm qemu-efi-aarch64  the same for arm64 images (qemu-system-aarch64, AAVMF)
#   ca-certificates             https downloads of base images
# The build must not touch the build host's disks or waste time on an initrd: lvm2's postinst scans every block
# device (under buildah, which shows the host's /dev, it spun for good), so LVM sees none during the build; the
# kernel is only for libguestfs, which makes its own initrd (INITRD=No skips the kernel's).
RUN mkdir /tmp/lvm-build && echo 'devices { global_filter = [ "r|.*|" ] }' > /tmp/lvm-build/lvm.conf \
 && apt-get update \
 && LVM_SYSTEM_DIR=/tmp/lvm-build INITRD=No apt-get install -y --no-install-recommends \
      nodejs ca-certificates \
      qemu-utils fuse3 util-linux mount libcap2-bin fdisk gdisk \
      e2fsprogs xfsprogs btrfs-progs dosfstools \
      guestmount libguestfs-tools libguestfs-xfs guestfs-tools "linux-image-$(dpkg --print-architecture)" \
      qemu-user-static gpg gpgv xz-utils zstd rpm policycoreutils attr bubblewrap passt iproute2 bsdutils \
      qemu-system-x86 ovmf qemu-system-arm qemu-efi-aarch64 \
 && rm -rf /var/lib/apt/lists/* /tmp/lvm-build /boot/initrd.img-*
COPY --from=build /out/ /
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
# The build args also go into a file in the image, provenance that survives a `docker export`; and a RUN that uses
# them is what makes podman and buildah rebuild the labels below when only an argument changed (their layer cache
# ignores arguments that only LABEL uses: containers/buildah#5501).
RUN printf 'version=%s\nrevision=%s\nsource=%s\n' "$VERSION" "$REVISION" "$SOURCE" > /opt/imagebuilder/BUILD-INFO
LABEL org.opencontainers.image.title="imagebuilder" \
      org.opencontainers.image.description="Make a bootable cloud disk image Kubernetes-ready without booting it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The cache (verified base images, the libguestfs KVM verdict and its appliance) outlives the container.
ENV IMAGEBUILDER_CACHE=/var/cache/imagebuilder \
    LIBGUESTFS_CACHEDIR=/var/cache/imagebuilder \
    IMAGEBUILDER_WORK_DIR=/var/tmp
VOLUME /var/cache/imagebuilder
WORKDIR /work
ENTRYPOINT ["imagebuilder"]
