import { native } from '../native';
import { Tensor } from '../tensor';

/** `y[..., C] += bias[C]` for every row. */
export function biasAdd(y: Tensor, bias: Tensor): void {
  native.biasAdd(y.native, bias.native);
}

/** `dbias[C] += Σ_rows dy[..., C]` (accumulates, like every parameter gradient). */
export function biasBackward(dbias: Tensor, dy: Tensor): void {
  native.biasBackward(dbias.native, dy.native);
}
