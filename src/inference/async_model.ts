/**
 * loadModel(): a model that lives in a worker thread, so loading it and generating from it
 * never block the caller's event loop. Requests are served in the order they were asked for;
 * generations waiting together (asked while the worker was busy, or in the same tick) run as one
 * batch, each row with its own options and adapter (Model.streamBatch). Each can be awaited whole
 * (generate) or read token by token (stream), and stopped by an AbortSignal.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { PeftkitError } from '../errors';
import type { ModelConfig } from '../model/config';
import { workerError, WorkerErrorMessage } from '../util/worker_error';
import type { AdapterInfo, Generation, GenerationPiece, LoadOptions, ModelGenerateOptions } from './model';
import type { ModelWorkerInput, ModelWorkerRequest } from './model_worker';
import { PieceChannel } from './piece_channel';

export interface AsyncLoadOptions extends LoadOptions {
  /**
   * The most generations run as one batch: requests waiting while a batch runs (or asked in the
   * same tick) are gathered, up to this many, into the next one. 1 runs them one at a time.
   * Defaults to `8` (DEFAULT_MAX_BATCH_SIZE).
   */
  maxBatchSize?: number;
}

export const DEFAULT_MAX_BATCH_SIZE = 8;

export interface AsyncGenerateOptions extends Omit<ModelGenerateOptions, 'adapter'> {
  /**
   * The name of an adapter loaded with AsyncModel.loadAdapter, else a PEFT adapter folder (read
   * once in the worker, and again when its files change). A loaded adapter object cannot cross
   * into the worker: use Model.generate for those. Defaults to none.
   */
  adapter?: string | null;
  /** Stops the generation: see AsyncModel.generate and AsyncModel.stream. Defaults to none. */
  signal?: AbortSignal;
}

type WorkerMessage =
  | { kind: 'ready'; config: ModelConfig; hasTokenizer: boolean }
  | { kind: 'piece'; id: number; piece: GenerationPiece }
  | { kind: 'done'; id: number; result: unknown }
  | { kind: 'aborted'; id: number }
  | ({ kind: 'error'; id: number } & WorkerErrorMessage);

type GenerateRow = Extract<ModelWorkerRequest, { kind: 'batch' }>['rows'][number];
type Control = Extract<ModelWorkerRequest, { kind: 'loadAdapter' | 'unloadAdapter' | 'adapters' }>;

/** A queued or running request: a generation (a row of the next batch) or an adapter operation. */
interface Request {
  id: number;
  message: { kind: 'generate'; row: GenerateRow } | Control;
  onPiece: ((p: GenerationPiece) => void) | null;
  resolve: (v: never) => void;
  reject: (e: PeftkitError) => void;
  /** The caller has its answer (a result, an error, or E_ABORTED at once on abort). */
  settled: boolean;
  cleanup: () => void;
  /** Its row in the running batch: the cancel slot the worker reads. */
  slot?: number;
}

const aborted = () => new PeftkitError('E_ABORTED', 'generate: aborted by its AbortSignal');

/** Why a request is refused before it is queued, or null. */
function refusal(adapter: unknown, signal: unknown): PeftkitError | null {
  if (adapter != null && typeof adapter !== 'string') {
    return new PeftkitError('E_ARG', 'generate: adapter: an AsyncModel takes an adapter folder (a string); a loaded adapter object stays on its thread (use Model.generate)');
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) return new PeftkitError('E_ARG', 'generate: signal: expected an AbortSignal');
  return signal?.aborted ? aborted() : null;
}

/** The worker of an AsyncModel dropped without dispose() is told to free the model and exit. */
const abandoned = new FinalizationRegistry<Worker>((worker) => worker.postMessage({ kind: 'dispose' } satisfies ModelWorkerRequest));
/** Models with a generation queued or running stay reachable (their callers wait on them) until it ends. */
const busy = new Set<AsyncModel>();
let workersAlive = 0;

/** @internal Model workers started and not yet exited (for tests). */
export function modelWorkersAlive(): number {
  return workersAlive;
}

/**
 * A model loaded by loadModel: it lives in a worker thread until dispose() (or, for a model
 * dropped without it, until the garbage collector has collected the handle).
 */
