import { BUILD_OWN_FIELDS, bomDifferences, jsonDifferences, repeatableView } from '../../src/bom/repeatable.js';
import type { Bom } from '../../src/bom/collect.js';
import { deviceNumbers, fitsUstarName, paxHeader } from '../../src/image/rootfs-tar.js';
import { buildTime, clampTime, sourceDateEpoch } from '../../src/util/time.js';
import { CHROOT_ENV, guestEnv } from '../../src/chroot/session.js';

describe('SOURCE_DATE_EPOCH', () => {
  test('read once, in one place: a date when set, undefined when unset or empty, an error when malformed', () => {
    expect(sourceDateEpoch({ SOURCE_DATE_EPOCH: '1700000000' })).toEqual(new Date(1_700_000_000_000));
    expect(sourceDateEpoch({ SOURCE_DATE_EPOCH: '0' })).toEqual(new Date(0));
    expect(sourceDateEpoch({})).toBeUndefined();
    expect(sourceDateEpoch({ SOURCE_DATE_EPOCH: '' })).toBeUndefined();
    for (const bad of ['-1', '1.5', 'now', '1e9', '99999999999999999']) {
      expect(() => sourceDateEpoch({ SOURCE_DATE_EPOCH: bad })).toThrow(expect.objectContaining({ code: 'BAD_INPUT', message: expect.stringContaining(`SOURCE_DATE_EPOCH="${bad}"`) }));
    }
    expect(buildTime({ SOURCE_DATE_EPOCH: '1700000000' })).toEqual(new Date(1_700_000_000_000));
    expect(Math.abs(buildTime({}).getTime() - Date.now())).toBeLessThan(5000);
  });

  test('guest commands get it too (their own tools honour it), and nothing else from the host', () => {
    expect(guestEnv({ SOURCE_DATE_EPOCH: '1700000000', HOME: '/home/me', SECRET: 'x' })).toEqual({ ...CHROOT_ENV, SOURCE_DATE_EPOCH: '1700000000' });
    expect(guestEnv({ HOME: '/home/me' })).toEqual(CHROOT_ENV);
  });

  test('clamping keeps older times and dates later ones at the epoch (tar --clamp-mtime)', () => {
    const epoch = new Date(1_700_000_000_000);
    expect(clampTime(new Date(1_800_000_000_000), epoch)).toEqual(epoch);
    expect(clampTime(new Date(1_600_000_000_000), epoch)).toEqual(new Date(1_600_000_000_000));
    expect(clampTime(new Date(1_800_000_000_000), undefined)).toEqual(new Date(1_800_000_000_000));
  });
});

describe('repeatable BOMs', () => {
  const bom = (over: Partial<Bom> = {}) =>
    ({
      bomVersion: 1,
      createdAt: '2024-01-01T00:00:00.000Z',
      output: { path: '/a/node.qcow2', format: 'qcow2', sha256: 'a'.repeat(64), sparsify: 'none' },
      artifacts: [{ path: '/a/node.qcow2', format: 'qcow2', sha256: 'a'.repeat(64) }, { path: '/a/node.tar', format: 'tar', sha256: 'b'.repeat(64) }],
      packages: [{ name: 'hello', version: '2.10-3', architecture: 'amd64', origin: 'added' }],
      steps: [{ index: 0, type: 'run', description: 'run x', durationMs: 12 }],
      durationsMs: { total: 100, steps: 12 },
      warnings: [],
      ...over,
    }) as unknown as Bom;

  test('only the named build-own fields may differ: durations, where the artifacts went, their bytes, the time without SOURCE_DATE_EPOCH', () => {
    expect(Object.keys(BUILD_OWN_FIELDS)).toEqual(['durationsMs', 'steps[].durationMs', 'createdAt', 'output.path, artifacts[].path', 'output.sha256, artifacts[].sha256']);
    const other = bom({
      createdAt: '2024-01-02T00:00:00.000Z',
      output: { path: '/scratch/node.qcow2', format: 'qcow2', sha256: 'c'.repeat(64), sparsify: 'none' },
      artifacts: [{ path: '/scratch/node.qcow2', format: 'qcow2', sha256: 'c'.repeat(64) }, { path: '/scratch/node.tar', format: 'tar', sha256: 'd'.repeat(64) }],
      steps: [{ index: 0, type: 'run', description: 'run x', durationMs: 99 }],
      durationsMs: { total: 300 },
    });
    expect(bomDifferences(bom(), other, { sourceDateEpoch: false })).toEqual([]);
    // With SOURCE_DATE_EPOCH, the time must be equal too.
    expect(bomDifferences(bom(), other, { sourceDateEpoch: true })).toEqual(['createdAt: "2024-01-01T00:00:00.000Z" ≠ "2024-01-02T00:00:00.000Z"']);
    expect(repeatableView(bom(), { sourceDateEpoch: false }).artifacts).toEqual([{ format: 'qcow2', name: 'node.qcow2' }, { format: 'tar', name: 'node.tar' }]);
  });

  test('anything else that differs is named by its path', () => {
    const changed = bom({ packages: [{ name: 'hello', version: '2.10-4', architecture: 'amd64', origin: 'added' }], warnings: ['x'] });
    expect(bomDifferences(bom(), changed, { sourceDateEpoch: false })).toEqual(['packages[0].version: "2.10-3" ≠ "2.10-4"', 'warnings[0]: absent ≠ "x"']);
    const renamed = bom({ artifacts: [{ path: '/a/other.qcow2', format: 'qcow2', sha256: 'a'.repeat(64) }] });
    expect(bomDifferences(bom(), renamed, { sourceDateEpoch: false })).toEqual(['artifacts[0].name: "node.qcow2" ≠ "other.qcow2"', 'artifacts[1]: {"format":"tar","name":"node.tar"} ≠ absent']);
    expect(jsonDifferences({ a: [1, { b: 2 }] }, { a: [1, { b: 3 }], c: null })).toEqual(['a[1].b: 2 ≠ 3', 'c: absent ≠ null']);
  });
});

