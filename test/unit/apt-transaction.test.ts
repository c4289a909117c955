import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { createApt } from '../../src/pkg/apt.js';
import { aptCacheEnv, carryAptSourceCache, forgetStoredSourceCache, MAX_CARRIED_BYTES, offerStoredSourceCache } from '../../src/pkg/apt-options.js';
import { sha256Text } from '../../src/util/digest.js';
import { createLogger, silentLogger } from '../../src/util/log.js';
import { settle, settledValue } from '../../src/util/settle.js';
import { fakeSession, type FakeCall } from '../helpers/fake-session.js';

const LISTS = 'var/lib/apt/lists';
const PREFIX = 'deb.debian.org_debian_dists_bookworm_';
const PACKAGES = 'Package: socat\nVersion: 1\nArchitecture: amd64\nFilename: pool/s/socat_1_amd64.deb\nSHA256: ' + 'a'.repeat(64) + '\n';

/** A guest whose apt has just fetched one Packages list, named by its release file. */
async function guestWithLists(root: string) {
  await mkdir(join(root, LISTS, 'partial'), { recursive: true });
  await mkdir(join(root, 'var/cache/apt/archives/partial'), { recursive: true });
  await mkdir(join(root, 'var/lib/dpkg'), { recursive: true });
  await writeFile(join(root, 'var/lib/dpkg/status'), '');
  const release = `Origin: Debian\nSuite: stable\nSHA256:\n ${sha256Text(PACKAGES)} ${PACKAGES.length} main/binary-amd64/Packages\n`;
  await writeFile(join(root, LISTS, `${PREFIX}InRelease`), release);
  await writeFile(join(root, LISTS, `${PREFIX}main_binary-amd64_Packages`), PACKAGES);
}

const isInstall = (call: FakeCall) => call.argv[0] === 'apt-get' && call.argv.includes('install');

describe("an apt install with the package cache: the lists its update fetched are kept while it runs", () => {
  let dir: string;
  let root: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'apt-transaction-'));
    root = join(dir, 'root');
    await guestWithLists(root);
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  test('kept before the step cleans up and returns, the install run once', async () => {
    const cache = join(dir, 'cache');
    const kept = join(cache, 'apt-list', `${sha256Text(PACKAGES)}.apt-list`);
    let keptBeforeClean = false;
    const { session, calls } = fakeSession((call) => {
      if (call.argv.join(' ') === 'apt-get clean') keptBeforeClean = existsSync(kept);
      return undefined;
    }, root);
    await createApt().install(session, [{ name: 'socat' }], { packageCache: { dir: cache, log: silentLogger() } });
    expect(keptBeforeClean).toBe(true);
    expect(await readdir(join(cache, 'apt-list'))).toEqual([`${sha256Text(PACKAGES)}.apt-list`]);
    expect(calls.filter(isInstall)).toHaveLength(1);
    expect(calls.at(-1)?.argv).toEqual(['apt-get', 'clean']);
  });

  test('lists that cannot be kept fail the step, after the install ran', async () => {
    // The cache's store for lists is a file: keeping one fails (ENOTDIR), offering finds nothing.
    const cache = join(dir, 'cache');
    await mkdir(cache);
    await writeFile(join(cache, 'apt-list'), 'not a directory');
    const { session, calls } = fakeSession(() => undefined, root);
    await expect(createApt().install(session, [{ name: 'socat' }], { packageCache: { dir: cache, log: silentLogger() } })).rejects.toMatchObject({
      // Said as what it is, with what to do, not as a bare errno.
      code: 'ENVIRONMENT',
      message: expect.stringMatching(/^package cache: keeping a .apt-list file in \S+\/apt-list failed: (ENOTDIR|EEXIST)/),
      hint: expect.stringContaining('must be a writable directory with free space'),
    });
    expect(calls.filter(isInstall)).toHaveLength(1);
  });

  test("an install that fails is the step's error, even when the lists could not be kept either", async () => {
    const cache = join(dir, 'cache');
    await mkdir(cache);
    await writeFile(join(cache, 'apt-list'), 'not a directory');
    const { session } = fakeSession((call) => (isInstall(call) ? { exitCode: 100, output: 'E: Unable to locate package nosuch' } : undefined), root);
    await expect(createApt().install(session, [{ name: 'nosuch' }], { packageCache: { dir: cache, log: silentLogger() } })).rejects.toThrow(/installing packages: `apt-get .*install.*` exited with 100/);
  });
});

