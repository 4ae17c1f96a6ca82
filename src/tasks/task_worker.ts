/**
 * The worker thread behind mergeAdapter, quantizeModel and estimateMemoryAsync: runs
 * one synchronous task by name and posts its result or its error.
 */
import { parentPort, workerData } from 'worker_threads';
import { mergeAdapterSync } from '../peft/merge';
import { quantizeModelSync } from '../quant/quantize_model';
import { estimateMemory } from '../train/estimate';
import { workerErrorMessage } from '../util/worker_error';

/** The tasks a worker can run, by name. */
export const TASKS = { merge: mergeAdapterSync, quantize: quantizeModelSync, estimate: estimateMemory };
export type TaskName = keyof typeof TASKS;

if (parentPort) {
  const { task, options } = workerData as { task: TaskName; options: never };
  try {
    parentPort.postMessage({ kind: 'result', result: TASKS[task](options) });
  } catch (e) {
    parentPort.postMessage({ kind: 'error', ...workerErrorMessage(e) });
  }
}