export class AsyncModel {
  /** The model folder. */
  readonly dir: string;
  /** The folder's config.json, parsed. */
  readonly config: ModelConfig;
  /** Whether the folder has a tokenizer (text prompts and the `text` of results need one). */
  readonly hasTokenizer: boolean;
  /** The most generations run as one batch (AsyncLoadOptions.maxBatchSize). */
  readonly maxBatchSize: number;
  private readonly worker: Worker;
  private readonly cancelled: Int32Array;
  private readonly queue: Request[] = [];
  /** What the worker is running: one batch of generations, or one adapter operation. */
  private readonly current = new Map<number, Request>();
  private pumpScheduled = false;
  private nextId = 1;
  private dead: PeftkitError | null = null;
  private exited: Promise<void>;

  /** @internal Use loadModel. */
  constructor(dir: string, worker: Worker, cancelled: Int32Array, ready: Extract<WorkerMessage, { kind: 'ready' }>, exited: Promise<void>) {
    this.dir = dir;
    this.worker = worker;
    this.cancelled = cancelled;
    this.maxBatchSize = cancelled.length;
    this.config = ready.config;
    this.hasTokenizer = ready.hasTokenizer;
    this.exited = exited;
    // The worker's listeners hold the model weakly, so that a model nobody holds is collected
    // and its worker ended by `abandoned`.
    const self = new WeakRef(this);
    worker.on('message', (m: WorkerMessage) => self.deref()?.onMessage(m));
    worker.on('error', (e) => self.deref()?.fail(new PeftkitError('E_INTERNAL', `model worker crashed: ${e.message}`)));
    worker.on('exit', (code) => self.deref()?.fail(new PeftkitError('E_INTERNAL', `model worker exited with code ${code}`)));
    abandoned.register(this, worker, this);
    worker.unref(); // an idle model does not keep the process alive
  }

  /**
   * Continues a prompt (text, or token ids) in the worker and resolves with the whole
   * Generation: the same tokens as the synchronous Model.generate with the same options. When
   * `signal` aborts, the promise rejects at once with PeftkitError E_ABORTED and the worker stops
   * after the token it is computing. Errors reject with the codes Model.generate throws.
   */
  generate(prompt: string | readonly number[], o: AsyncGenerateOptions = {}): Promise<Generation> {
    return new Promise((resolve, reject) => this.submit(prompt, o, null, resolve, reject));
  }

  /**
   * Generates every request together (Model.generateBatch in the worker, in batches of at most
   * maxBatchSize): each with its own options, adapter (a name or a folder) and `signal`. Resolves
   * with the Generations in request order, or rejects with the first request's error (the others
   * run on). Requests whose adapters cannot share a batch (LN tuning, full fine-tuning,
   * modules_to_save) run one at a time instead.
   */
  generateBatch(requests: ReadonlyArray<AsyncGenerateOptions & { prompt: string | readonly number[] }>): Promise<Generation[]> {
    if (!Array.isArray(requests) || requests.length === 0) return Promise.reject(new PeftkitError('E_ARG', 'generateBatch: requests: expected a non-empty array of { prompt, ...options }'));
    return Promise.all(requests.map(({ prompt, ...o }) => this.generate(prompt, o)));
  }

  /**
   * Loads an adapter folder in the worker under `name` (Model.loadAdapter): generate(..., { adapter:
   * name }) then uses it, without reloading the base. Runs in queue order, after the requests
   * asked before it. Rejects with E_ARG when the name is taken, or what loading the folder throws.
   */
  loadAdapter(name: string, folder: string): Promise<void> {
    return this.control({ kind: 'loadAdapter', id: 0, name, folder });
  }

  /** Frees the adapter `name` in the worker (Model.unloadAdapter); rejects with E_ARG when none has that name. */
  unloadAdapter(name: string): Promise<void> {
    return this.control({ kind: 'unloadAdapter', id: 0, name });
  }

  /** The adapters loaded by name (Model.adapters). */
  adapters(): Promise<AdapterInfo[]> {
    return this.control({ kind: 'adapters', id: 0 });
  }

