/**
 * train(): fine-tuning (any method) in a worker thread. The returned TrainRun is awaitable for the
 * result, emits 'start' / 'step' / 'eval' / 'checkpoint' / 'warning' events (and 'error'), and stops (after writing a
 * checkpoint it can resume from) when its AbortSignal fires or abort() is called.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { PeftkitError } from '../errors';
import { resolveDistributed } from '../distributed/env';
import { releaseLockOfThread } from '../io/lock';
import { TypedEmitter } from '../util/typed_emitter';
import { workerError } from '../util/worker_error';
import type { TrainOptions } from './options';
import { resolveWithCheckpoint } from './resume';
import type { TrainEvent, TrainResult } from './run';

export interface TrainRunOptions extends TrainOptions {
  /** Stops the run between steps (a checkpoint is written first). */
  signal?: AbortSignal;
  /**
   * After abort(), how long the run may take to reach a step boundary (where it writes a
   * checkpoint and stops) before its worker is terminated instead: inside a long step or data
   * preparation the run then ends at once, losing the work since its last checkpoint. Defaults to `2000` ms.
   */
  abortGraceMs?: number;
}

/** The events a TrainRun emits, by name: each TrainEvent, and `error` when the run fails. */
export type TrainRunEvents = { [T in TrainEvent['type']]: Extract<TrainEvent, { type: T }> } & { error: PeftkitError };
export type TrainRunEventName = keyof TrainRunEvents;

/**
 * A training run: awaitable for its TrainResult, an emitter of its events. A failure rejects the
 * promise and is also emitted as `error` when that has a listener; a run whose failure nobody
 * observes (no `error` listener, never awaited) raises an unhandled rejection, as a plain
 * promise would, so a script that only listens to `step` does not end with exit code 0.
 */
export class TrainRun extends TypedEmitter<TrainRunEvents> implements PromiseLike<TrainResult> {
  private readonly settled: Promise<TrainResult>;
  private observed = false;
  private readonly stopFlag: Int32Array;
  private readonly abortGraceMs: number;
  /** Terminates the worker when the grace after abort() runs out (set once the worker runs). */
  private terminate: (() => void) | null = null;
  private watchdog: NodeJS.Timeout | null = null;

  constructor(options: TrainRunOptions) {
    super();
    const { signal, abortGraceMs, ...plain } = options;
    this.abortGraceMs = abortGraceMs ?? 2000;
    const shared = new SharedArrayBuffer(4);
    this.stopFlag = new Int32Array(shared);
    this.settled = this.start(plain, shared, signal);
    // Once the run failed: tell the 'error' listeners, or if nobody listens nor awaits, let the
    // rejection be unhandled (Node then reports it and exits non-zero).
    this.settled.catch((e: unknown) => {
      if (this.listenerCount('error') > 0) this.emit('error', e);
      else if (!this.observed) void Promise.reject(e);
    });
  }

  private start(plain: TrainOptions, shared: SharedArrayBuffer, signal: AbortSignal | undefined): Promise<TrainResult> {
    try {
      if (!(Number.isFinite(this.abortGraceMs) && this.abortGraceMs >= 0)) throw new PeftkitError('E_ARG', `abortGraceMs: expected a number of milliseconds >= 0, got ${String(this.abortGraceMs)}`);
      resolveWithCheckpoint(plain); // bad options reject the run, as any other failure, before a worker starts
      resolveDistributed(plain.distributed); // and so do bad torchrun variables
    } catch (e) {
      return Promise.reject(e instanceof PeftkitError ? e : new PeftkitError('E_ARG', (e as Error).message));
    }
    // An already aborted signal stops the run before it starts, as fetch() does: no model is
    // loaded and nothing is written.
    if (signal?.aborted) return Promise.reject(new PeftkitError('E_ABORTED', 'training aborted before it started (the AbortSignal was already aborted)'));
    const worker = new Worker(path.join(__dirname, 'worker.js'), { workerData: { options: plain, stop: shared } });
    const workerThread = worker.threadId; // -1 once it has exited
    signal?.addEventListener('abort', () => this.abort(), { once: true });
    return new Promise<TrainResult>((resolve, reject) => {
      let settled = false;
      this.terminate = () => {
        if (settled) return;
        settled = true;
        const where = typeof plain.out === 'string' ? `; resume with resume: '${plain.out}' (from its last checkpoint)` : '';
        const err = new PeftkitError('E_ABORTED', `training stopped by terminating its worker ${this.abortGraceMs} ms after abort(), inside a step or data preparation: the work since the last checkpoint is lost${where}`);
        // Settled once the worker is gone and its exit handler has released the folder's lock.
        worker.terminate().then(() => reject(err), () => reject(err));
      };
      worker.on('message', (m: { kind: string; event?: TrainEvent; result?: TrainResult; code?: string; message?: string; errno?: string; path?: string; syscall?: string }) => {
        if (m.kind === 'event' && m.event) this.emit(m.event.type, m.event);
        else if (m.kind === 'result') {
          settled = true;
          resolve(m.result!);
        } else if (m.kind === 'error') {
          settled = true;
          reject(workerError(m, 'training failed'));
        }
      });
      worker.on('error', (e) => {
        settled = true;
        reject(new PeftkitError('E_INTERNAL', `training worker crashed: ${e.message}`));
      });
      worker.on('exit', (code) => {
        if (this.watchdog) clearTimeout(this.watchdog);
        // A worker that did not unwind (terminated, crashed) leaves its output folder locked.
        if (typeof plain.out === 'string') releaseLockOfThread(plain.out, workerThread);
        if (!settled) reject(new PeftkitError('E_INTERNAL', `training worker exited with code ${code} before finishing`));
      });
    });
  }

  /** Settles when the run ends: the result, or a PeftkitError (code E_ABORTED when stopped). */
  get result(): Promise<TrainResult> {
    this.observed = true;
    return this.settled;
  }

  /**
   * Asks the run to stop after the current step (writing a checkpoint); if it has not stopped
   * within `abortGraceMs`, its worker is terminated.
   */
  abort(): void {
    Atomics.store(this.stopFlag, 0, 1);
    if (!this.watchdog && this.terminate) {
      this.watchdog = setTimeout(() => this.terminate?.(), this.abortGraceMs);
      this.watchdog.unref();
    }
  }

  then<A = TrainResult, B = never>(onOk?: ((r: TrainResult) => A | PromiseLike<A>) | null, onErr?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this.result.then(onOk, onErr);
  }

  catch<B = never>(onErr?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<TrainResult | B> {
    return this.result.catch(onErr);
  }

  finally(onFinally?: (() => void) | null): Promise<TrainResult> {
    return this.result.finally(onFinally);
  }
}

/**
 * Fine-tunes a LoRA adapter on a Hugging Face model folder; see TrainOptions for every option.
 *
 *     const run = train({ model: 'SmolLM2-135M', data: 'train.jsonl', out: 'adapter', steps: 100 });
 *     run.on('step', (e) => console.log(e.step, e.loss));
 *     const result = await run;
 */
export function train(options: TrainRunOptions): TrainRun {
  return new TrainRun(options);
}
