/**
 * The worker thread behind mergeAdapterAsync, quantizeModelAsync and estimateMemoryAsync: runs
 * one synchronous task by name and posts its result or its error.
 */
import { parentPort, workerData } from 'worker_threads';
import { mergeAdapter } from '../peft/merge';
import { quantizeModel } from '../quant/quantize_model';
import { estimateMemory } from '../train/estimate';
import { workerErrorMessage } from '../util/worker_error';

/** The tasks a worker can run, by name. */
export const TASKS = { merge: mergeAdapter, quantize: quantizeModel, estimate: estimateMemory };
export type TaskName = keyof typeof TASKS;

if (parentPort) {
  const { task, options } = workerData as { task: TaskName; options: never };
  try {
    parentPort.postMessage({ kind: 'result', result: TASKS[task](options) });
  } catch (e) {
    parentPort.postMessage({ kind: 'error', ...workerErrorMessage(e) });
  }
}