  private control<T>(message: Control): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.dead) return reject(this.dead);
      for (const key of ['name', 'folder'] as const) {
        if (key in message && typeof (message as Record<string, unknown>)[key] !== 'string') {
          return reject(new PeftkitError('E_ARG', `${message.kind}: ${key}: expected a string, got ${typeof (message as Record<string, unknown>)[key]}`));
        }
      }
      const id = this.nextId++;
      this.queue.push({ id, message: { ...message, id }, onPiece: null, resolve: resolve as (v: never) => void, reject, settled: false, cleanup: () => {} });
      this.schedulePump();
    });
  }

  /**
   * generate() token by token: an async iterator of GenerationPiece (`{ id, text }`), each
   * yielded as soon as the worker has sampled it. Generation starts at once; tokens not read
   * yet wait in memory. When `signal` aborts, the iterator throws PeftkitError E_ABORTED
   * (after the pieces already received) and the worker stops after its current token; leaving
   * the loop early (`break`, `return()`) stops it too, without an error. A failure is thrown
   * from the iterator with the code Model.generate throws.
   */
  stream(prompt: string | readonly number[], o: AsyncGenerateOptions = {}): AsyncIterableIterator<GenerationPiece> {
    let request: Request | null = null;
    const channel = new PieceChannel<GenerationPiece>(() => request && this.cancel(request, null));
    request = this.submit(prompt, o, (p) => channel.push(p), () => channel.end(), (e) => channel.fail(e));
    return channel;
  }

  private submit(prompt: string | readonly number[], o: AsyncGenerateOptions, onPiece: Request['onPiece'], resolve: Request['resolve'], reject: Request['reject']): Request | null {
    const { signal, ...options } = o;
    const refused = this.dead ?? refusal(options.adapter, signal);
    if (refused) {
      reject(refused);
      return null;
    }
    const id = this.nextId++;
    const row: GenerateRow = { id, prompt: typeof prompt === 'string' ? prompt : [...prompt], options, stream: onPiece !== null };
    try {
      structuredClone(row); // refused here, not in a batch with other requests
    } catch (e) {
      reject(new PeftkitError('E_ARG', `generate: the options cannot be sent to the model's worker: ${(e as Error).message}`));
      return null;
    }
    const onAbort = () => this.cancel(r, aborted());
    const r: Request = {
      id,
      message: { kind: 'generate', row },
      onPiece,
      resolve: resolve as (v: never) => void,
      reject,
      settled: false,
      cleanup: () => signal?.removeEventListener('abort', onAbort),
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    this.queue.push(r);
    this.schedulePump();
    return r;
  }

  /** Settles `r` with `error` (or quietly when null) now, and stops it in the worker. */
  private cancel(r: Request, error: PeftkitError | null): void {
    const queued = this.queue.indexOf(r);
    if (queued >= 0) this.queue.splice(queued, 1);
    else if (this.current.get(r.id) === r && r.slot !== undefined) Atomics.store(this.cancelled, r.slot, r.id);
    this.settle(r, () => (error ? r.reject(error) : r.resolve({ text: '', ids: [] } as never)));
  }

  private settle(r: Request, how: () => void): void {
    if (r.settled) return;
    r.settled = true;
    r.cleanup();
    how();
  }

  /** Pumps once the current tick's requests are queued, so that they can share a batch. */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    busy.add(this); // reachable until pumped, though the caller may drop the handle
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Sends the next work when the worker is idle: an adapter operation alone, or up to maxBatchSize generations in a row. */
  private pump(): void {
    if (this.current.size > 0 || this.dead) return;
    const next = this.queue[0];
    if (!next) {
      busy.delete(this);
      return void this.worker.unref();
    }
    let message: ModelWorkerRequest;
    if (next.message.kind !== 'generate') {
      this.queue.shift();
      this.current.set(next.id, next);
      message = next.message;
    } else {
      const rows: GenerateRow[] = [];
      while (rows.length < this.maxBatchSize && this.queue[0]?.message.kind === 'generate') {
        const r = this.queue.shift()!;
        r.slot = rows.length;
        Atomics.store(this.cancelled, r.slot, 0);
        this.current.set(r.id, r);
        rows.push((r.message as { row: GenerateRow }).row);
      }
      message = { kind: 'batch', rows };
    }
    busy.add(this);
    this.worker.ref();
    this.worker.postMessage(message);
  }

  private onMessage(m: WorkerMessage): void {
    const r = m.kind === 'ready' ? undefined : this.current.get(m.id);
    if (m.kind === 'ready' || !r) return;
    if (m.kind === 'piece') {
      if (!r.settled) r.onPiece?.(m.piece);
      return;
    }
    this.current.delete(m.id);
    if (m.kind === 'done') this.settle(r, () => r.resolve(m.result as never));
    else if (m.kind === 'error') this.settle(r, () => r.reject(workerError(m, r.message.kind === 'generate' ? 'generate failed' : `${r.message.kind} failed`)));
    else this.settle(r, () => r.reject(aborted())); // only after cancel(), which settled it already
    this.pump();
  }

  /** The worker is gone: every request fails with `e`, and so does every later one. */
  private fail(e: PeftkitError): void {
    this.dead ??= e;
    for (const r of [...this.current.values(), ...this.queue.splice(0)]) this.settle(r, () => r.reject(this.dead!));
    this.current.clear();
    busy.delete(this);
  }

  /**
   * Stops the worker and frees the model: generations still queued or running reject with
   * PeftkitError E_DISPOSED (a running one stops after its current token). Resolves when the
   * worker has exited. Later calls reject with E_DISPOSED.
   */
  dispose(): Promise<void> {
    if (!this.dead) {
      for (const r of this.current.values()) if (r.slot !== undefined) Atomics.store(this.cancelled, r.slot, r.id);
      abandoned.unregister(this);
      this.fail(new PeftkitError('E_DISPOSED', `the model ${this.dir} has been disposed`));
      this.worker.ref();
      this.worker.postMessage({ kind: 'dispose' } satisfies ModelWorkerRequest);
    }
    return this.exited;
  }
}

