import { readFile } from 'node:fs/promises';
import { HOST_TOOLS } from '../../src/util/tools.js';

const REPO = new URL('../..', import.meta.url).pathname;

/** The runtime stage (the last FROM) and the packages its apt-get install names. */
async function runtimeStage() {
  const text = (await readFile(`${REPO}/Dockerfile`, 'utf8')).replace(/\\\n/g, ' ');
  const stage = text.slice(text.lastIndexOf('\nFROM '));
  const install = /apt-get install -y --no-install-recommends ([^&]+)/.exec(stage)?.[1] ?? '';
  return { stage, packages: install.trim().split(/\s+/) };
}

describe('Dockerfile', () => {
  test('the runtime stage installs the package of every host tool imagebuilder runs (coreutils and libc-bin are Essential: in every Debian)', async () => {
    const { stage, packages } = await runtimeStage();
    const needed = [...new Set(Object.values(HOST_TOOLS).map((t) => t.package))].filter((p) => !['coreutils', 'libc-bin'].includes(p));
    expect(needed.filter((p) => !packages.includes(p))).toEqual([]);
    // The libguestfs appliance boots a kernel of the image's own architecture.
    expect(stage).toContain('"linux-image-$(dpkg --print-architecture)"');
  });

  test('the version label defaults to package.json\'s version; entrypoint, work dir and cache volume', async () => {
    const { stage } = await runtimeStage();
    const { version } = JSON.parse(await readFile(`${REPO}/package.json`, 'utf8')) as { version: string };
    expect(/^ARG VERSION=(\S+)$/m.exec(stage)?.[1]).toBe(version);
    expect(stage).toMatch(/^ENTRYPOINT \["imagebuilder"\]$/m);
    expect(stage).toMatch(/^WORKDIR \/work$/m);
    const cache = /IMAGEBUILDER_CACHE=(\S+)/.exec(stage)?.[1];
    expect(stage).toContain(`VOLUME ${cache}`);
  });
});
