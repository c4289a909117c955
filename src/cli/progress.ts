import type { BuildEvent } from '../pipeline/events.js';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * A live line on a terminal under the log: a spinner, the running step and its time so far. Log lines are written
 * through `write`, which clears the live line first and draws it again after, so the two never mix. On anything
 * but a terminal it is inert: `write` only writes.
 */
export function terminalProgress(stream: NodeJS.WriteStream = process.stderr) {
  const live = Boolean(stream.isTTY);
  let running: { label: string; started: number } | undefined;
  let frame = 0;
  let timer: NodeJS.Timeout | undefined;
  const clear = () => live && running && stream.write('\r\x1b[2K');
  const draw = () => {
    if (!live || !running) return;
    const seconds = ((Date.now() - running.started) / 1000).toFixed(1);
    stream.write(`${FRAMES[frame++ % FRAMES.length]} ${running.label} ${seconds}s`);
  };
  const stop = () => {
    clear();
    running = undefined;
    if (timer) clearInterval(timer);
    timer = undefined;
  };
  return {
    write(text: string) {
      clear();
      stream.write(text);
      draw();
    },
    onEvent(event: BuildEvent) {
      if (!live) return;
      if (event.event === 'step-started') {
        stop();
        running = { label: `step ${event.step}/${event.of} (${event.name ?? event.description})`, started: Date.now() };
        timer = setInterval(() => {
          clear();
          draw();
        }, 100);
        timer.unref();
        draw();
      } else if (event.event === 'step-finished' || event.event === 'step-failed') stop();
    },
    stop,
  };
}
