/**
 * The OVF 1.0 descriptor (DMTF DSP0243 1.0, schema DSP8023 1.0) and manifest of an OVA, built from values: the
 * only guest data in it (the os-release name) is escaped as text, never parsed.
 */

/** The OVF package's one disk as vSphere and VirtualBox import it: a streamOptimized VMDK. */
export const VMDK_STREAM_OPTIMIZED = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized';

export interface OvfValues {
  /** The virtual system's name and id (what vSphere and VirtualBox name the VM). */
  name: string;
  /** The VMDK's name in the package, and its size in bytes. */
  disk: { href: string; size: number };
  /** The virtual disk's size in bytes. */
  capacity: number;
  /** EFI when the disk has an EFI System Partition, else BIOS. */
  firmware: 'efi' | 'bios';
  /** CIM_OperatingSystem.OSType (osType) and what it says. */
  os: { id: number; description: string };
  cpus?: number;
  memoryMiB?: number;
}

/** The guest as the BOM tells it: os-release and Debian's architecture name. */
export interface GuestOs {
  id?: string;
  versionId?: string;
  prettyName?: string;
  osRelease?: Record<string, string>;
}

/** CIM_OperatingSystem.OSType values (CIM schema 2.x; VirtualBox's and vSphere's importers read them): [32-bit, 64-bit]. */
const CIM_OS_TYPES: Record<string, [number, number]> = {
  debian: [95, 96],
  ubuntu: [93, 94],
  rhel: [79, 80],
  centos: [106, 107],
  ol: [108, 109],
  sles: [84, 85],
  suse: [82, 83],
  opensuse: [82, 83],
  'opensuse-leap': [82, 83],
  'opensuse-tumbleweed': [82, 83],
  mandriva: [89, 90],
};
/** 36 LINUX, 101 Linux 64-Bit: any other Linux. */
const CIM_LINUX: [number, number] = [36, 101];
/** Debian's (and uname's) names of 32-bit architectures; anything else is taken as 64-bit. */
const ARCHES_32 = new Set(['i386', 'i686', 'armhf', 'armel', 'mips', 'mipsel', 'powerpc', 'x86', 'arm']);

/** The OVF OperatingSystemSection's id for a guest: by os-release ID, then ID_LIKE, else generic Linux. */
export function ovfOsType(os: GuestOs, architecture?: string): { id: number; description: string } {
  const like = (os.osRelease?.ID_LIKE ?? '').split(/\s+/).filter(Boolean);
  const family = [os.id, ...like].find((id): id is string => !!id && Object.hasOwn(CIM_OS_TYPES, id)); // own keys: ID=constructor is no OS type
  const ids = family ? CIM_OS_TYPES[family] : CIM_LINUX;
  const bits64 = !ARCHES_32.has(architecture ?? '');
  const name = os.prettyName ?? ([os.id, os.versionId].filter(Boolean).join(' ') || 'Linux');
  return { id: ids[bits64 ? 1 : 0], description: `${name}${architecture ? ` (${architecture})` : ''}` };
}

/** Text for an XML attribute or element: escaped, and without the characters XML 1.0 cannot hold at all. */
export function xmlText(value: string): string {
  return value
    .replace(/[^\t\n\r\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/gu, '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

/** A RASD Item: its elements in the order of the CIM_ResourceAllocationSettingData schema (alphabetical). */
function item(fields: Record<string, string | number | boolean>): string {
  const lines = Object.keys(fields)
    .sort()
    .map((key) => `        <rasd:${key}>${xmlText(String(fields[key]))}</rasd:${key}>`);
  return `      <Item>\n${lines.join('\n')}\n      </Item>`;
}

const NETWORK = 'VM Network';

/**
 * The OVF 1.0 envelope: one file (the VMDK), one disk, one network, one virtual system with its OS, CPUs, memory,
 * an LSI Logic SCSI controller with the disk, an E1000 NIC (both importers have these), and its firmware as
 * vSphere's vmw:Config says it.
 */
export function ovfDescriptor(values: OvfValues): string {
  const cpus = values.cpus ?? 2;
  const memory = values.memoryMiB ?? 2048;
  const name = xmlText(values.name);
  return `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="${xmlText(values.disk.href)}" ovf:id="file1" ovf:size="${values.disk.size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="${values.capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="${VMDK_STREAM_OPTIMIZED}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="${NETWORK}">
      <Description>The ${NETWORK} network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="${name}">
    <Info>A virtual machine</Info>
    <Name>${name}</Name>
    <OperatingSystemSection ovf:id="${values.os.id}">
      <Info>The kind of installed guest operating system</Info>
      <Description>${xmlText(values.os.description)}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>${name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
${[
  item({ AllocationUnits: 'hertz * 10^6', Description: 'Number of Virtual CPUs', ElementName: `${cpus} virtual CPU(s)`, InstanceID: 1, ResourceType: 3, VirtualQuantity: cpus }),
  item({ AllocationUnits: 'byte * 2^20', Description: 'Memory Size', ElementName: `${memory}MB of memory`, InstanceID: 2, ResourceType: 4, VirtualQuantity: memory }),
  item({ Address: 0, Description: 'SCSI Controller', ElementName: 'SCSI Controller 0', InstanceID: 3, ResourceSubType: 'lsilogic', ResourceType: 6 }),
  item({ AddressOnParent: 0, ElementName: 'Hard Disk 1', HostResource: 'ovf:/disk/vmdisk1', InstanceID: 4, Parent: 3, ResourceType: 17 }),
  item({ AddressOnParent: 7, AutomaticAllocation: true, Connection: NETWORK, Description: `E1000 ethernet adapter on "${NETWORK}"`, ElementName: 'Network adapter 1', InstanceID: 5, ResourceSubType: 'E1000', ResourceType: 10 }),
].join('\n')}
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="${values.firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
}

/** The OVA's manifest as ovftool writes it: `SHA256(name)= hex`, one line per file before it. */
export function ovaManifest(files: { name: string; sha256: string }[]): string {
  return files.map((file) => `SHA256(${file.name})= ${file.sha256}\n`).join('');
}
