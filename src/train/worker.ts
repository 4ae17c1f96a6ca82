/**
 * The worker thread that runs a training run for train(): it posts every TrainEvent, then the
 * result or the error; the caller stops it by setting a shared flag that the run polls
 * between steps (the run is synchronous, so a message would not be read until it ends).
 */
import { parentPort, workerData } from 'worker_threads';
import { workerErrorMessage } from '../util/worker_error';
import type { TrainOptions } from './options';
import { runTraining } from './run';

interface WorkerInput {
  options: TrainOptions;
  stop: SharedArrayBuffer;
}

const { options, stop } = workerData as WorkerInput;
const flag = new Int32Array(stop);
try {
  const result = runTraining(options, {
    onEvent: (event) => parentPort!.postMessage({ kind: 'event', event }),
    shouldStop: () => Atomics.load(flag, 0) !== 0,
  });
  parentPort!.postMessage({ kind: 'result', result });
} catch (raw) {
  parentPort!.postMessage({ kind: 'error', ...workerErrorMessage(raw) });
}
