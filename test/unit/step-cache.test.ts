import { chmod, lstat, mkdir, mkdtemp, open, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { parseRecipe } from '../../src/recipe/load.js';
import { canonicalJson, LayerStore, pruneLayers, stepKeys, type LayerRecord } from '../../src/pipeline/layers.js';

const BASE = 'a'.repeat(64);

describe('step cache keys', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-keys-'));
    await mkdir(join(dir, 'tree'));
    await writeFile(join(dir, 'tree', 'one.conf'), 'one\n');
    await writeFile(join(dir, 'script.sh'), 'echo hi\n');
    await writeFile(join(dir, 'motd.tmpl'), 'welcome to {{ cluster }}\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  const keysOf = async (text: string, base = BASE, set?: Record<string, string>) => {
    const { recipe, problems } = parseRecipe(text, join(dir, 'recipe.yaml'), { set });
    expect(problems).toEqual([]);
    return (await stepKeys(base, recipe!.steps, recipe!.variables)).map((k) => k.key);
  };
  const recipe = (third = 'three') => `name: r
variables: { cluster: prod }
steps:
  - file: { path: /etc/one, content: "one" }
  - copy: { src: tree, dest: /etc/tree }
  - file: { path: /etc/three, content: "${third}" }
`;

  test('comments, formatting, key order and step names do not change a key', async () => {
    const plain = await keysOf(recipe());
    const reformatted = await keysOf(`# a comment
name: r
variables:
  cluster: prod   # trailing comment
steps:
  - name: first step
    file:
      content: "one"
      path: /etc/one
  - copy: {dest: /etc/tree, src: tree}
  - file: { path: /etc/three, content: "three" }
`);
    expect(reformatted).toEqual(plain);
    expect(new Set(plain).size).toBe(3);
  });

  test('a changed step changes its key and every key after it, never one before', async () => {
    const before = await keysOf(recipe());
    const after = await keysOf(recipe('THREE'));
    expect(after.slice(0, 2)).toEqual(before.slice(0, 2));
    expect(after[2]).not.toBe(before[2]);
    const firstChanged = await keysOf(recipe().replace('content: "one"', 'content: "uno"'));
    expect(firstChanged.every((key, i) => key !== before[i])).toBe(true);
  });

  test('another base image changes every key', async () => {
    const keys = await keysOf(recipe(), 'b'.repeat(64));
    const before = await keysOf(recipe());
    expect(keys.every((key, i) => key !== before[i])).toBe(true);
  });

  test('a changed copied host file, or its mode, changes the copy step key', async () => {
    const before = await keysOf(recipe());
    await writeFile(join(dir, 'tree', 'one.conf'), 'ONE\n');
    const changed = await keysOf(recipe());
    await chmod(join(dir, 'tree', 'one.conf'), 0o600);
    const moded = await keysOf(recipe());
    expect(changed[0]).toBe(before[0]);
    expect(changed[1]).not.toBe(before[1]);
    expect(moded[1]).not.toBe(changed[1]);
    await writeFile(join(dir, 'tree', 'two.conf'), 'two\n');
    expect((await keysOf(recipe()))[1]).not.toBe(moded[1]);
  });

  test('a script file and a template are keyed by their content (a template also by the variables it uses)', async () => {
    const text = `name: r
variables: { cluster: prod }
steps:
  - run: { file: script.sh }
  - file: { path: /etc/motd, template: motd.tmpl }
`;
    const before = await keysOf(text);
    await writeFile(join(dir, 'script.sh'), 'echo bye\n');
    const script = await keysOf(text);
    expect(script[0]).not.toBe(before[0]);
    const otherCluster = await keysOf(text, BASE, { cluster: 'staging' });
    expect(otherCluster[0]).toBe(script[0]);
    expect(otherCluster[1]).not.toBe(script[1]);
  });

  test('variables count through the values they put into a step', async () => {
    const text = `name: r
variables: { version: "1.30.1-1.1", unused: x }
steps:
  - packages: { install: ["kubelet={{ version }}"] }
`;
    const base = await keysOf(text);
    expect(await keysOf(text, BASE, { unused: 'y' })).toEqual(base);
    expect(await keysOf(text, BASE, { version: '1.30.2-1.1' })).not.toEqual(base);
  });

  test('steps whose result depends on the network without a pin are marked', async () => {
    const { recipe: parsed } = parseRecipe(
      `name: r
steps:
  - packages: { install: ["kubelet=1.30.1-1.1"] }
  - packages: { install: [socat, "kubectl=1.30.1-1.1"] }
  - packages: { upgrade: true }
  - download: { url: "https://example.org/a.tgz", checksum_url: "https://example.org/a.tgz.sha256", dest: /opt/a.tgz }
  - download: { url: "https://example.org/a.tgz", sha256: "${'c'.repeat(64)}", dest: /opt/a.tgz }
`,
      join(dir, 'recipe.yaml'),
    );
    expect(parsed).toBeDefined();
    const keys = await stepKeys(BASE, parsed!.steps, parsed!.variables);
    expect(keys.map((k) => k.unpinned)).toEqual([
      undefined,
      'installs without a pinned version: socat',
      'upgrades to whatever the repositories offer',
      'https://example.org/a.tgz has no pinned sha256',
      undefined,
    ]);
  });

  test('SOURCE_DATE_EPOCH is part of every key (it changes what steps write)', async () => {
    const without = await keysOf(recipe());
    process.env.SOURCE_DATE_EPOCH = '1700000000';
    try {
      const withEpoch = await keysOf(recipe());
      expect(withEpoch.every((key, i) => key !== without[i])).toBe(true);
    } finally {
      delete process.env.SOURCE_DATE_EPOCH;
    }
  });

  test('canonical JSON sorts keys at every depth and drops undefined', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { f: 2, e: undefined }], c: 'x' } })).toBe('{"a":{"c":"x","d":[1,{"f":2}]},"b":1}');
  });
});

