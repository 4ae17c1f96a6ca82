/**
 * mergeAdapter / quantizeModel / estimateMemoryAsync: mergeAdapterSync, quantizeModelSync and
 * estimateMemory in a worker thread of their own, so the caller's event loop stays free while
 * they read, tokenize, compute and write.
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { PeftkitError } from '../errors';
import type { MergeOptions, MergeResult } from '../peft/merge';
import type { QuantizeModelOptions, QuantizeModelResult } from '../quant/quantize_model';
import type { EstimateOptions, MemoryReport } from '../train/estimate';
import { workerError, WorkerErrorMessage } from '../util/worker_error';
import type { TaskName } from './task_worker';

/** Runs `task` in a one-shot worker; `signal` (read-only tasks only) terminates the worker. */
function runTask<R>(task: TaskName, options: unknown, signal?: AbortSignal): Promise<R> {
  const aborted = () => new PeftkitError('E_ABORTED', `${task}: aborted by its AbortSignal`);
  if (signal?.aborted) return Promise.reject(aborted());
  return new Promise((resolve, reject) => {
    let worker: Worker;
    try {
      worker = new Worker(path.join(__dirname, 'task_worker.js'), { workerData: { task, options } });
    } catch (e) {
      return reject(new PeftkitError('E_ARG', `${task}: the options cannot be sent to a worker: ${(e as Error).message}`));
    }
    const onAbort = () => {
      reject(aborted());
      void worker.terminate();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.once('exit', () => signal?.removeEventListener('abort', onAbort));
    worker.once('message', (m: { kind: 'result'; result: R } | ({ kind: 'error' } & WorkerErrorMessage)) => {
      if (m.kind === 'result') resolve(m.result);
      else reject(workerError(m, `${task} failed`));
    });
    worker.once('error', (e) => reject(new PeftkitError('E_INTERNAL', `${task} worker crashed: ${e.message}`)));
    worker.once('exit', (code) => reject(new PeftkitError('E_INTERNAL', `${task} worker exited with code ${code} before finishing`))); // a no-op once settled
  });
}

/**
 * mergeAdapterSync in a worker thread: resolves with the same MergeResult, rejects with the same
 * PeftkitError codes, and never blocks the caller's event loop (mergeAdapterSync does).
 */
export function mergeAdapter(o: MergeOptions): Promise<MergeResult> {
  return runTask('merge', o);
}

/**
 * quantizeModelSync in a worker thread: resolves with the same QuantizeModelResult, rejects with
 * the same PeftkitError codes, and never blocks the caller's event loop (quantizeModelSync does).
 */
export function quantizeModel(o: QuantizeModelOptions): Promise<QuantizeModelResult> {
  return runTask('quantize', o);
}

/**
 * estimateMemory in a worker thread: the same MemoryReport, without blocking the caller's event
 * loop while the data is read and tokenized to find its longest row (estimateMemory does). When
 * `signal` fires, the worker is terminated and the promise rejects with E_ABORTED (the estimate
 * only reads, so nothing is left half-written). Defaults to no signal.
 */
export function estimateMemoryAsync(o: EstimateOptions, { signal }: { signal?: AbortSignal } = {}): Promise<MemoryReport> {
  return runTask('estimate', o, signal);
}
