/**
 * Elementwise activations on the host, for the small tensors of some methods (a bottleneck's
 * [rows, hidden / reduction], an encoder's [n, h]): the engine has no relu or tanh kernel, and
 * these never touch the model's activations.
 */
import type { Tensor } from '../tensor';

export function relu(out: Tensor, x: Tensor): void {
  out.write(x.toFloat32Array().map((v) => (v > 0 ? v : 0)));
}

/** dx = dy where x > 0, else 0. */
export function reluBackward(dx: Tensor, dy: Tensor, x: Tensor): void {
  const xv = x.toFloat32Array();
  dx.write(dy.toFloat32Array().map((g, i) => (xv[i] > 0 ? g : 0)));
}
