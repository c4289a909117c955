import { constants, createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type tar from 'tar-stream';

export type TarHeader = Partial<tar.Header> & Pick<tar.Header, 'name'>;

/** Adds an entry without content (directory, symlink, hard link, device, fifo) to a tar-stream pack. */
export function packEntry(pack: tar.Pack, header: TarHeader): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(header, (error) => (error ? reject(error) : resolve())).on('error', reject);
  });
}

/**
 * Adds a regular file to a tar-stream pack, its content streamed from `path` with backpressure. `header.size` is
 * the size stat saw: a file that grows or shrinks meanwhile fails the entry instead of writing past it, which
 * would corrupt the rest of the archive. `onChunk` sees every byte that goes in; `wrapError` turns a read
 * failure into the caller's error; `noAtime` reads without updating the file's access time.
 */
export function packFile(
  pack: tar.Pack,
  header: TarHeader & { size: number },
  path: string,
  options: { onChunk?: (chunk: Buffer) => void; wrapError?: (error: NodeJS.ErrnoException) => Error; noAtime?: boolean } = {},
): Promise<void> {
  const wrap = options.wrapError ?? ((error: Error) => error);
  // O_NOATIME (root, or the file's owner): reading leaves the file's inode, and so its filesystem, unwritten.
  // A guest file (the walk found it a regular file by lstat) is opened O_NOFOLLOW|O_NONBLOCK: swapped meanwhile
  // for a symlink it is refused, for a FIFO the open does not wait.
  const guestFlags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  const opening = options.noAtime
    ? open(path, guestFlags | constants.O_NOATIME).catch((error: NodeJS.ErrnoException) => (error.code === 'EPERM' ? open(path, guestFlags) : Promise.reject(error)))
    : Promise.resolve(undefined);
  return opening.then((handle) => new Promise<void>((resolve, reject) => {
    const source = handle ? handle.createReadStream() : createReadStream(path);
    const sink = pack.entry(header, (error) => (error ? reject(error) : resolve()));
    const fail = (error: NodeJS.ErrnoException) => {
      const failure = wrap(error);
      source.destroy();
      sink.destroy(failure);
      reject(failure);
    };
    const changed = () => new Error(`it changed while being copied (${header.size} bytes before, now ${read})`);
    let read = 0;
    source.on('data', (chunk) => {
      read += chunk.length;
      if (read > header.size) return fail(changed());
      options.onChunk?.(chunk as Buffer);
      if (!sink.write(chunk)) {
        source.pause();
        sink.once('drain', () => source.resume());
      }
    });
    source.on('end', () => (read === header.size ? sink.end(null) : fail(changed()))); // streamx: end(data), null for none
    source.on('error', fail);
    sink.on('error', reject);
    sink.on('close', () => source.destroy());
  }), (error: NodeJS.ErrnoException) => Promise.reject(wrap(error)));
}