describe('layer store', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ib-layers-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const record = (key: string, parent: string | undefined, image: string | undefined, backing?: string): LayerRecord => ({
    layerVersion: 2,
    key,
    ...(parent ? { parent } : {}),
    image,
    ...(backing ? { backing } : {}),
    createdAt: new Date().toISOString(),
    toolVersion: '0',
    base: { sha256: BASE, path: '/base.qcow2', osRelease: {}, packages: [] },
    step: { index: 0, type: 'file', description: 'x', durationMs: 1 },
    records: { files: [], units: [], images: [] },
  });

  test('reuses the longest whole chain, stops at a step to refresh, and ignores incomplete layers', async () => {
    const store = new LayerStore(dir);
    const images = [await store.newImage(), await store.newImage()];
    for (const image of images) await writeFile(image, 'qcow2');
    const [first, second] = images.map((image) => image.split('/').pop()!);
    await store.commit(record('k1', undefined, first));
    await store.commit(record('k2', 'k1', undefined, first)); // a skipped step: no image of its own
    await store.commit(record('k3', 'k2', second, first));
    const keys = ['k1', 'k2', 'k3', 'k4'].map((key) => ({ key }));
    expect((await store.longestPrefix(keys, () => false)).map((r) => r.key)).toEqual(['k1', 'k2', 'k3']);
    expect((await store.longestPrefix(keys, (i) => i >= 1)).map((r) => r.key)).toEqual(['k1']);
    // Another build committed k1 again with its own image: k3's image sits on the old one, so the chain stops.
    const other = await store.newImage();
    await writeFile(other, 'qcow2');
    await store.commit(record('k1', undefined, other.split('/').pop()));
    expect((await store.longestPrefix(keys, () => false)).map((r) => r.key)).toEqual(['k1']);
    await store.commit(record('k1', undefined, first));
    // A record whose image is gone breaks the chain there.
    await rm(images[1]);
    expect((await store.longestPrefix(keys, () => false)).map((r) => r.key)).toEqual(['k1', 'k2']);
  });

  test("links, FIFOs and directories in the store are never followed, opened or written through: not records, not layers, not markers", async () => {
    const store = new LayerStore(dir);
    const canary = join(await mkdtemp('/var/tmp/ib-layer-canary-'), 'secret');
    await writeFile(canary, 'root only\n');
    try {
      const [old, fresh] = [await store.newImage(), await store.newImage()];
      for (const image of [old, fresh]) await writeFile(image, 'qcow2');
      const name = (path: string) => path.split('/').pop()!;
      await store.commit(record('k-old', undefined, name(old)));
      // The marker's name leads to the canary: replacing the record makes the marker new, the canary untouched.
      await symlink(canary, `${old}.replaced`);
      await store.commit(record('k-old', undefined, name(fresh)));
      expect(await readFile(canary, 'utf8')).toBe('root only\n');
      expect((await lstat(`${old}.replaced`)).isFile()).toBe(true);
      // A record that is a link to a record, or a FIFO (read, it would hang), is no record.
      await symlink(join(dir, 'k-old.json'), join(dir, 'k-link.json'));
      await execa('mkfifo', [join(dir, 'k-fifo.json')]);
      expect(await store.read('k-link')).toBeUndefined();
      expect(await store.read('k-fifo')).toBeUndefined();
      // A record whose layer is a link (to any qcow2 on the host) or a directory names no layer.
      const linked = join(dir, 'layer-0123456789ab.qcow2');
      await symlink(canary, linked);
      await writeFile(join(dir, 'k-linked.json'), JSON.stringify(record('k-linked', undefined, name(linked))));
      expect(await store.read('k-linked')).toBeUndefined();
      // And prune, finding records it cannot read (the FIFO, the link), takes nothing for unused; without them, the replaced layer.
      const later = Date.now() + 48 * 3600 * 1000;
      expect(await store.removeOrphans({ now: later, dryRun: true })).toEqual({ files: 0, bytes: 0 });
      await rm(join(dir, 'k-fifo.json'));
      expect(await store.removeOrphans({ now: later, dryRun: true })).toEqual({ files: 0, bytes: 0 });
      await rm(join(dir, 'k-link.json'));
      expect((await store.removeOrphans({ now: later, dryRun: true })).files).toBe(1);
    } finally {
      await rm(dirname(canary), { recursive: true, force: true });
    }
  });

  test('a step run again (--refresh): its old layer goes a day later, never while open or named; prune takes unnamed ours only', async () => {
    const store = new LayerStore(dir);
    const [old, fresh, killed] = [await store.newImage(), await store.newImage(), await store.newImage()];
    for (const image of [old, fresh, killed]) await writeFile(image, 'qcow2');
    const name = (path: string) => path.split('/').pop()!;
    await store.commit(record('k-refresh', undefined, name(old)));
    await store.commit(record('k-refresh', undefined, name(fresh)));
    // Another imagebuilder's record (another layerVersion) and a file not named as ours: never taken.
    const foreign = join(dir, 'layer-foreign.qcow2');
    await writeFile(foreign, 'qcow2');
    await writeFile(join(dir, 'k-other.json'), JSON.stringify({ layerVersion: 3, key: 'k-other', image: name(killed) }));
    const longAgo = new Date(Date.now() - 48 * 3600 * 1000);
    for (const path of [old, killed, foreign]) await utimes(path, longAgo, longAgo);
    // Unnamed and ours: the replaced layer only (the other version's record names `killed`; `foreign` is not ours).
    expect(await store.removeOrphans({ all: true, dryRun: true })).toEqual({ files: 1, bytes: (await stat(old)).blocks * 512 });
    // Dated by its marker (written when its record was replaced), not by the file: kept within the day, and
    // by prune within its 15 minutes (a build here may have read the old record and not opened it yet).
    expect(await store.removeReplacedLayers()).toEqual({ files: 0, bytes: 0 });
    expect((await pruneLayers(store, { olderThanMs: 1e12 })).orphans).toEqual({ files: 0, bytes: 0 });
    await stat(old);
    const nextDay = Date.now() + 25 * 3600 * 1000;
    const held = await open(old, 'r');
    try {
      expect((await store.removeReplacedLayers(nextDay)).files).toBe(0);
    } finally {
      await held.close();
    }
    const { blocks } = await stat(old);
    expect(await store.removeReplacedLayers(nextDay)).toEqual({ files: 1, bytes: blocks * 512 });
    await expect(stat(old)).rejects.toThrow();
    await expect(stat(`${old}.replaced`)).rejects.toThrow();
    // prune: the other version's layer and the foreign file stay; a record that cannot be read stops it all.
    await writeFile(join(dir, 'k-broken.json'), '{');
    const orphan = await store.newImage();
    await writeFile(orphan, 'qcow2');
    await utimes(orphan, longAgo, longAgo);
    expect((await pruneLayers(store, { olderThanMs: 1e12 })).orphans).toEqual({ files: 0, bytes: 0 });
    await rm(join(dir, 'k-broken.json'));
    expect((await pruneLayers(store, { olderThanMs: 1e12, dryRun: true })).orphans.files).toBe(1);
    expect((await pruneLayers(store, { olderThanMs: 1e12 })).orphans.files).toBe(1);
    for (const kept of [fresh, killed, foreign]) await stat(kept);
    await expect(stat(orphan)).rejects.toThrow();
    expect((await store.read('k-refresh'))?.image).toBe(name(fresh));
    await rm(join(dir, 'k-other.json'));
  });

  test('a record naming a file outside the store (../x) is no layer: never reused, never removed by prune', async () => {
    const store = new LayerStore(dir);
    const outside = join(dir, '..', `outside-${Date.now()}`);
    await writeFile(outside, 'not a layer');
    await writeFile(join(dir, 'k-escape.json'), JSON.stringify({ ...record('k-escape', undefined, undefined), image: `../${outside.split('/').pop()}` }));
    expect(await store.read('k-escape')).toBeUndefined();
    await pruneLayers(store, { all: true });
    await stat(outside);
    await rm(outside);
    await rm(join(dir, 'k-escape.json'), { force: true });
  });

  test('a layer is removed with every layer above it; files no record names are orphans', async () => {
    const store = new LayerStore(dir);
    const [a, b, orphan] = [await store.newImage(), await store.newImage(), await store.newImage()];
    for (const image of [a, b, orphan]) await writeFile(image, 'qcow2');
    await store.commit(record('k1', undefined, a.split('/').pop()));
    await store.commit(record('k2', 'k1', b.split('/').pop(), a.split('/').pop()));
    expect(await store.removeOrphans({ all: true, dryRun: true })).toEqual({ files: 1, bytes: (await stat(orphan)).blocks * 512 });
    expect((await store.remove('k1')).sort()).toEqual(['k1', 'k2']);
    expect((await store.list()).records).toEqual([]);
  });
});