describe('settle: work started now, awaited later', () => {
  test('a failure is held, not thrown, until its value is asked for', async () => {
    const failing = settle(Promise.reject(new Error('disk full')));
    // Nothing awaits it for a while: no unhandled rejection ends the test run.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await failing).toEqual({ ok: false, failure: new Error('disk full') });
    await expect(settledValue(failing)).rejects.toThrow('disk full');
    expect(await settledValue(settle(Promise.resolve(42)))).toBe(42);
  });
});

describe("apt's srcpkgcache.bin, carried from one packages step's session to the next of the same build", () => {
  let dir: string;
  let root: string;
  const NAME = 'imagebuilder-apt-srcpkgcache.bin';
  const run = () => join(root, 'run');
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'apt-carry-'));
    root = join(dir, 'root');
    await mkdir(run(), { recursive: true });
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  /** A session whose private /run is `runDir` (as the real one: a directory the host reaches by path). */
  const sessionOn = (runDir: string) => ({ ...fakeSession(() => undefined, root).session, privateRun: { dir: runDir, closed: false } });

  /** The next step's session: a fresh /run, then its first apt command's environment; what apt finds there. */
  async function nextSession() {
    await rm(run(), { recursive: true, force: true });
    await mkdir(run());
    expect(await aptCacheEnv(sessionOn(run()))).toEqual({ APT_CONFIG: '/run/imagebuilder-apt.conf' });
    return readFile(join(run(), NAME)).catch(() => undefined);
  }

  test("what apt built is in the next session's /run before its first apt command", async () => {
    await writeFile(join(run(), NAME), 'apt cache bytes');
    await createApt().finishStep!(sessionOn(run()));
    expect((await nextSession())?.toString()).toBe('apt cache bytes');
  });

  test('a link the guest left there carries nothing: to a host file, to a guest file (as to one under its /sys)', async () => {
    const secret = join(dir, 'host-secret');
    await writeFile(secret, 'HOST SECRET');
    await mkdir(join(root, 'etc'));
    await writeFile(join(root, 'etc/hostname'), 'guest file');
    for (const target of [secret, '/etc/hostname', '../etc/hostname']) {
      await rm(join(run(), NAME), { force: true });
      await symlink(target, join(run(), NAME));
      await carryAptSourceCache(sessionOn(run()));
      expect(await nextSession()).toBeUndefined();
    }
  });

  test('a FIFO (never opened for long: a reader would block), a device node, a directory, or a file past the bound carries nothing', async () => {
    await execa('mkfifo', [join(run(), NAME)]);
    await carryAptSourceCache(sessionOn(run()));
    expect(await nextSession()).toBeUndefined();
    // A device node (the real /run is nodev, and the sandbox cannot make one; here the open succeeds, the type does not).
    await execa('mknod', [join(run(), NAME), 'c', '1', '5']);
    await carryAptSourceCache(sessionOn(run()));
    expect(await nextSession()).toBeUndefined();
    await mkdir(join(run(), NAME));
    await carryAptSourceCache(sessionOn(run()));
    expect(await nextSession()).toBeUndefined();
    // Sparse: its size alone says it is too big, nothing is read.
    await execa('truncate', ['-s', String(MAX_CARRIED_BYTES + 1), join(run(), NAME)]);
    await carryAptSourceCache(sessionOn(run()));
    expect(await nextSession()).toBeUndefined();
  });

  test('nothing there at the end of a step: the next starts without one, not with an older one', async () => {
    await writeFile(join(run(), NAME), 'from step 1');
    await carryAptSourceCache(sessionOn(run()));
    expect((await nextSession())?.toString()).toBe('from step 1');
    // This step's apt left none (the one above is what the host put there; apt's own would replace it).
    await rm(join(run(), NAME));
    await carryAptSourceCache(sessionOn(run()));
    expect(await nextSession()).toBeUndefined();
  });

  test('a closed session (its descriptor number may name another directory by then) is neither read nor written', async () => {
    await writeFile(join(run(), NAME), 'apt cache bytes');
    await carryAptSourceCache(sessionOn(run()));
    await rm(join(run(), NAME));
    const closed = { ...fakeSession(() => undefined, root).session, privateRun: { dir: run(), closed: true } };
    await aptCacheEnv(closed);
    await expect(readFile(join(run(), NAME))).rejects.toThrow(/ENOENT/);
    await writeFile(join(run(), NAME), 'other bytes');
    await carryAptSourceCache(closed);
    // Nothing carried from it: the next session starts without one.
    expect(await nextSession()).toBeUndefined();
  });

  test("reached through the session's descriptor: a guest that swaps a parent of its /run for a link leads the host nowhere else", async () => {
    // The image's /run is a link to /var/run2 (the session mounts its tmpfs there); during the step the guest
    // renames /var away and puts a link to a host directory in its place.
    const mounted = join(root, 'var/run2');
    await mkdir(mounted, { recursive: true });
    await writeFile(join(mounted, NAME), 'apt cache bytes');
    const outside = join(dir, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, NAME), 'HOST FILE');
    const handle = await open(mounted, 'r');
    try {
      const session = sessionOn(`/proc/self/fd/${handle.fd}`);
      await rename(join(root, 'var'), join(root, 'var.old'));
      await symlink(outside, join(root, 'var'));
      await carryAptSourceCache(session);
      // The next session: its own /run, the same descriptor-reached way.
      await rm(join(root, 'var.old/run2', NAME));
      await aptCacheEnv(sessionOn(`/proc/self/fd/${handle.fd}`));
      expect(await readFile(join(root, 'var.old/run2', NAME), 'utf8')).toBe('apt cache bytes');
      expect(await readdir(outside)).toEqual([NAME]);
      expect(await readFile(join(outside, NAME), 'utf8')).toBe('HOST FILE');
    } finally {
      await handle.close();
    }
  });
});

