/**
 * Starting child processes in tests on a loaded machine. Node reports a failed spawn only as an
 * 'error' event (no 'exit', no 'close'), so a child started without an 'error' listener turns a
 * spawn that fails (EAGAIN or ENOMEM while other heavy work holds the machine's processes or
 * memory) into an uncaught exception, which makes AVA abandon the whole test file; such a failure
 * is also transient. `spawnChild` retries those, turns any other spawn failure into a rejection,
 * and leaves a listener on the child so that a later 'error' (a kill that fails) is kept, not thrown.
 */
import { ChildProcess, spawn, SpawnOptions } from 'child_process';

/** Spawn errors that a loaded machine can give for a moment. */
const TRANSIENT = new Set(['EAGAIN', 'ENOMEM', 'EMFILE', 'ENFILE']);

export interface StartedChild {
  child: ChildProcess;
  /** An 'error' the child emitted after it started (a failed kill), if any. */
  lateError(): Error | null;
}

/** Resolves with the child once it runs; retries transient spawn failures for up to `patienceMs`. */
export async function spawnChild(command: string, args: readonly string[], options: SpawnOptions = {}, patienceMs = 60_000): Promise<StartedChild> {
  const until = Date.now() + patienceMs;
  for (let wait = 50; ; wait = Math.min(wait * 2, 2000)) {
    const child = spawn(command, args, options);
    let late: Error | null = null;
    const started = await new Promise<Error | null>((resolve) => {
      child.once('spawn', () => resolve(null));
      child.once('error', (e) => resolve(e));
    });
    if (started === null) {
      child.on('error', (e) => (late = e));
      return { child, lateError: () => late };
    }
    const code = (started as NodeJS.ErrnoException).code ?? '';
    if (!TRANSIENT.has(code) || Date.now() + wait > until) throw new Error(`cannot start ${command}: ${started.message}`);
    await new Promise((r) => setTimeout(r, wait));
  }
}
