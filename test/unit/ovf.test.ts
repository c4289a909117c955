import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { ovaName, writeGceTar } from '../../src/image/appliance.js';
import { execRunner } from '../../src/util/exec.js';
import { createLogger } from '../../src/util/log.js';
import { ovaManifest, ovfDescriptor, ovfOsType, xmlText, VMDK_STREAM_OPTIMIZED, type OvfValues } from '../../src/image/ovf.js';
import { artifactPaths, pathStem } from '../../src/pipeline/output.js';
import { expectOvfStructure, ovfAttribute, xpath } from '../helpers/ovf.js';

const values: OvfValues = {
  name: 'node',
  disk: { href: 'node-disk1.vmdk', size: 123456 },
  capacity: 2 * 1024 ** 3,
  firmware: 'efi',
  os: { id: 96, description: 'Debian GNU/Linux 12 (bookworm) (amd64)' },
};

describe('the OVF descriptor', () => {
  test('is built from the values, with the structure both importers read (checked by xmllint)', async () => {
    const xml = ovfDescriptor(values);
    await expectOvfStructure(xml);
    expect(await ovfAttribute(xml, 'File', 'href')).toBe('node-disk1.vmdk');
    expect(await ovfAttribute(xml, 'File', 'size')).toBe('123456');
    expect(await ovfAttribute(xml, 'Disk', 'capacity')).toBe(String(2 * 1024 ** 3));
    expect(await ovfAttribute(xml, 'Disk', 'capacityAllocationUnits')).toBe('byte');
    expect(await ovfAttribute(xml, 'Disk', 'format')).toBe(VMDK_STREAM_OPTIMIZED);
    expect(await ovfAttribute(xml, 'OperatingSystemSection', 'id')).toBe('96');
    expect(await ovfAttribute(xml, 'Config', 'key')).toBe('firmware');
    expect(await ovfAttribute(xml, 'Config', 'value')).toBe('efi');
    expect(await xpath(xml, 'namespace-uri(//*[local-name()="Config"])')).toBe('http://www.vmware.com/schema/ovf');
    expect(await xpath(xml, 'string(//*[local-name()="VirtualSystemType"])')).toBe('vmx-13');
    // CPU 3, memory 4, SCSI controller 6, disk 17, NIC 10.
    expect(await xpath(xml, 'count(//*[local-name()="ResourceType"])')).toBe('5');
    expect(await xpath(xml, 'string(//*[local-name()="Item"][*[local-name()="ResourceType"]="6"]/*[local-name()="ResourceSubType"])')).toBe('lsilogic');
    expect(await ovfAttribute(ovfDescriptor({ ...values, firmware: 'bios' }), 'Config', 'value')).toBe('bios');
  });

  test('escapes guest text: markup stays text, characters XML cannot hold are dropped', async () => {
    const hostile = 'Evil"/><File ovf:href="/etc/shadow"/> & \'x\' ]]> \u0001\u001b[31m';
    const xml = ovfDescriptor({ ...values, os: { id: 101, description: hostile }, name: 'a<b>&c' });
    await expectOvfStructure(xml);
    expect(await xpath(xml, 'count(//*[local-name()="File"])')).toBe('1');
    expect(await xpath(xml, 'string(//*[local-name()="OperatingSystemSection"]/*[local-name()="Description"])')).toBe('Evil"/><File ovf:href="/etc/shadow"/> & \'x\' ]]> [31m');
    expect(await xpath(xml, 'string(//*[local-name()="VirtualSystem"]/*[local-name()="Name"])')).toBe('a<b>&c');
    expect(xmlText('<&>"\'')).toBe('&lt;&amp;&gt;&quot;&apos;');
  });

  test('the OS id is the CIM OSType of the os-release ID, then ID_LIKE, 32- or 64-bit by architecture', () => {
    const osRelease = (like: string): Record<string, string> => ({ ID_LIKE: like });
    expect(ovfOsType({ id: 'debian', versionId: '12', prettyName: 'Debian GNU/Linux 12 (bookworm)', osRelease: {} }, 'amd64')).toEqual({ id: 96, description: 'Debian GNU/Linux 12 (bookworm) (amd64)' });
    expect(ovfOsType({ id: 'debian', osRelease: {} }, 'i386').id).toBe(95);
    // A guest's os-release naming an object's own keys is no known OS: generic Linux, never `undefined`.
    for (const id of ['constructor', '__proto__', 'toString']) expect(ovfOsType({ id, osRelease: osRelease('hasOwnProperty') }, 'amd64').id).toBe(ovfOsType({ id: 'plan9', osRelease: {} }, 'amd64').id);
    expect(ovfOsType({ id: 'ubuntu', osRelease: osRelease('debian') }, 'arm64').id).toBe(94);
    expect(ovfOsType({ id: 'rhel', osRelease: osRelease('fedora') }, 'x86_64').id).toBe(80);
    expect(ovfOsType({ id: 'rocky', osRelease: osRelease('rhel centos fedora') }, 'x86_64').id).toBe(80);
    expect(ovfOsType({ id: 'centos', osRelease: osRelease('rhel fedora') }, 'x86_64').id).toBe(107);
    expect(ovfOsType({ id: 'ol', osRelease: osRelease('fedora') }, 'x86_64').id).toBe(109);
    expect(ovfOsType({ id: 'sles', osRelease: osRelease('suse') }, 'x86_64').id).toBe(85);
    expect(ovfOsType({ id: 'opensuse-leap', osRelease: osRelease('suse opensuse') }, 'x86_64').id).toBe(83);
    expect(ovfOsType({ id: 'linuxmint', osRelease: osRelease('ubuntu debian') }, 'amd64').id).toBe(94);
    expect(ovfOsType({ id: 'fedora', osRelease: {} }, 'x86_64')).toEqual({ id: 101, description: 'fedora (x86_64)' });
    expect(ovfOsType({ osRelease: {} })).toEqual({ id: 101, description: 'Linux' });
    expect(ovfOsType({ id: 'alpine', osRelease: {} }, 'armhf').id).toBe(36);
  });

  test('the manifest is ovftool\'s: one SHA256(name)= line per file', () => {
    expect(ovaManifest([{ name: 'a.ovf', sha256: 'ab'.repeat(32) }, { name: 'a-disk1.vmdk', sha256: 'cd'.repeat(32) }])).toBe(`SHA256(a.ovf)= ${'ab'.repeat(32)}\nSHA256(a-disk1.vmdk)= ${'cd'.repeat(32)}\n`);
  });

  test('member names come from the output name, in characters every importer takes', () => {
    expect(ovaName('debian-12-web')).toBe('debian-12-web');
    expect(ovaName('my image (v2)')).toBe('my-image-v2-');
    expect(ovaName('..')).toBe('image');
    expect(ovaName('x'.repeat(100))).toHaveLength(64);
  });
});

