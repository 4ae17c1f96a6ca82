/**
 * Index-fault records: where a GPU kernel notes the first token id or target out of range,
 * instead of the op copying every batch's indices back to check them on the host. A training
 * step keeps one in the f64 tensor of its scalars, reads it back with its loss and gradient
 * norm (one copy a step), and raises it before the optimizer moves a weight.
 */
import { native } from '../native';
import { Tensor } from '../tensor';
import type { Device } from '../tensor';

/** Doubles in a record (native/include/peftkit/kernels.h, kIndexFaultDoubles): flag, op, position, index, limit, ignore_index. */
export const INDEX_FAULT_DOUBLES = 6;

/** An f64 tensor of {@link INDEX_FAULT_DOUBLES} values, zero while nothing was recorded. */
export type IndexFault = Tensor;

/** A clear record on `device` (zeroed). */
export function newIndexFault(device: Device): IndexFault {
  return Tensor.zeros([INDEX_FAULT_DOUBLES], { dtype: 'f64', device });
}

/**
 * Throws the `E_ARG` error a record read back to the host stands for (the words of the host
 * check, the position counted in the flattened indices); returns when it is clear.
 */
export function raiseIndexFault(record: Float64Array): void {
  native.raiseIndexFault(record);
}
