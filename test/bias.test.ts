import test from 'ava';
import { Tensor, PeftkitError, ops } from '../src/index';
import { assertClose, devices, makeRng, randn } from './helpers/check';

for (const device of devices()) {
  test(`${device}: bias add and its gradient match float64`, (t) => {
    const rng = makeRng(t);
    for (const [N, C] of [[1, 1], [7, 3], [33, 129], [2, 200]]) {
      const y0 = randn(rng, N * C), b = randn(rng, C), db0 = randn(rng, C);
      const y = Tensor.from(y0, [N, C], { device }), bias = Tensor.from(b, [C], { device });
      ops.biasAdd(y, bias);
      assertClose(t, y.toFloat32Array(), Float64Array.from(y0, (v, i) => v + b[i % C]), 1e-6, `add N=${N} C=${C}`);
      const dy = randn(rng, N * C);
      const db = Tensor.from(db0, [C], { device });
      ops.biasBackward(db, Tensor.from(dy, [N, C], { device }));
      const want = Float64Array.from(db0);
      for (let i = 0; i < N * C; i++) want[i % C] += dy[i];
      assertClose(t, db.toFloat32Array(), want, 1e-5, `grad N=${N} C=${C}`);
    }
  });
}

test('bias with the wrong length is an E_SHAPE error', (t) => {
  const e = t.throws(() => ops.biasAdd(Tensor.zeros([2, 3]), Tensor.zeros([4])), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /bias length 4/);
});