describe('artifact paths', () => {
  test('ova and gce get .ova and .tar.gz beside the first, and a .tar.gz first is one extension', () => {
    expect(artifactPaths('/o/node.qcow2', ['qcow2', 'ova', 'gce', 'tar'])).toEqual(['/o/node.qcow2', '/o/node.ova', '/o/node.tar.gz', '/o/node.tar']);
    expect(artifactPaths('/o/node.tar.gz', ['gce', 'raw', 'tar'])).toEqual(['/o/node.tar.gz', '/o/node.img', '/o/node.tar']);
    expect(pathStem('/o/node.ova')).toBe('/o/node');
    expect(pathStem('/o/v1.2/node')).toBe('/o/v1.2/node');
  });
});

describe('the GCE tarball', () => {
  test('a disk that is not a whole number of GiB is grown to the next, and GNU tar reads back the same data', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ib-gce-'));
    try {
      const image = join(dir, 'small.qcow2');
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', image, '10M']);
      await execa('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 1M 1M', image]);
      const log = createLogger({ level: 'error' });
      const target = join(dir, 'small.tar.gz');
      expect(await writeGceTar(execRunner, { path: image, format: 'qcow2' }, target, { log, workDir: dir, mtime: new Date('2024-01-02T03:04:05Z') })).toEqual({ size: 1024 ** 3 });
      expect(log.warnings.join('\n')).toContain('rounded up to 1 GiB');
      expect((await execa('tar', ['-tvzf', target], { env: { TZ: 'UTC' } })).stdout).toMatch(/^-rw-r--r-- 0\/0 +1073741824 2024-01-02 03:04 disk\.raw$/);
      const out = join(dir, 'out');
      await execa('mkdir', [out]);
      await execa('tar', ['-xSzf', target, '-C', out]);
      expect((await stat(join(out, 'disk.raw'))).size).toBe(1024 ** 3);
      // The first 10 MiB are the image's; the rest reads as zeroes (qemu-img compare's rule for a larger image).
      await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(out, 'disk.raw'), image]);
      expect((await readdir(dir)).sort()).toEqual(['out', 'small.qcow2', 'small.tar.gz']); // its raw disk is removed
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