describe('root filesystem tar encoding', () => {
  test('pax records carry binary values as they are, each length counting its own digits (GNU tar reading them: test/integration/rootfs-tar)', () => {
    const value = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0xff, 0x0a]);
    const header = paxHeader([['SCHILY.xattr.security.capability', value], ['path', Buffer.from('./ü'.padEnd(120, 'x'))]], new Date(1_700_000_000_000));
    expect(header.length % 512).toBe(0);
    expect(header.subarray(156, 157).toString()).toBe('x');
    const size = parseInt(header.subarray(124, 136).toString('latin1'), 8);
    const records = header.subarray(512, 512 + size);
    let offset = 0;
    const parsed: [string, Buffer][] = [];
    while (offset < records.length) {
      const space = records.indexOf(0x20, offset);
      const length = Number(records.subarray(offset, space).toString());
      const record = records.subarray(space + 1, offset + length - 1);
      const equals = record.indexOf(0x3d);
      parsed.push([record.subarray(0, equals).toString(), record.subarray(equals + 1)]);
      expect(records[offset + length - 1]).toBe(0x0a);
      offset += length;
    }
    expect(parsed).toEqual([['SCHILY.xattr.security.capability', value], ['path', Buffer.from('./ü'.padEnd(120, 'x'))]]);
    // The header's checksum is what a reader computes.
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i];
    expect(parseInt(header.subarray(148, 154).toString('latin1'), 8)).toBe(sum);
    // A record whose length crosses a power of ten (99 → 100+ bytes) is counted right: GNU tar accepts exactly that.
    for (const n of [88, 89, 90, 91, 92, 990, 991]) {
      const block = paxHeader([['comment', Buffer.alloc(n, 0x61)]], new Date(0));
      const text = block.subarray(512).toString('latin1');
      const length = Number(text.slice(0, text.indexOf(' ')));
      expect(text.slice(0, length).endsWith('\n')).toBe(true);
      expect(text.slice(0, length)).toBe(`${length} comment=${'a'.repeat(n)}\n`);
    }
  });

  test('device numbers from dev_t, and which names fit ustar without a pax path', () => {
    expect(deviceNumbers(0x0103n)).toEqual({ major: 1, minor: 3 });
    expect(deviceNumbers((259n << 8n) | (70000n & 0xffn) | ((70000n & ~0xffn) << 12n))).toEqual({ major: 259, minor: 70000 });
    expect(fitsUstarName('./etc/passwd')).toBe(true);
    expect(fitsUstarName(`./${'a'.repeat(150)}/${'b'.repeat(90)}`)).toBe(true);
    expect(fitsUstarName(`./${'a'.repeat(200)}`)).toBe(false);
    expect(fitsUstarName('./ü')).toBe(false);
  });
});
