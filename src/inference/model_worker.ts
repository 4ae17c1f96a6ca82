/**
 * The worker thread behind an AsyncModel (async_model.ts): it loads the model once, then runs what
 * it is sent in order — a batch of generations (one alone, or several together with
 * Model.streamBatch), or an adapter operation — posting each token as it is sampled when asked to
 * stream. Generation is synchronous here, so a message cannot stop it: the caller cancels row j of
 * a batch by writing its request id into shared slot j, which is read after every token.
 */
import { parentPort, workerData } from 'worker_threads';
import { PeftkitError } from '../errors';
import { workerErrorMessage } from '../util/worker_error';
import { BatchPiece, Generation, loadModelSync, LoadOptions, Model, ModelGenerateOptions } from './model';

/** What the worker is started with. */
export interface ModelWorkerInput {
  dir: string;
  options: LoadOptions;
  /** Int32 slot j: the id of the request in row j of the running batch to stop. */
  cancel: SharedArrayBuffer;
}

/** A message to the worker. */
export type ModelWorkerRequest =
  | { kind: 'batch'; rows: Array<{ id: number; prompt: string | number[]; options: ModelGenerateOptions; stream: boolean }> }
  | { kind: 'loadAdapter'; id: number; name: string; folder: string }
  | { kind: 'unloadAdapter'; id: number; name: string }
  | { kind: 'adapters'; id: number }
  | { kind: 'dispose' };

type Row = Extract<ModelWorkerRequest, { kind: 'batch' }>['rows'][number];

const { dir, options, cancel } = workerData as ModelWorkerInput;
const cancelled = new Int32Array(cancel);
const port = parentPort!;

/** One generation alone (the single-row path: the same tokens as Model.generate), in cancel slot `slot`. */
function runOne(model: Model, r: Row, slot: number): void {
  try {
    const it = model.stream(r.prompt, r.options, r.stream);
    for (let step = it.next(); ; step = it.next()) {
      if (step.done) return port.postMessage({ kind: 'done', id: r.id, result: step.value });
      if (Atomics.load(cancelled, slot) === r.id) {
        it.return(undefined as never); // frees the KV cache
        return port.postMessage({ kind: 'aborted', id: r.id });
      }
      if (r.stream) port.postMessage({ kind: 'piece', id: r.id, piece: step.value });
    }
  } catch (e) {
    port.postMessage({ kind: 'error', id: r.id, ...workerErrorMessage(e) });
  }
}

/**
 * Several generations as one batch. A request that the batch refuses before its first token (a
 * bad prompt or adapter, an adapter that cannot share a batch) sends the rows one at a time
 * instead, so each gets its own answer.
 */
function runBatch(model: Model, rows: Row[]): void {
  const answered = new Set<number>();
  const answer = (i: number, m: object) => {
    answered.add(i);
    port.postMessage({ id: rows[i].id, ...m });
  };
  const it = model.streamBatch(rows.map((r) => ({ ...r.options, prompt: r.prompt })), rows.some((r) => r.stream), {
    onError: (i, e) => answer(i, { kind: 'error', ...workerErrorMessage(e) }),
    isStopped: (i) => {
      if (answered.has(i) || Atomics.load(cancelled, i) !== rows[i].id) return false;
      answer(i, { kind: 'aborted' });
      return true;
    },
  });
  let step: IteratorResult<BatchPiece, unknown>;
  try {
    step = it.next();
  } catch (e) {
    if (!(e instanceof PeftkitError)) throw e;
    rows.forEach((r, i) => runOne(model, r, i));
    return;
  }
  try {
    for (; !step.done; step = it.next()) {
      const p = step.value;
      if (answered.has(p.index)) continue;
      if (rows[p.index].stream) port.postMessage({ kind: 'piece', id: rows[p.index].id, piece: { id: p.id, text: p.text } });
      if (p.generation) answer(p.index, { kind: 'done', result: p.generation });
    }
    // Rows that ended without a last piece (maxNewTokens 0).
    const results = step.value as Generation[];
    rows.forEach((_, i) => answered.has(i) || answer(i, { kind: 'done', result: results[i] }));
  } catch (e) {
    rows.forEach((_, i) => answered.has(i) || answer(i, { kind: 'error', ...workerErrorMessage(e) }));
  }
}

let model: Model;
try {
  model = loadModelSync(dir, options);
  port.postMessage({ kind: 'ready', config: model.config, hasTokenizer: model.tokenizer !== null });
  port.on('message', (r: ModelWorkerRequest) => {
    if (r.kind === 'dispose') {
      model.dispose();
      port.close();
      return;
    }
    if (r.kind === 'batch') {
      if (r.rows.length === 1) runOne(model, r.rows[0], 0);
      else runBatch(model, r.rows);
      return;
    }
    try {
      const result = r.kind === 'loadAdapter' ? model.loadAdapter(r.name, r.folder) : r.kind === 'unloadAdapter' ? model.unloadAdapter(r.name) : model.adapters();
      port.postMessage({ kind: 'done', id: r.id, result });
    } catch (e) {
      port.postMessage({ kind: 'error', id: r.id, ...workerErrorMessage(e) });
    }
  });
} catch (e) {
  port.postMessage({ kind: 'error', id: 0, ...workerErrorMessage(e) });
}
