/**
 * The worker thread that runs a training run for train(): it posts every TrainEvent, then the
 * result or the error; the caller stops it by setting a shared flag that the run polls
 * between steps (the run is synchronous, so a message would not be read until it ends).
 * In data-parallel training it first joins the process group (src/distributed).
 */
import { parentPort, workerData } from 'worker_threads';
import { workerErrorMessage } from '../util/worker_error';
import type { TrainOptions } from './options';
import { runTraining } from './run';
import { launchedRankThreads, resolveDistributed } from '../distributed/env';
import { setNumThreads } from '../runtime';
import { ProcessGroup } from '../distributed/group';
import { RankDevice, useRankCudaDevice } from '../distributed/rank_device';
import { resolveDevice } from '../tensor';

interface WorkerInput {
  options: TrainOptions;
  stop: SharedArrayBuffer;
}

const { options, stop } = workerData as WorkerInput;
const flag = new Int32Array(stop);

async function main(): Promise<void> {
  let group: ProcessGroup | undefined;
  let rankDevice: RankDevice | undefined;
  try {
    // Joined before the (synchronous) run: rank 0's store needs this thread's event loop to answer the rendezvous.
    const setup = resolveDistributed(options.distributed);
    if (setup) {
      const threads = launchedRankThreads();
      if (threads) setNumThreads(threads);
      const device = resolveDevice(options.device);
      // The rank's own GPU, before NCCL joins on it and before any tensor is made.
      if (device === 'cuda') rankDevice = useRankCudaDevice(setup.localRank);
      group = await ProcessGroup.join(setup, { device });
    }
    const result = runTraining(options, {
      onEvent: (event) => parentPort!.postMessage({ kind: 'event', event }),
      shouldStop: () => Atomics.load(flag, 0) !== 0,
      group,
      rankDevice,
    });
    await group?.close();
    parentPort!.postMessage({ kind: 'result', result });
  } catch (caught) {
    // A failed collective: ask the store which rank died, so the error names it. Then leave the
    // group telling the others why (before posting: the caller may exit the process at once).
    const raw = group ? await group.explain(caught) : caught;
    await group?.close(raw);
    parentPort!.postMessage({ kind: 'error', ...workerErrorMessage(raw) });
  }
}
void main();
