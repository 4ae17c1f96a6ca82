/**
 * The GPU a rank of a data-parallel CUDA run works on: what PyTorch users write as
 * `torch.cuda.set_device(LOCAL_RANK)`. Launchers other than ours (torchrun, Slurm, Kubernetes, a
 * user's script) show every rank all the GPUs of the machine; without a choice every rank would
 * work on device 0, and NCCL refuses two ranks on one GPU.
 */
import { PeftkitError } from '../errors';
import { native } from '../native';

/**
 * The index, among the `visible` CUDA devices, of local rank `localRank`'s GPU: the only one when
 * exactly one is visible (`peftkit train --nproc-per-node`, or a launcher that sets
 * CUDA_VISIBLE_DEVICES per rank), else device `localRank`. E_DEVICE, naming LOCAL_RANK, when no
 * device is visible or `localRank` has none of its own.
 */
export function rankCudaDevice(localRank: number, visible: number): number {
  if (visible === 1) return 0;
  if (localRank < visible) return localRank;
  if (visible === 0) throw new PeftkitError('E_DEVICE', `LOCAL_RANK ${localRank}: no CUDA device is visible to this rank`);
  throw new PeftkitError('E_DEVICE', `LOCAL_RANK ${localRank}: this rank sees ${visible} CUDA devices, so local rank ${localRank} has none of its own (NCCL refuses two ranks on one GPU); start at most ${visible} ranks on this machine, or give each rank its own GPU through CUDA_VISIBLE_DEVICES`);
}

/** The GPU a rank took, for its log. */
export interface RankDevice {
  /** Its index among the devices the rank sees. */
  index: number;
  /** How many devices the rank sees (CUDA_VISIBLE_DEVICES). */
  visible: number;
  /** Its name and PCI bus id (stable whatever CUDA_VISIBLE_DEVICES renumbers), or null where the driver does not say. */
  name: string | null;
}

/**
 * Chooses local rank `localRank`'s GPU ({@link rankCudaDevice}) and makes it the device of every
 * thread of this process that works on CUDA. Before any CUDA work of the process (which takes
 * device 0): E_DEVICE after it, unless the device is the same.
 */
export function useRankCudaDevice(localRank: number): RankDevice {
  const visible = native.runtimeInfo().cudaDeviceCount;
  const index = rankCudaDevice(localRank, visible);
  native.cudaUseDevice(index);
  return { index, visible, name: native.runtimeInfo().cudaDeviceName };
}

/** "GPU 1 of 8 visible (NVIDIA H100 80GB HBM3, PCI 0000:1B:00.0)": the device the log names. */
export function describeRankDevice(d: RankDevice): string {
  return `GPU ${d.index} of ${d.visible} visible${d.name ? ` (${d.name})` : ''}`;
}
