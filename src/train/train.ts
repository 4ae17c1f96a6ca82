/**
 * train(): LoRA fine-tuning in a worker thread. The returned TrainRun is awaitable for the
 * result, emits 'start' / 'step' / 'eval' / 'checkpoint' events, and stops (after writing a
 * checkpoint it can resume from) when its AbortSignal fires or abort() is called.
 */
import { EventEmitter } from 'events';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { PeftkitError } from '../errors';
import { releaseLockOfThread } from '../io/lock';
import type { TrainOptions } from './options';
import { resolveTrainOptions } from './options';
import type { TrainEvent, TrainResult } from './run';

export interface TrainRunOptions extends TrainOptions {
  /** Stops the run between steps (a checkpoint is written first). */
  signal?: AbortSignal;
}

type Listener<T extends TrainEvent['type']> = (e: Extract<TrainEvent, { type: T }>) => void;

export class TrainRun extends EventEmitter implements PromiseLike<TrainResult> {
  /** Settles when the run ends: the result, or a PeftkitError (code E_ABORTED when stopped). */
  readonly result: Promise<TrainResult>;
  private readonly stopFlag: Int32Array;

  constructor(options: TrainRunOptions) {
    super();
    const { signal, ...plain } = options;
    resolveTrainOptions(plain); // bad options fail here, in the caller's stack
    const shared = new SharedArrayBuffer(4);
    this.stopFlag = new Int32Array(shared);
    // An already aborted signal stops the run before it starts, as fetch() does: no model is
    // loaded and nothing is written.
    if (signal?.aborted) {
      this.result = Promise.reject(new PeftkitError('E_ABORTED', 'training aborted before it started (the AbortSignal was already aborted)'));
      this.result.catch(() => {});
      return;
    }
    const worker = new Worker(path.join(__dirname, 'worker.js'), { workerData: { options: plain, stop: shared } });
    const workerThread = worker.threadId; // -1 once it has exited
    signal?.addEventListener('abort', () => this.abort(), { once: true });
    this.result = new Promise<TrainResult>((resolve, reject) => {
      let settled = false;
      worker.on('message', (m: { kind: string; event?: TrainEvent; result?: TrainResult; code?: string; message?: string; errno?: string; path?: string; syscall?: string }) => {
        if (m.kind === 'event' && m.event) this.emit(m.event.type, m.event);
        else if (m.kind === 'result') {
          settled = true;
          resolve(m.result!);
        } else if (m.kind === 'error') {
          settled = true;
          reject(new PeftkitError(m.code ?? 'E_INTERNAL', m.message ?? 'training failed', { errno: m.errno, path: m.path, syscall: m.syscall }));
        }
      });
      worker.on('error', (e) => {
        settled = true;
        reject(new PeftkitError('E_INTERNAL', `training worker crashed: ${e.message}`));
      });
      worker.on('exit', (code) => {
        // A worker that did not unwind (terminated, crashed) leaves its output folder locked.
        if (typeof plain.out === 'string') releaseLockOfThread(plain.out, workerThread);
        if (!settled) reject(new PeftkitError('E_INTERNAL', `training worker exited with code ${code} before finishing`));
      });
    });
    this.result.catch(() => {}); // the caller decides whether to await; no unhandled rejection
  }

  /** Asks the run to stop after the current step. */
  abort(): void {
    Atomics.store(this.stopFlag, 0, 1);
  }

  then<A = TrainResult, B = never>(onOk?: ((r: TrainResult) => A | PromiseLike<A>) | null, onErr?: ((e: unknown) => B | PromiseLike<B>) | null): Promise<A | B> {
    return this.result.then(onOk, onErr);
  }

  override on<T extends TrainEvent['type']>(event: T, listener: Listener<T>): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    return super.on(event, listener);
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
