/**
 * Tensors whose element count or byte size overflows, made every way a tensor can be made (the
 * public constructors, the addon's constructor called directly, views), each passed to ops that
 * index by element count. Run in a child process because the failure this guards against is a
 * segfault or a read of heap garbage. Prints one JSON line per case: {case, code} where code is
 * the PeftkitError's code, 'ok' when nothing threw, or 'other: ...' for any other exception.
 */
import { PeftkitError, Tensor, ops } from '../../src/index';
import { native } from '../../src/native';

/** Shapes whose element count (or byte size as f32) does not fit 2^53, the largest exact JS integer. */
export const HUGE_SHAPES: number[][] = [
  [2 ** 62, 4], // 2^64 elements: wraps to 0 in int64
  [2 ** 32, 2 ** 32], // 2^64 as well, from two moderate dimensions
  [2 ** 61, 2 ** 2, 3], // wraps to a small non-zero count
  [2 ** 51, 4], // 2^53 elements fit, 2^55 bytes as f32 do not
  [2 ** 62, 4, 0], // zero elements, but the leading dimensions' product still overflows
  [2 ** 63], // one dimension past int64
];

const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);

function attempt(name: string, fn: () => unknown): void {
  let code: string;
  try {
    fn();
    code = 'ok';
  } catch (e) {
    code = e instanceof PeftkitError ? e.code : `other: ${String(e)}`;
  }
  say({ case: name, code });
}

/** Leading dimensions that, with a last dimension of 4, overflow (R·4 elements or bytes). */
export const HUGE_ROWS: number[] = [2 ** 62, 2 ** 61 * 3, 2 ** 51, 2 ** 63];

if (require.main === module) {
  const small = Tensor.zeros([64]);
  const wrap = (n: unknown) => Object.assign(Object.create(Tensor.prototype), { native: n }) as Tensor;
  type Make = (s: number[], dtype?: 'f32' | 'i32') => Tensor;
  const makers: Record<string, Make> = {
    empty: (s, dtype) => Tensor.empty(s, { dtype }),
    mapped: (s, dtype) => Tensor.mapped(s, { dtype }),
    // The addon's own checks, with the TypeScript ones bypassed.
    native: (s, dtype = 'f32') => {
      const T = native.NativeTensor as unknown as new (shape: number[], dtype: string, device: string) => unknown;
      return wrap(new T(s, dtype, 'cpu'));
    },
    view: (s, dtype = 'f32') => (dtype === 'f32' ? small : Tensor.zeros([64], { dtype })).view(0, s),
    nativeView: (s, dtype = 'f32') => wrap((dtype === 'f32' ? small : Tensor.zeros([64], { dtype })).native.view(0, s)),
  };
  for (const [how, make] of Object.entries(makers)) {
    for (const s of HUGE_SHAPES) attempt(`${how}[${s.join(',')}] create`, () => make(s));
    // Ops over rows of 4: every operand sized by the rows is made the same way; the rest are small.
    for (const R of HUGE_ROWS) {
      const tag = `${how} rows ${R}`;
      attempt(`${tag} rmsnormForward`, () => {
        const x = make([R, 4]);
        ops.rmsnormForward(x, make([R]), x, Tensor.zeros([4]));
      });
      attempt(`${tag} gemm`, () => ops.gemm(make([R, 4]), make([R, 4]), Tensor.zeros([4, 4])));
      attempt(`${tag} attentionForward`, () => {
        const q = make([1, R, 1, 4]);
        ops.attentionForward(q, make([1, 1, R]), q, q, q);
      });
      attempt(`${tag} embeddingForward`, () => ops.embeddingForward(make([R, 4]), make([R], 'i32'), Tensor.zeros([4, 4])));
      attempt(`${tag} embeddingForward table`, () => {
        ops.embeddingForward(Tensor.zeros([1, 4]), Tensor.zeros([1], { dtype: 'i32' }), make([R, 4]));
      });
    }
  }
  say({ done: true });
}
