/**
 * Runs the CPU cross-entropy in a child process, because the ISA its softmax passes dispatch to
 * is read once per process: `PEFTKIT_ISA=avx2 node cross_entropy_child.js <seed>` prints
 * {"isa": ..., "cases": [{losses, grad}: base64 f32]}. The parent regenerates the same inputs
 * from the seed with crossEntropyInputs and checks the outputs.
 */
import { Tensor, ops, runtimeInfo } from '../../src/index';
import { makeRng, randn } from './check';

export const CE_CHILD_IGNORE = -100;

export interface CrossEntropyInput {
  N: number;
  V: number;
  logits: Float32Array;
  targets: Int32Array;
  scale: number;
}

/** Rows of V not a multiple of 16, V across the 1024-term partial sums, one row, and large logits. */
export function crossEntropyInputs(seed: number): CrossEntropyInput[] {
  const rng = makeRng(undefined, seed);
  return ([[1, 1, 1], [5, 7, 3], [3, 1025, 2], [4, 4099, 5], [2, 2051, 3000]] as const).map(([N, V, spread]) => {
    const logits = randn(rng, N * V, spread);
    const targets = Int32Array.from({ length: N }, (_, n) => (n > 0 && rng.next() < 0.3 ? CE_CHILD_IGNORE : rng.int(0, V)));
    return { N, V, logits, targets, scale: 1 / N };
  });
}

export function runCrossEntropy(seed: number): Array<{ losses: Float32Array; grad: Float32Array; lossOnly: Float32Array }> {
  return crossEntropyInputs(seed).map(({ N, V, logits, targets, scale }) => {
    const X = Tensor.from(logits, [N, V]), T = Tensor.from(targets, [N]);
    const losses = Tensor.empty([N]), lossOnly = Tensor.empty([N]);
    ops.crossEntropy(lossOnly, null, X, T, { ignoreIndex: CE_CHILD_IGNORE });
    ops.crossEntropy(losses, X, X, T, { ignoreIndex: CE_CHILD_IGNORE, gradScale: scale });  // in place
    return { losses: losses.toFloat32Array(), grad: X.toFloat32Array(), lossOnly: lossOnly.toFloat32Array() };
  });
}

if (require.main === module) {
  const seed = Number(process.argv[2]);
  const b64 = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  const cases = runCrossEntropy(seed).map((c) => ({ losses: b64(c.losses), grad: b64(c.grad), lossOnly: b64(c.lossOnly) }));
  process.stdout.write(JSON.stringify({ isa: runtimeInfo().cpuIsa, cases }));
}
