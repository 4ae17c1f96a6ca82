/**
 * Runs the pointwise kernels (SiLU, tanh-GELU, SwiGLU, dropout) in a child process, because
 * the ISA they dispatch to is read once per process: `PEFTKIT_ISA=avx2 node pointwise_child.js
 * <seed> <n>` prints {"isa": ..., "outputs": {name: base64 f32}}. The parent regenerates the
 * same inputs from the seed with pointwiseInputs and checks the outputs.
 */
import { Tensor, ops, runtimeInfo } from '../../src/index';
import { makeRng, randn } from './check';

export const CHILD_DROPOUT = { p: 0.3, offset: 77 };

export function pointwiseInputs(seed: number, n: number): { x: Float32Array; up: Float32Array; dout: Float32Array } {
  const rng = makeRng(undefined, seed);
  const x = randn(rng, n, 3);
  [0, -0, 30, -30, 100, -100, 1e-7, -87.5, -200].forEach((v, k) => { if (k < n) x[(k * 7919) % n] = v; });
  return { x, up: randn(rng, n), dout: randn(rng, n) };
}

export function runPointwise(seed: number, n: number): Record<string, Float32Array> {
  const { x, up, dout } = pointwiseInputs(seed, n);
  const X = Tensor.from(x, [n]), U = Tensor.from(up, [n]), G = Tensor.from(dout, [n]);
  const run = (fn: (out: Tensor) => void) => {
    const out = Tensor.empty([n]);
    fn(out);
    return out.toFloat32Array();
  };
  const dgate = Tensor.empty([n]), dup = Tensor.empty([n]);
  ops.swigluBackward(dgate, dup, G, X, U);
  return {
    silu: run((o) => ops.siluForward(o, X)),
    dsilu: run((o) => ops.siluBackward(o, G, X)),
    gelu: run((o) => ops.geluForward(o, X, { approximate: 'tanh' })),
    dgelu: run((o) => ops.geluBackward(o, G, X, { approximate: 'tanh' })),
    swiglu: run((o) => ops.swigluForward(o, X, U)),
    dgate: dgate.toFloat32Array(),
    dup: dup.toFloat32Array(),
    dropout: run((o) => ops.dropoutForward(o, X, { p: CHILD_DROPOUT.p, seed, offset: CHILD_DROPOUT.offset })),
  };
}

if (require.main === module) {
  const [seed, n] = process.argv.slice(2).map(Number);
  const outputs = Object.fromEntries(
    Object.entries(runPointwise(seed, n)).map(([k, v]) => [k, Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')]),
  );
  process.stdout.write(JSON.stringify({ isa: runtimeInfo().cpuIsa, outputs }));
}
