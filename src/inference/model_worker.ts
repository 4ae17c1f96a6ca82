/**
 * The worker thread behind an AsyncModel (async_model.ts): it loads the model once, then runs
 * the generations it is sent one at a time, posting each token as it is sampled when asked to
 * stream. Generation is synchronous here, so a message cannot stop it: the caller cancels by
 * writing the request's id into a shared slot, which is read after every token.
 */
import { parentPort, workerData } from 'worker_threads';
import { workerErrorMessage } from '../util/worker_error';
import { loadModel, LoadOptions, Model, ModelGenerateOptions } from './model';

/** What the worker is started with. */
export interface ModelWorkerInput {
  dir: string;
  options: LoadOptions;
  /** Int32 slot 0: the id of the request to stop. */
  cancel: SharedArrayBuffer;
}

/** A message to the worker. */
export type ModelWorkerRequest =
  | { kind: 'generate'; id: number; prompt: string | number[]; options: ModelGenerateOptions; stream: boolean }
  | { kind: 'dispose' };

const { dir, options, cancel } = workerData as ModelWorkerInput;
const cancelled = new Int32Array(cancel);
const port = parentPort!;

function run(model: Model, r: Extract<ModelWorkerRequest, { kind: 'generate' }>): void {
  const it = model.stream(r.prompt, r.options, r.stream);
  for (let step = it.next(); ; step = it.next()) {
    if (step.done) return port.postMessage({ kind: 'done', id: r.id, result: step.value });
    if (Atomics.load(cancelled, 0) === r.id) {
      it.return(undefined as never); // frees the KV cache
      return port.postMessage({ kind: 'aborted', id: r.id });
    }
    if (r.stream) port.postMessage({ kind: 'piece', id: r.id, piece: step.value });
  }
}

let model: Model;
try {
  model = loadModel(dir, options);
  port.postMessage({ kind: 'ready', config: model.config, hasTokenizer: model.tokenizer !== null });
  port.on('message', (r: ModelWorkerRequest) => {
    if (r.kind === 'dispose') {
      model.dispose();
      port.close();
      return;
    }
    try {
      run(model, r);
    } catch (e) {
      port.postMessage({ kind: 'error', id: r.id, ...workerErrorMessage(e) });
    }
  });
} catch (e) {
  port.postMessage({ kind: 'error', id: 0, ...workerErrorMessage(e) });
}
