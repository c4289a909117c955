import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { forgetHolding, noteHolding, processStartTime, type Holding } from '../util/build-record.js';
import { fuseConnectionOf } from '../util/fuse-connections.js';
import type { AttachRequest, LiveSnapshot, MountBackend, MountContext } from './backend.js';
import { connectQmp } from './qmp.js';
import { ensurePartitions } from './block.js';
import { loopsBackedBy } from '../util/loops.js';
import { startHelper } from '../util/daemon.js';
import { exists, which } from '../util/fs.js';
import { mountsUnder } from '../util/mounts.js';

/**
 * qemu-storage-daemon exports the image as one raw file over FUSE; a loop device over that file gives the
 * kernel a block device, so the guest's filesystems are mounted natively (no nbd module needed).
 */
export const fuseBackend: MountBackend = {
  name: 'fuse',

  async unavailable() {
    if (!(await which('qemu-storage-daemon'))) return 'qemu-storage-daemon is not installed (Debian package qemu-utils)';
    if (!(await exists('/dev/fuse'))) return '/dev/fuse is missing (load the fuse module, or run the container with --device /dev/fuse)';
    if (!(await exists('/dev/loop-control'))) return '/dev/loop-control is missing (no loop device support)';
    return undefined;
  },

  async attach(context: MountContext, request: AttachRequest) {
    const { run, log, cleanup } = context;
    const exportFile = join(context.workDir, 'disk.raw');
    const monitor = join(context.workDir, 'qmp.sock');
    await writeFile(exportFile, '');
    const discard = request.readOnly ? '' : ',discard=unmap';
    const args = [
      // The monitor lets a build take live snapshots between steps (the step cache) without detaching.
      '--chardev', `socket,id=qmp0,path=${monitor},server=on,wait=off`, '--monitor', 'chardev=qmp0',
      '--blockdev', `driver=file,node-name=file0,filename=${request.image}${discard}${request.readOnly ? ',read-only=on' : ''}`,
      '--blockdev', `driver=${request.format},node-name=disk0,file=file0${discard}${request.readOnly ? ',read-only=on' : ''}`,
      '--export', `type=fuse,id=export0,node-name=disk0,mountpoint=${exportFile},writable=${request.readOnly ? 'off' : 'on'}`,
    ];
    // Not --daemonize (which hands the daemon to init, where a SIGKILLed build left it serving): our child, killed
    // by the kernel when we die. Its release is registered as it is spawned, before anything can interrupt.
    let exportHolding: Holding | undefined;
    const daemon = await startHelper(
      'qemu-storage-daemon',
      args,
      { log, logFile: join(context.workDir, 'qemu-storage-daemon.log'), purpose: 'exporting the image over FUSE', signal: context.signal, ready: async () => (await mountsUnder(exportFile)).length > 0 },
      (daemon) =>
        cleanup.push(`qemu-storage-daemon (pid ${daemon.pid})`, async () => {
          // The loop device writes through the export file's page cache: flush it to the daemon before it goes.
          await run('sync', [exportFile], { allowFailure: true });
          // The image is consistent (and free for qemu-img) only once the daemon has flushed and exited.
          await daemon.stop();
          if ((await mountsUnder(exportFile)).length) await run('fusermount3', ['-u', exportFile], { allowFailure: true });
          // Its connection number is free for the next FUSE mount: no reaper may judge by it any more.
          if (exportHolding) await forgetHolding(context.workDir, exportHolding);
        }),
    );
    // Before the loop device: over it, a killed build's daemon can be left stuck exiting, and a reaper then
    // needs the connection to free it (reap.ts).
    const connection = await fuseConnectionOf(exportFile);
    const startTime = processStartTime(daemon.pid);
    if (connection && startTime !== undefined) {
      exportHolding = { kind: 'fuse-export', ...connection, server: { pid: daemon.pid, startTime } };
      await noteHolding(context.workDir, exportHolding);
    }

    // Registered before it is taken: interrupted while losetup runs, the device is found by its backing file.
    let device: string | undefined;
    cleanup.push(`loop device over ${exportFile}`, async () => {
      for (const loop of new Set([...(device ? [device] : []), ...(await loopsBackedBy(exportFile))])) await run('losetup', ['--detach', loop], { allowFailure: true });
    });
    const loop = await run('losetup', ['--find', '--show', ...(request.readOnly ? ['--read-only'] : []), exportFile], {
      log,
      purpose: 'attaching a loop device',
      hint: 'all loop devices may be busy: `losetup -a` lists them',
    });
    device = loop.stdout.trim();
    await noteHolding(context.workDir, { kind: 'loop', device });
    await ensurePartitions(context, device);
    if (request.readOnly) return { kind: 'block' as const, device };

    // Each snapshot puts a new top node over the export's current one; the export follows the top.
    let top = 'disk0';
    const snapshot: LiveSnapshot = async (overlay) => {
      // What the loop device wrote is in the export file's page cache until flushed to the daemon.
      await run('sync', [exportFile]);
      const qmp = await connectQmp(monitor);
      try {
        const node = `layer${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
        await qmp.execute('blockdev-snapshot-sync', { 'node-name': top, 'snapshot-file': overlay, 'snapshot-node-name': node, format: 'qcow2', mode: 'absolute-paths' });
        top = node;
      } finally {
        qmp.close();
      }
    };
    return { kind: 'block' as const, device, snapshot };
  },
};
