import { access, chmod, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { fixtureImage } from '../helpers/fixtures.js';
import { CLI, expectNothingLeft, hostState, runCli, sha256 } from '../helpers/host.js';
import { dpkgVersion, withImageMounted } from '../helpers/inspect.js';
import { startLocalMirror, type LocalMirror } from '../helpers/local-mirror.js';
import { writeRecipe } from '../helpers/recipes.js';
import { deriveImage } from '../helpers/derive-image.js';

/**
 * The step cache for real: layers are live qcow2 snapshots of a Debian fixture image taken between steps that
 * run real apt against a local signed mirror; rebuilds reuse the longest cached prefix. Also phases run alone
 * (--phases 0,1 then export), a failed build resumed from its kept work dir, and a shell at the failed step.
 */
describe('step cache, phases, resume and shell-on-failure (fuse backend)', () => {
  let work: string;
  let cache: string;
  let mirror: LocalMirror;
  let input: string;
  beforeAll(async () => {
    work = await mkdtemp('/var/tmp/ib-cache-');
    cache = join(work, 'cache');
    mirror = await startLocalMirror();
    input = await fixtureImage('gpt-esp');
    await mkdir(join(work, 'tree'));
    await writeFile(join(work, 'tree', 'kubelet.conf'), 'KUBELET_EXTRA_ARGS=--node-ip=10.0.0.1\n');
  });
  afterAll(async () => {
    await mirror?.close();
    await rm(work, { recursive: true, force: true });
  });

  // The cache on (tests default to IMAGEBUILDER_NO_CACHE=1), in a directory of this test's own.
  const env = () => ({ IMAGEBUILDER_CACHE: cache, IMAGEBUILDER_NO_CACHE: '', IMAGEBUILDER_WORK_DIR: work });
  const steps = (third: unknown) => [
    { name: 'kubernetes repository', repository: { name: 'kubernetes', url: mirror.aptUrl, key_url: mirror.keyUrl, fingerprint: mirror.keyFingerprint } },
    { name: 'kubectl', packages: { install: ['kubectl=1.36.2-1.1'] } },
    third,
  ];
  const apply = (recipe: string, output: string, extra: string[] = []) =>
    runCli(['apply', recipe, '--disk-image', input, '--output', output, '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', ...extra], { env: env() });
  const stepLines = (stderr: string) => stderr.split('\n').filter((line) => /\] step \d\/\d/.test(line)).map((line) => line.replace(/^\[\s*[\d.]+s\] /, ''));
  const comparable = (bom: { packages: unknown[]; files: unknown[]; units: unknown[]; unitStates: unknown[]; steps: { durationMs?: number; cached?: boolean }[] }) => ({
    packages: bom.packages,
    files: bom.files,
    units: bom.units,
    unitStates: bom.unitStates,
    steps: bom.steps.map(({ durationMs: _, cached: __, ...step }) => step),
  });

  test('a rebuild with only the last step changed runs only that step, and equals a clean build', async () => {
    const first = await writeRecipe(work, 'three', steps({ name: 'kubelet config', copy: { src: 'tree', dest: '/etc/default/kubelet.d' } }));
    const before = await hostState();
    const built = await apply(first, join(work, 'first.qcow2'));
    if (built.exitCode !== 0) throw new Error(built.all);
    expect(stepLines(built.stderr).filter((line) => line.includes('cached'))).toEqual([]);
    expect((await readdir(join(cache, 'layers'))).filter((name) => name.endsWith('.json'))).toHaveLength(3);

    // The same recipe with a comment added and a step renamed: every step from the cache.
    await writeFile(first, `# pinned for the 1.36 line\n${await readFile(first, 'utf8')}`);
    const again = await apply(first, join(work, 'again.qcow2'));
    expect(again.exitCode).toBe(0);
    expect(stepLines(again.stderr).filter((line) => /: cached \(layer [0-9a-f]{12}\)$/.test(line))).toHaveLength(3);

    // The copied host file changes: steps 1 and 2 come from the cache, only step 3 runs.
    await writeFile(join(work, 'tree', 'kubelet.conf'), 'KUBELET_EXTRA_ARGS=--node-ip=10.0.0.2\n');
    const rebuilt = await apply(first, join(work, 'rebuilt.qcow2'), ['--json']);
    if (rebuilt.exitCode !== 0) throw new Error(rebuilt.all);
    const lines = stepLines(rebuilt.stderr);
    expect(lines[0]).toMatch(/^step 1\/3 \(kubernetes repository\): cached \(layer [0-9a-f]{12}\)$/);
    expect(lines[1]).toMatch(/^step 2\/3 \(kubectl\): cached \(layer [0-9a-f]{12}\)$/);
    expect(lines[2]).toMatch(new RegExp(`^step 3/3 \\(kubelet config\\): copy at ${first}:\\d+:\\d+$`));
    const events = rebuilt.stdout.trim().split('\n').map((line) => JSON.parse(line));
    expect(events.filter((e) => e.event === 'step-cached').map((e) => e.step)).toEqual([1, 2]);
    expect(events.filter((e) => e.event === 'step-started').map((e) => e.step)).toEqual([3]);
    expect(events.at(-1)).toMatchObject({ event: 'result', output: { path: join(work, 'rebuilt.qcow2'), format: 'qcow2' } });
    await expectNothingLeft(before);

    // A clean build of the same recipe, without the cache, gives the same BOM contents.
    const clean = await runCli(['apply', first, '--disk-image', input, '--output', join(work, 'clean.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--no-cache'], {
      env: { IMAGEBUILDER_CACHE: join(work, 'other-cache'), IMAGEBUILDER_WORK_DIR: work },
    });
    if (clean.exitCode !== 0) throw new Error(clean.all);
    const rebuiltBom = JSON.parse(await readFile(join(work, 'rebuilt.qcow2.bom.json'), 'utf8'));
    const cleanBom = JSON.parse(await readFile(join(work, 'clean.qcow2.bom.json'), 'utf8'));
    expect(comparable(rebuiltBom)).toEqual(comparable(cleanBom));
    expect(rebuiltBom.steps.map((s: { cached?: boolean }) => s.cached ?? false)).toEqual([true, true, false]);
    // The base, unchanged since the earlier builds hashed it, is not read again (fetch.test.ts: --no-cache reads it).
    expect(rebuilt.stderr).toContain('(its sums as hashed before: the file is unchanged since)');
    expect(rebuiltBom.input.sha256).toBe(await sha256(input));
    expect(rebuiltBom.input.sha256).toBe(cleanBom.input.sha256);
    await expect(access(join(work, 'other-cache', 'layers'))).rejects.toThrow();

    // The output is whole and flat: its own content, none of the session's temporary files, no backing file.
    expect((await execa('qemu-img', ['info', '--output=json', join(work, 'rebuilt.qcow2')])).stdout).not.toContain('backing-filename');
    // resolv.conf as the base image has it (a file, or a symlink as on the gpt-esp fixture), not the build's.
    const resolvConf = async (root: string) => {
      const path = join(root, 'etc/resolv.conf');
      return (await lstat(path)).isSymbolicLink() ? `symlink to ${await readlink(path)}` : await readFile(path, 'utf8');
    };
    const baseResolvConf = await withImageMounted(input, 'gpt-esp', resolvConf);
    await withImageMounted(join(work, 'rebuilt.qcow2'), 'gpt-esp', async (root) => {
      expect(await readFile(join(root, 'etc/default/kubelet.d/kubelet.conf'), 'utf8')).toBe('KUBELET_EXTRA_ARGS=--node-ip=10.0.0.2\n');
      expect(await dpkgVersion(root, 'kubectl')).toBe('1.36.2-1.1');
      await expect(access(join(root, 'usr/sbin/policy-rc.d'))).rejects.toThrow();
      expect(await resolvConf(root)).toBe(baseResolvConf);
    });
    await withImageMounted(join(work, 'first.qcow2'), 'gpt-esp', async (root) => {
      expect(await readFile(join(root, 'etc/default/kubelet.d/kubelet.conf'), 'utf8')).toBe('KUBELET_EXTRA_ARGS=--node-ip=10.0.0.1\n');
    });

    // --refresh 2 runs step 2 and everything after it again, and says which step depends on what.
    const refreshed = await apply(first, join(work, 'refreshed.qcow2'), ['--refresh', 'kubectl']);
    expect(refreshed.exitCode).toBe(0);
    expect(stepLines(refreshed.stderr).map((line) => line.includes(': cached'))).toEqual([true, false, false, false, false]);

    // The layers the refresh replaced are no record's any more: marked when replaced, the first build a day
    // later (here the markers are made two days old) removes them, and nothing any record names.
    const layerFiles = async () => {
      const names = await readdir(join(cache, 'layers'));
      const records = await Promise.all(names.filter((n) => n.endsWith('.json')).map(async (n) => JSON.parse(await readFile(join(cache, 'layers', n), 'utf8')) as { image?: string }));
      const named = new Set(records.map((record) => record.image).filter(Boolean));
      return { orphans: names.filter((n) => n.endsWith('.qcow2') && !named.has(n)), named: names.filter((n) => named.has(n)) };
    };
    const replaced = await layerFiles();
    expect(replaced.orphans).toHaveLength(2);
    const notYet = await apply(first, join(work, 'not-yet.qcow2'));
    if (notYet.exitCode !== 0) throw new Error(notYet.all);
    expect(notYet.stderr).not.toContain('step cache: removed');
    expect((await layerFiles()).orphans).toEqual(replaced.orphans);
    const twoDaysAgo = new Date(Date.now() - 48 * 3600_000);
    for (const orphan of replaced.orphans) await utimes(join(cache, 'layers', `${orphan}.replaced`), twoDaysAgo, twoDaysAgo);
    const swept = await apply(first, join(work, 'swept.qcow2'));
    if (swept.exitCode !== 0) throw new Error(swept.all);
    expect(swept.stderr).toContain('step cache: removed 2 layer(s) replaced a day ago or more by steps run again');
    expect(await layerFiles()).toEqual({ orphans: [], named: replaced.named });
    expect((await readdir(join(cache, 'layers'))).filter((n) => n.endsWith('.replaced'))).toEqual([]);
  });

  test('cache list shows the layers and prune --all removes them', async () => {
    const listed = await runCli(['cache', 'list', '--json'], { env: env() });
    expect(listed.exitCode).toBe(0);
    const layers = JSON.parse(listed.stdout).layers as { key: string; step: { type: string } }[];
    expect(layers.length).toBeGreaterThanOrEqual(4);
    expect(layers.map((l) => l.step.type)).toEqual(expect.arrayContaining(['repository', 'packages', 'copy']));
    const pruned = await runCli(['cache', 'prune', '--all'], { env: env() });
    expect(pruned.exitCode).toBe(0);
    expect(await readdir(join(cache, 'layers'))).toEqual([]);
  });

  test('two builds over one cached layer from two copies of the base: the second waits for the first before pointing the layer at its copy', async () => {
    // The same base (same sha256) at another path, as another workspace or container would have it.
    const copy = join(work, 'base-copy.qcow2');
    await execa('cp', ['--reflink=auto', input, copy]);
    const recipeOf = (name: string, last: string) => writeRecipe(work, name, [{ name: 'marker', file: { path: '/etc/shared-layer', content: 'layer 1\n' } }, { name: 'last', run: last }]);
    const applyArgs = (recipe: string, name: string, disk: string) => ['apply', recipe, '--disk-image', disk, '--output', join(work, `${name}.qcow2`), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify'];
    const seeded = await runCli(applyArgs(await recipeOf('seed', 'true'), 'seed', input), { env: env() });
    if (seeded.exitCode !== 0) throw new Error(seeded.all);
    // A holds the shared layer (over `input`) through its slow last step; B comes over the copy once A is in it.
    const first = execa('node', [CLI, ...applyArgs(await recipeOf('slow', 'sleep 8; echo slow > /etc/which'), 'slow', input)], { env: env(), reject: false, all: true });
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      first.stderr!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('step 2/2 (last): run')) resolve();
      });
      void first.then(() => reject(new Error(`the slow build ended before its last step: ${seen}`)));
    });
    const second = await runCli(applyArgs(await recipeOf('other-path', 'echo other > /etc/which'), 'other-path', copy), { env: env() });
    const ended = await first;
    const slow = { exitCode: ended.exitCode, stderr: String(ended.stderr), all: String(ended.all) };
    for (const result of [slow, second]) if (result.exitCode !== 0) throw new Error(result.all);
    expect(stepLines(second.stderr)[0]).toMatch(/^step 1\/2 \(marker\): cached/);
    expect(second.stderr).toContain('step cache: waiting for the builds using layer-');
    expect(slow.stderr).not.toContain('waiting for the builds');
    // Each output is whole and its own; the layer now names the copy.
    for (const [name, which] of [['slow', 'slow'], ['other-path', 'other']]) {
      await withImageMounted(join(work, `${name}.qcow2`), 'gpt-esp', async (root) => {
        expect(await readFile(join(root, 'etc/which'), 'utf8')).toBe(`${which}\n`);
        expect(await readFile(join(root, 'etc/shared-layer'), 'utf8')).toBe('layer 1\n');
      });
    }
    const layerFiles = (await readdir(join(cache, 'layers'))).filter((name) => name.endsWith('.qcow2'));
    const backings = await Promise.all(layerFiles.map(async (name) => JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', join(cache, 'layers', name)])).stdout)['backing-filename']));
    expect(backings).toContain(copy);
    await rm(copy);
  }, 300_000);

  test('--phases 0,1 then export gives what one apply gives', async () => {
    const recipe = await writeRecipe(work, 'phases', steps({ name: 'motd', file: { path: '/etc/motd', content: 'a kubernetes node\n' } }));
    const epoch = { SOURCE_DATE_EPOCH: '1700000000' };
    const before = await hostState();
    const phased = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'node.work.qcow2'), '--phases', '0,1', '--mount-backend', 'fuse', '--insecure-skip-verify'], { env: { ...env(), ...epoch } });
    if (phased.exitCode !== 0) throw new Error(phased.all);
    expect(phased.stdout).toContain(`work image: ${join(work, 'node.work.qcow2')}`);
    await expect(access(join(work, 'node.work.qcow2.bom.json'))).rejects.toThrow();
    const inspected = await runCli(['inspect', join(work, 'node.work.qcow2'), '--format', 'json', '--insecure-skip-verify'], { env: env() });
    expect(inspected.exitCode).toBe(0);
    expect(JSON.parse(inspected.stdout).work).toMatchObject({ recipe: { name: 'phases' }, input: { path: input }, steps: [{ type: 'repository' }, { type: 'packages' }, { type: 'file' }] });
    const exported = await runCli(['export', join(work, 'node.work.qcow2'), '--output', join(work, 'exported.qcow2'), '--sparsify', 'none'], { env: { ...env(), ...epoch } });
    if (exported.exitCode !== 0) throw new Error(exported.all);
    const whole = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'whole.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--no-cache'], { env: { ...env(), ...epoch } });
    if (whole.exitCode !== 0) throw new Error(whole.all);
    await expectNothingLeft(before);

    const exportedBom = JSON.parse(await readFile(join(work, 'exported.qcow2.bom.json'), 'utf8'));
    const wholeBom = JSON.parse(await readFile(join(work, 'whole.qcow2.bom.json'), 'utf8'));
    expect(comparable(exportedBom)).toEqual(comparable(wholeBom));
    expect(exportedBom.input).toEqual(wholeBom.input);
    expect(exportedBom.recipe).toEqual(wholeBom.recipe);
    expect(exportedBom.createdAt).toBe('2023-11-14T22:13:20.000Z');
    expect((await readFile(join(work, 'SHA256SUMS'), 'utf8'))).toContain(`${exportedBom.output.sha256}  exported.qcow2`);
    const inImage = async (image: string) =>
      withImageMounted(image, 'gpt-esp', async (root) => ({
        bom: await readFile(join(root, 'usr/share/imagebuilder/bom.json'), 'utf8'),
        motd: await readFile(join(root, 'etc/motd'), 'utf8'),
        workRecord: await access(join(root, 'usr/share/imagebuilder/work.json')).then(() => true, () => false),
      }));
    const [fromExport, fromApply, fromWork] = [await inImage(join(work, 'exported.qcow2')), await inImage(join(work, 'whole.qcow2')), await inImage(join(work, 'node.work.qcow2'))];
    expect(fromExport).toEqual(fromApply);
    expect(fromExport.workRecord).toBe(false);
    expect(fromWork.workRecord).toBe(true);

    // A plain image is not a work image: export says so.
    const refused = await runCli(['export', input, '--output', join(work, 'not-work.qcow2')], { env: env() });
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain('is not a work image: it has no /usr/share/imagebuilder/work.json');

    // A work image whose record was forged or damaged after phase 1: refused, with nothing of it in a BOM.
    const record = await withImageMounted(join(work, 'node.work.qcow2'), 'gpt-esp', async (root) => JSON.parse(await readFile(join(root, 'usr/share/imagebuilder/work.json'), 'utf8')));
    const forgeries: [string, string, string][] = [
      ['not-json', '{"bomVersion": 1,', 'its work record (/usr/share/imagebuilder/work.json) is not JSON'],
      // A passing test run and a verified base it never had: phase 2's keys are no work record's.
      ['claims-a-test', JSON.stringify({ ...record, input: { ...record.input, verified: true }, test: { summary: { passed: 50, failed: 0, skipped: 0 } } }), 'is not a work record this imagebuilder writes (/ must NOT have additional properties (test))'],
      // An older imagebuilder's record, lacking a key this one's BOM requires: refused, naming both versions.
      ['older-tool', JSON.stringify({ ...record, unitStates: undefined, tool: { name: 'imagebuilder', version: '0.0.1' } }), "must have required property 'unitStates') (written by imagebuilder 0.0.1; this is "],
      // A package the image does not hold (or the image changed after its record was written).
      ['other-packages', JSON.stringify({ ...record, packages: [...record.packages, { ...record.packages[0], name: 'trusted-agent', version: '1.0' }] }), `its work record does not describe it: 1 package(s) differ, trusted-agent 1.0 ${record.packages[0].architecture} (recorded, not installed)`],
    ];
    for (const [name, content, message] of forgeries) {
      const forged = await deriveImage(join(work, 'node.work.qcow2'), join(work, `forged-${name}.qcow2`), { '/usr/share/imagebuilder/work.json': content }, { partitioned: true, partition: 2 });
      const result = await runCli(['export', forged, '--output', join(work, `forged-${name}-out.qcow2`), '--sparsify', 'none'], { env: env() });
      expect({ name, exitCode: result.exitCode }).toEqual({ name, exitCode: 2 });
      expect(result.stderr).toContain(message);
      await expect(access(join(work, `forged-${name}-out.qcow2.bom.json`))).rejects.toThrow();
    }
    // inspect shows the image and says its record is not one, rather than crashing on it or showing its claims.
    const forgedInspected = await runCli(['inspect', join(work, 'forged-claims-a-test.qcow2')], { env: env() });
    expect(forgedInspected.exitCode).toBe(0);
    expect(forgedInspected.stderr).toContain('/usr/share/imagebuilder/work.json is not a work record this imagebuilder writes (/ must NOT have additional properties (test))');
    expect(forgedInspected.stdout).not.toContain('work image:');
    expect(forgedInspected.stdout).toMatch(/^packages: +\d+$/m);
  });

  test('a failed step with --keep-work-dir, then --resume after fixing the recipe, reuses the good steps', async () => {
    const tmp = await mkdtemp(join(work, 'tmp-'));
    const resumeEnv = { IMAGEBUILDER_WORK_DIR: tmp, IMAGEBUILDER_CACHE: join(work, 'resume-cache') };
    const recipe = await writeRecipe(work, 'resumable', steps({ name: 'broken', run: 'test -e /etc/kubernetes-ready' }));
    const before = await hostState();
    const failed = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'resumed.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--no-cache', '--keep-work-dir'], { env: resumeEnv });
    expect(failed.exitCode).toBe(4);
    expect(failed.stderr).toContain('error [STEP_FAILED]: step 3/3 (broken) failed');
    const kept = /--resume (\S+)/.exec(failed.stderr)?.[1];
    expect(kept).toBeDefined();
    expect(JSON.parse(await readFile(join(kept!, 'resume.json'), 'utf8'))).toMatchObject({ store: join(kept!, 'layers') });
    await expectNothingLeft(before);
    await expect(access(join(work, 'resumed.qcow2'))).rejects.toThrow();

    // A work directory is believed only while it is ours alone, as the build made it, and only for its own
    // layers or the cache's: its layers are replayed into the guest and its store is written.
    const resumeFrom = (dir: string) =>
      runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'resumed.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--resume', dir], { env: resumeEnv });
    const refusedWith = async (dir: string, why: string) => {
      const refused = await resumeFrom(dir);
      expect({ exitCode: refused.exitCode, refusal: refused.stderr.includes(why) ? why : refused.stderr }).toEqual({ exitCode: 2, refusal: why });
    };
    await chmod(kept!, 0o755);
    await refusedWith(kept!, `refusing to resume from ${kept}: others may enter or write it (mode 755; a build makes it 0700)`);
    await chmod(kept!, 0o700);
    const crafted = await mkdtemp(join(tmp, 'crafted-'));
    const elsewhere = await mkdtemp(join(work, 'elsewhere-'));
    await writeFile(join(crafted, 'resume.json'), JSON.stringify({ store: elsewhere, baseSha256: '0'.repeat(64) }));
    await refusedWith(crafted, `refusing to resume from ${crafted}: its resume.json names ${elsewhere} as its layer store, which is neither a kept work directory's layers/ nor the cache's`);
    await execa('chown', ['65534', crafted]);
    await refusedWith(crafted, `refusing to resume from ${crafted}: it belongs to uid 65534, not to this user (uid 0)`);
    const linked = await mkdtemp(join(tmp, 'linked-'));
    await symlink(join(kept!, 'resume.json'), join(linked, 'resume.json'));
    await refusedWith(linked, `refusing to resume from ${linked}: its resume.json cannot be read: ${join(linked, 'resume.json')} is not a regular file`);
    await rm(crafted, { recursive: true });
    await rm(linked, { recursive: true });
    await expectNothingLeft(before);
    // Resumed and failed again, kept again: the new work directory names the first one's layers, and is resumed from.
    const again = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'resumed.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--resume', kept!, '--keep-work-dir'], { env: resumeEnv });
    expect(again.exitCode).toBe(4);
    const keptAgain = /--resume (\S+)/.exec(again.stderr)?.[1];
    expect(JSON.parse(await readFile(join(keptAgain!, 'resume.json'), 'utf8'))).toMatchObject({ store: join(kept!, 'layers') });

    await writeRecipe(work, 'resumable', steps({ name: 'fixed', run: 'touch /etc/kubernetes-ready' }));
    const resumed = await runCli(['apply', recipe, '--disk-image', input, '--output', join(work, 'resumed.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--resume', keptAgain!], { env: resumeEnv });
    if (resumed.exitCode !== 0) throw new Error(resumed.all);
    expect(stepLines(resumed.stderr).map((line) => line.includes(': cached'))).toEqual([true, true, false, false]);
    await withImageMounted(join(work, 'resumed.qcow2'), 'gpt-esp', async (root) => {
      await access(join(root, 'etc/kubernetes-ready'));
      expect(await dpkgVersion(root, 'kubectl')).toBe('1.36.2-1.1');
    });
    await expectNothingLeft(before);
    // Resuming was all it took: the shared cache was never written.
    await expect(access(join(work, 'resume-cache', 'layers'))).rejects.toThrow();
  });

  test('--shell-on-failure opens a shell in the guest at the failed step; after it exits nothing is left', async () => {
    const recipe = await writeRecipe(work, 'shell', [
      { file: { path: '/etc/written-before', content: 'from step 1\n' } },
      { name: 'fails', run: 'echo half > /etc/half-done; exit 7' },
    ]);
    const before = await hostState();
    const result = await execa('node', [CLI, 'apply', recipe, '--disk-image', input, '--output', join(work, 'shell.qcow2'), '--mount-backend', 'fuse', '--sparsify', 'none', '--insecure-skip-verify', '--shell-on-failure'], {
      env: env(),
      input: 'cat /etc/written-before /etc/half-done; mountpoint -q /proc && echo proc-mounted\nexit\n',
      reject: false,
      all: true,
    });
    expect(result.exitCode).toBe(4);
    expect(result.stdout).toContain('from step 1\nhalf\nproc-mounted');
    expect(result.stderr).toContain('a shell inside the guest at the failed step');
    expect(result.stderr).toContain('error [STEP_FAILED]: step 2/2 (fails) failed');
    await expect(access(join(work, 'shell.qcow2'))).rejects.toThrow();
    await expectNothingLeft(before);
  });
});