describe("apt's srcpkgcache.bin kept for the same step of a later build", () => {
  const NAME = 'imagebuilder-apt-srcpkgcache.bin';
  let dir: string;
  let cache: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'apt-source-cache-'));
    cache = join(dir, 'cache');
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  /** A build's guest (its own root and /run) with the lists at a given time; what its log says. */
  async function build(name: string, listsTime = new Date('2024-06-29T09:08:07Z')) {
    const root = join(dir, name);
    await guestWithLists(root);
    for (const list of await readdir(join(root, LISTS))) await utimes(join(root, LISTS, list), listsTime, listsTime);
    await mkdir(join(root, 'run'));
    const lines: string[] = [];
    const log = createLogger({ write: (text) => void lines.push(text) });
    const session = { ...fakeSession(() => undefined, root).session, privateRun: { dir: join(root, 'run'), closed: false } };
    return { root, run: join(root, 'run'), session, lines, use: (scope: string) => ({ packageCache: { dir: cache, log, scope } }) };
  }
  const stored = async () => readdir(join(cache, 'apt-srcpkgcache')).catch(() => [] as string[]);

  test('stored by step and lists at a packages step end whose lists came from the cache; offered to that step of a later build, which is told whether apt used it', async () => {
    const first = await build('first');
    // Its lists offered from the cache (the state every build of the step reaches alike): nothing stored yet.
    await offerStoredSourceCache(first.session, first.use('step-a').packageCache);
    await writeFile(join(first.run, NAME), 'apt cache of step A');
    await carryAptSourceCache(first.session, first.use('step-a'));
    expect(await stored()).toHaveLength(1);

    // The next build of that step: the stored bytes replace what its release files' update left.
    const second = await build('second');
    await writeFile(join(second.run, NAME), 'built by the release files update');
    await offerStoredSourceCache(second.session, second.use('step-a').packageCache);
    expect(await readFile(join(second.run, NAME), 'utf8')).toBe('apt cache of step A');
    expect(second.lines.join('')).toContain("package cache: apt's srcpkgcache.bin from an earlier build of this step, base and lists offered");
    // apt kept it (the file as written): said, and not stored again.
    await carryAptSourceCache(second.session, second.use('step-a'));
    expect(second.lines.join('')).toContain('package cache: apt used the srcpkgcache.bin offered, as it was');
    expect(await stored()).toHaveLength(1);

    // apt found it stale and wrote its own (a new file): said, and the new one stored in its place.
    const third = await build('third');
    await offerStoredSourceCache(third.session, third.use('step-a').packageCache);
    await writeFile(join(third.run, `${NAME}.new`), 'apt cache rebuilt');
    await rename(join(third.run, `${NAME}.new`), join(third.run, NAME));
    await carryAptSourceCache(third.session, third.use('step-a'));
    expect(third.lines.join('')).toContain('package cache: apt built its own srcpkgcache.bin: the one offered did not match its lists or configuration');
    const [key] = await stored();
    expect(await readFile(join(cache, 'apt-srcpkgcache', key), 'utf8')).toBe('apt cache rebuilt');
  });

  test('nothing stored from a step whose lists did not come from the cache, or whose own update changed them afterwards', async () => {
    const fetched = await build('fetched');
    await writeFile(join(fetched.run, NAME), 'apt cache');
    await carryAptSourceCache(fetched.session, fetched.use('step-a'));
    const updated = await build('updated');
    await offerStoredSourceCache(updated.session, updated.use('step-a').packageCache);
    forgetStoredSourceCache(updated.session);
    await writeFile(join(updated.run, NAME), 'apt cache');
    await carryAptSourceCache(updated.session, updated.use('step-a'));
    expect(await stored()).toEqual([]);
  });

  test("one session over two packages steps (no layer between them): the second step's cache is not stored under the first's key", async () => {
    const build1 = await build('one-session');
    await offerStoredSourceCache(build1.session, build1.use('step-1').packageCache);
    await writeFile(join(build1.run, NAME), 'cache of step 1');
    await carryAptSourceCache(build1.session, build1.use('step-1'));
    // Step 3, same session: the carry keeps the store's offer away, and what apt left by then is step 3's.
    await offerStoredSourceCache(build1.session, build1.use('step-3').packageCache);
    await writeFile(join(build1.run, NAME), 'cache of step 3, other lists');
    await carryAptSourceCache(build1.session, build1.use('step-3'));
    const names = await stored();
    expect(names).toHaveLength(1);
    expect(await readFile(join(cache, 'apt-srcpkgcache', names[0]), 'utf8')).toBe('cache of step 1');
  });

  test('a store that cannot be written (a full disk, a file in its place) is said as a warning; the step goes on', async () => {
    await mkdir(cache, { recursive: true });
    await writeFile(join(cache, 'apt-srcpkgcache'), 'not a directory');
    const first = await build('first');
    await offerStoredSourceCache(first.session, first.use('step-a').packageCache);
    await writeFile(join(first.run, NAME), 'apt cache of step A');
    await carryAptSourceCache(first.session, first.use('step-a'));
    expect(first.lines.join('')).toMatch(/warn: package cache: keeping a \.apt-srcpkgcache file in \S+ failed: .*; the next build of this step builds apt's caches itself/);
  });

  test('a lists directory crafted with more release files than the key reads (256) keeps and offers nothing', async () => {
    const crafted = await build('crafted');
    for (let i = 0; i < 257; i++) await writeFile(join(crafted.root, LISTS, `mirror${i}.example_dists_x_InRelease`), 'Origin: x\n');
    await offerStoredSourceCache(crafted.session, crafted.use('step-a').packageCache);
    await writeFile(join(crafted.run, NAME), 'apt cache');
    await carryAptSourceCache(crafted.session, crafted.use('step-a'));
    expect(await stored()).toEqual([]);
    // 255 in all (the guest's own one and 254): within the bound, kept.
    const fewer = await build('fewer');
    for (let i = 0; i < 254; i++) await writeFile(join(fewer.root, LISTS, `mirror${i}.example_dists_x_InRelease`), 'Origin: x\n');
    await offerStoredSourceCache(fewer.session, fewer.use('step-a').packageCache);
    await writeFile(join(fewer.run, NAME), 'apt cache');
    await carryAptSourceCache(fewer.session, fewer.use('step-a'));
    expect(await stored()).toHaveLength(1);
  });

  test('never offered to another step (another base or recipe), nor with other lists, nor where the step before carried one', async () => {
    const first = await build('first');
    await offerStoredSourceCache(first.session, first.use('step-a').packageCache);
    await writeFile(join(first.run, NAME), 'apt cache of step A');
    await carryAptSourceCache(first.session, first.use('step-a'));

    const otherStep = await build('other-step');
    await offerStoredSourceCache(otherStep.session, otherStep.use('step-b').packageCache);
    expect(existsSync(join(otherStep.run, NAME))).toBe(false);

    const otherLists = await build('other-lists', new Date('2024-07-01T00:00:00Z'));
    await offerStoredSourceCache(otherLists.session, otherLists.use('step-a').packageCache);
    expect(existsSync(join(otherLists.run, NAME))).toBe(false);

    // The same build's next step: it carries its own (first's root), the store's is not put over it.
    await writeFile(join(first.run, NAME), 'carried within the build');
    await offerStoredSourceCache(first.session, first.use('step-a').packageCache);
    expect(await readFile(join(first.run, NAME), 'utf8')).toBe('carried within the build');
  });
});