/**
 * Loads a model folder, as loadModelSync does, in a worker thread of its own: the caller's event
 * loop stays free while the weights are read (loadModelSync blocks it). Resolves when the model is
 * ready; rejects with the PeftkitError loadModelSync would throw. The model keeps its worker (and
 * its memory) until dispose(); an idle one does not keep the process alive.
 */
export function loadModel(dir: string, o: AsyncLoadOptions = {}): Promise<AsyncModel> {
  const { maxBatchSize = DEFAULT_MAX_BATCH_SIZE, ...options } = o ?? {};
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > 1024) {
    return Promise.reject(new PeftkitError('E_ARG', `loadModel: maxBatchSize: expected an integer from 1 to 1024, got ${JSON.stringify(maxBatchSize)}`));
  }
  // One cancel slot per row of a batch.
  const cancel = new SharedArrayBuffer(4 * maxBatchSize);
  let worker: Worker;
  try {
    worker = new Worker(path.join(__dirname, 'model_worker.js'), { workerData: { dir, options, cancel } satisfies ModelWorkerInput });
  } catch (e) {
    return Promise.reject(new PeftkitError('E_ARG', `loadModel: the options cannot be sent to a worker: ${(e as Error).message}`));
  }
  workersAlive++;
  const exited = new Promise<void>((resolve) =>
    worker.once('exit', () => {
      workersAlive--;
      resolve();
    }),
  );
  return new Promise((resolve, reject) => {
    // Every listener goes once the load settles: one left behind would hold this promise, and
    // through it the model, which must stay collectable (see `abandoned`).
    const settle = (how: () => void) => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      worker.off('exit', onExit);
      how();
    };
    const onMessage = (m: WorkerMessage) => {
      if (m.kind === 'ready') return settle(() => resolve(new AsyncModel(path.resolve(dir), worker, new Int32Array(cancel), m, exited)));
      settle(() => reject(m.kind === 'error' ? workerError(m, 'loading the model failed') : new PeftkitError('E_INTERNAL', `model worker: unexpected ${m.kind}`)));
      void worker.terminate();
    };
    const onError = (e: Error) => settle(() => reject(new PeftkitError('E_INTERNAL', `model worker crashed while loading: ${e.message}`)));
    const onExit = (code: number) => settle(() => reject(new PeftkitError('E_INTERNAL', `model worker exited with code ${code} while loading`)));
    worker.on('message', onMessage);
    worker.on('error', onError);
    worker.on('exit', onExit);
  });
}
