import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, PeftkitError, ops } from '../src/index';
import { assertClose, devices, makeRng, poisoned, randn, relErr, roundBf16 } from './helpers/check';
import type { Rng } from './helpers/check';

const prod = (s: number[]): number => s.reduce((a, b) => a * b, 1);

function expectCode(t: ExecutionContext, fn: () => unknown, code: string, message?: RegExp): void {
  const e = t.throws(fn, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  if (message && e) t.regex(e.message, message);
}

// Shapes [..., C] of x: one row, one column, odd widths, many rows (several row chunks of the
// CPU's ds pass from 1024 rows on), 3-D and 4-D leading shapes.
const SHAPES: number[][] = [[1, 1], [1, 37], [5, 1], [2, 37], [1000, 513], [3, 7, 37], [2, 3, 5, 129], [5000, 37], [3, 1500, 19]];

// ds and the row norms are double sums rounded to f32 once: within half an f32 ulp (2^-24 ≈
// 6e-8 relative) of the float64 reference. Measured over 200 seeds of the shapes below: ds up to
// 5.6e-8, a norm up to 5.9e-8. An f32 running sum over the 1e6-row case gives ~5e-7.
const TOL = 1e-7;

// ---- float64 references ------------------------------------------------------------------------

/** f32(x·s): the product of two f32 values is exact in float64, so this is the correctly rounded f32 product. */
function refMulCols(x: Float32Array, s: Float32Array): Float32Array {
  const C = s.length;
  return Float32Array.from(x, (v, i) => v * s[i % C]);
}

/** ds0 + Σ_rows dy·x in float64. */
function refDs(ds0: Float32Array | null, dy: Float32Array, x: Float32Array, C: number): Float64Array {
  const ds = ds0 ? Float64Array.from(ds0) : new Float64Array(C);
  for (let i = 0; i < dy.length; i++) ds[i % C] += dy[i] * x[i];
  return ds;
}

function refRowNorms(w: Float32Array, R: number, C: number): Float64Array {
  const out = new Float64Array(R);
  for (let r = 0; r < R; r++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += w[r * C + c] * w[r * C + c];
    out[r] = Math.sqrt(ss);
  }
  return out;
}

function firstDiff(a: Float32Array, b: ArrayLike<number>): string {
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return `element ${i}: ${a[i]} != ${b[i]}`;
  return 'equal';
}

/** Bit-exact equality (f32 products are correctly rounded on every device). */
function assertSame(t: ExecutionContext, actual: Float32Array, want: Float32Array, what: string): void {
  t.true(actual.length === want.length && firstDiff(actual, want) === 'equal', `${what}: ${firstDiff(actual, want)}`);
}

/** The worst relative error seen per check, logged once per test so tolerances can follow what is measured. */
function tracker(t: ExecutionContext) {
  const worst: Record<string, number> = {};
  return {
    close(actual: Float32Array, want: ArrayLike<number>, tol: number, what: string, key: string) {
      worst[key] = Math.max(worst[key] ?? 0, relErr(actual, want));
      assertClose(t, actual, want, tol, what);
    },
    log() {
      t.log(Object.entries(worst).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', '));
    },
  };
}

function inputs(rng: Rng, shape: number[]) {
  const C = shape[shape.length - 1], n = prod(shape);
  return { C, n, x: randn(rng, n), s: randn(rng, C), dy: randn(rng, n), ds0: randn(rng, C) };
}

for (const device of devices()) {
  const from = (a: Float32Array, shape: number[]) => Tensor.from(a, shape, { device });

  test(`${device}: mulCols is x·s rounded once, out of place and in place`, (t) => {
    const rng = makeRng(t);
    for (const shape of SHAPES) {
      const { C, x, s } = inputs(rng, shape);
      const want = refMulCols(x, s);
      const X = from(x, shape), S = from(s, [C]), Y = poisoned(shape, device);
      ops.mulCols(Y, X, S);
      assertSame(t, Y.toFloat32Array(), want, `y ${JSON.stringify(shape)}`);
      assertSame(t, X.toFloat32Array(), x, `x unchanged ${JSON.stringify(shape)}`);
      ops.mulCols(X, X, S);
      assertSame(t, X.toFloat32Array(), want, `in place ${JSON.stringify(shape)}`);
    }
  });

  test(`${device}: mulColsBackward matches float64 (dx, ds accumulated, nulls, aliasing)`, (t) => {
    const rng = makeRng(t);
    const err = tracker(t);
    for (const shape of SHAPES) {
      const tag = JSON.stringify(shape);
      const { C, x, s, dy, ds0 } = inputs(rng, shape);
      const wantDx = refMulCols(dy, s), wantDs = refDs(ds0, dy, x, C);
      const X = from(x, shape), S = from(s, [C]), DY = from(dy, shape);
      // Both outputs; ds starts non-zero and must accumulate.
      const DX = poisoned(shape, device), DS = from(ds0, [C]);
      ops.mulColsBackward(DX, DS, DY, X, S);
      assertSame(t, DX.toFloat32Array(), wantDx, `dx ${tag}`);
      err.close(DS.toFloat32Array(), wantDs, TOL, `ds ${tag}`, 'ds');
      // ds alone, into zeros.
      const DS2 = Tensor.zeros([C], { device });
      ops.mulColsBackward(null, DS2, DY, X, S);
      err.close(DS2.toFloat32Array(), refDs(null, dy, x, C), TOL, `ds alone ${tag}`, 'ds alone');
      // dx alone.
      const DX3 = poisoned(shape, device);
      ops.mulColsBackward(DX3, null, DY, X, S);
      assertSame(t, DX3.toFloat32Array(), wantDx, `dx alone ${tag}`);
      // Neither: nothing is written, nothing is read wrongly.
      ops.mulColsBackward(null, null, DY, X, S);
      // dx written over dy, then over x, with ds from the same call.
      const DY4 = from(dy, shape), DS4 = from(ds0, [C]);
      ops.mulColsBackward(DY4, DS4, DY4, X, S);
      assertSame(t, DY4.toFloat32Array(), wantDx, `dx = dy in place ${tag}`);
      err.close(DS4.toFloat32Array(), wantDs, TOL, `ds with dx = dy ${tag}`, 'ds (dx = dy)');
      const X5 = from(x, shape), DS5 = from(ds0, [C]);
      ops.mulColsBackward(X5, DS5, DY, X5, S);
      assertSame(t, X5.toFloat32Array(), wantDx, `dx = x in place ${tag}`);
      err.close(DS5.toFloat32Array(), wantDs, TOL, `ds with dx = x ${tag}`, 'ds (dx = x)');
      // Inputs untouched.
      assertSame(t, DY.toFloat32Array(), dy, `dy unchanged ${tag}`);
      assertSame(t, X.toFloat32Array(), x, `x unchanged ${tag}`);
    }
    err.log();
  });

  // A million rows whose products all lie near 1: an f32 running sum would be off by ~1e-4
  // relative; the double sum leaves only the final f32 rounding.
  test(`${device}: mulColsBackward ds stays accurate over 1e6 rows`, (t) => {
    const rng = makeRng(t);
    const N = 1_000_000, C = 3;
    const x = Float32Array.from(randn(rng, N * C, 0.1), (v) => 1 + v);
    const dy = Float32Array.from(randn(rng, N * C, 0.1), (v) => 1 + v);
    const s = randn(rng, C), ds0 = randn(rng, C);
    const DS = from(ds0, [C]);
    ops.mulColsBackward(null, DS, from(dy, [N, C]), from(x, [N, C]), from(s, [C]));
    const got = DS.toFloat32Array(), want = refDs(ds0, dy, x, C);
    const e = relErr(got, want);
    t.log(`ds over ${N} rows: relative error ${e.toExponential(2)}`);
    t.true(e <= TOL, `relative error ${e.toExponential(3)} > ${TOL}`);
  });

  test(`${device}: rowNorms matches float64 for f32 and bf16 w`, (t) => {
    const rng = makeRng(t);
    const err = tracker(t);
    for (const [R, C] of [[1, 1], [1, 37], [37, 1], [7, 37], [1000, 513], [3, 4099]]) {
      const w = randn(rng, R * C);
      // Rows far outside f32's range when squared: the double sum neither overflows nor underflows.
      if (R >= 7) {
        for (let c = 0; c < C; c++) {
          w[1 * C + c] *= 1e30;
          w[2 * C + c] *= 1e-30;
          w[3 * C + c] = 0;
        }
      }
      for (const dtype of ['f32', 'bf16'] as const) {
        const wv = dtype === 'bf16' ? roundBf16(w) : w;
        const out = poisoned([R], device);
        ops.rowNorms(out, Tensor.from(w, [R, C], { device, dtype }));
        const got = out.toFloat32Array(), want = refRowNorms(wv, R, C);
        // Row by row, so the huge row does not hide the others' errors.
        for (let r = 0; r < R; r++) err.close(got.subarray(r, r + 1), want.subarray(r, r + 1), TOL, `${dtype} R=${R} C=${C} row ${r}`, dtype);
      }
    }
    err.log();
  });

  test(`${device}: doraScale and doraMagnitudeBackward round once as float64 does (the bits of the host loops they replace)`, (t) => {
    const rng = makeRng(t);
    for (const n of [1, 7, 576, 1537]) {
      const m = randn(rng, n), norms = Float32Array.from(randn(rng, n), (v) => Math.abs(v) * 30 + 1e-3);
      const dg = randn(rng, n), dm0 = randn(rng, n);
      const g = poisoned([n], device), gm1 = poisoned([n], device), dm = from(dm0, [n]);
      ops.doraScale(g, gm1, from(m, [n]), from(norms, [n]));
      const wantG = Float32Array.from(m, (v, o) => v / norms[o]);
      assertSame(t, g.toFloat32Array(), wantG, `g n=${n}`);
      assertSame(t, gm1.toFloat32Array(), Float32Array.from(wantG, (v) => v - 1), `g - 1 n=${n}`);
      ops.doraMagnitudeBackward(dm, from(dg, [n]), from(norms, [n]));
      assertSame(t, dm.toFloat32Array(), Float32Array.from(dm0, (v, o) => v + dg[o] / norms[o]), `dm n=${n}`);
    }
  });

  test(`${device}: the Async twins give the same results`, async (t) => {
    const rng = makeRng(t);
    const shape = [4, 33, 65], C = 65;
    const { x, s, dy, ds0 } = inputs(rng, shape);
    const X = from(x, shape), S = from(s, [C]), DY = from(dy, shape);
    const Y = poisoned(shape, device);
    const p = ops.mulColsAsync(Y, X, S);
    X.dispose(); // the running op keeps its inputs alive
    await p;
    assertSame(t, Y.toFloat32Array(), refMulCols(x, s), 'mulColsAsync');
    const X2 = from(x, shape), DX = poisoned(shape, device), DS = from(ds0, [C]);
    await ops.mulColsBackwardAsync(DX, DS, DY, X2, S);
    assertSame(t, DX.toFloat32Array(), refMulCols(dy, s), 'mulColsBackwardAsync dx');
    assertClose(t, DS.toFloat32Array(), refDs(ds0, dy, x, C), TOL, 'mulColsBackwardAsync ds');
    const out = poisoned([shape[1]], device);
    await ops.rowNormsAsync(out, from(x.subarray(0, 33 * 65), [33, 65]));
    assertClose(t, out.toFloat32Array(), refRowNorms(x, 33, 65), TOL, 'rowNormsAsync');
    await t.throwsAsync(ops.mulColsAsync(Y, X, S), { instanceOf: PeftkitError, code: 'E_DISPOSED' });
  });
}

// ds's order of additions depends on N and C only: rows that cancel (±2^60 beside values near
// 1) make any other order visible in the f32 result, and thread counts 1, 2 and 3 (child
// processes: the count is read at start) must give the same bits as this process.
const DS_CHILD = `
const { Tensor, ops } = require(${JSON.stringify(path.join(__dirname, '..', 'src', 'index.js'))});
const [N, C] = [5000, 37];
const x = new Float32Array(N * C), dy = new Float32Array(N * C);
let u = 12345;
const next = () => ((u = (Math.imul(u, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5;
for (let i = 0; i < N * C; i++) { x[i] = 1 + next(); dy[i] = next(); }
for (const [n, v] of [[3, 2 ** 60], [1700, -(2 ** 60)], [2600, 2 ** 59], [4999, -(2 ** 59)]]) for (let c = 0; c < C; c++) { x[n * C + c] = v; dy[n * C + c] = 1; }
const ds = Tensor.zeros([C]);
ops.mulColsBackward(null, ds, Tensor.from(dy, [N, C]), Tensor.from(x, [N, C]), Tensor.from(new Float32Array(C).fill(1), [C]));
process.stdout.write(Buffer.from(ds.toFloat32Array().buffer).toString('base64'));
`;

test('cpu: mulColsBackward ds has the same bits on 1, 2 and 3 threads', (t) => {
  const run = (threads?: number) => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (threads) env.PEFTKIT_NUM_THREADS = String(threads);
    else delete env.PEFTKIT_NUM_THREADS;
    const r = spawnSync(process.execPath, ['-e', DS_CHILD], { env, encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    return r.stdout;
  };
  const base = run();
  t.true(base.length > 0);
  for (const threads of [1, 2, 3]) t.is(run(threads), base, `${threads} threads`);
});

test('colscale argument errors name the argument', (t) => {
  const x = Tensor.zeros([4, 5]), y = Tensor.zeros([4, 5]), s = Tensor.zeros([5]);
  expectCode(t, () => ops.mulCols(y, x, Tensor.zeros([4])), 'E_SHAPE', /mul_cols s: expected shape \[5\]/);
  expectCode(t, () => ops.mulCols(y, x, Tensor.zeros([1, 5])), 'E_SHAPE', /mul_cols s: expected shape \[5\]/);
  expectCode(t, () => ops.mulCols(Tensor.zeros([5, 4]), x, s), 'E_SHAPE', /mul_cols y: expected the shape of x \[4, 5\]/);
  expectCode(t, () => ops.mulCols(y, Tensor.zeros([4, 5], { dtype: 'bf16' }), s), 'E_DTYPE', /mul_cols x: expected dtype f32/);
  expectCode(t, () => ops.mulCols(y, x, Tensor.zeros([5], { dtype: 'i32' })), 'E_DTYPE', /mul_cols s: expected dtype f32/);
  expectCode(t, () => ops.mulCols(y, x, {} as Tensor), 'E_ARG');
  // Partial overlaps: y one element into x's memory, ds over s.
  const big = Tensor.zeros([21]);
  expectCode(t, () => ops.mulCols(big.view(1, [4, 5]), big.view(0, [4, 5]), s), 'E_ARG', /mul_cols y .* overlaps x/);
  expectCode(t, () => ops.mulCols(big.view(0, [1, 5]), Tensor.zeros([1, 5]), big.view(0, [5])), 'E_ARG', /overlaps s/);

  const dy = Tensor.zeros([4, 5]), ds = Tensor.zeros([5]), dx = Tensor.zeros([4, 5]);
  expectCode(t, () => ops.mulColsBackward(dx, Tensor.zeros([6]), dy, x, s), 'E_SHAPE', /mul_cols_backward ds: expected shape \[5\]/);
  expectCode(t, () => ops.mulColsBackward(dx, ds, dy, x, Tensor.zeros([6])), 'E_SHAPE', /mul_cols_backward s: expected shape \[5\]/);
  expectCode(t, () => ops.mulColsBackward(Tensor.zeros([20]), ds, dy, x, s), 'E_SHAPE', /mul_cols_backward dx/);
  expectCode(t, () => ops.mulColsBackward(dx, ds, Tensor.zeros([4, 6]), x, s), 'E_SHAPE', /mul_cols_backward dy/);
  expectCode(t, () => ops.mulColsBackward(dx, Tensor.zeros([5], { dtype: 'bf16' }), dy, x, s), 'E_DTYPE', /mul_cols_backward ds/);
  expectCode(t, () => ops.mulColsBackward(null, ds, Tensor.zeros([4, 5], { dtype: 'i32' }), x, s), 'E_DTYPE', /mul_cols_backward dy/);
  const g = Tensor.zeros([25]);
  expectCode(t, () => ops.mulColsBackward(null, g.view(19, [5]), g.view(0, [4, 5]), x, s), 'E_ARG', /ds .* overlaps dy/);
  expectCode(t, () => ops.mulColsBackward(g.view(1, [4, 5]), null, g.view(0, [4, 5]), x, s), 'E_ARG', /dx .* overlaps dy/);
  // Views of one storage that do not overlap are separate tensors.
  const dsv = g.view(20, [5]);
  ops.mulColsBackward(null, dsv, g.view(0, [4, 5]), x, s);
  t.deepEqual(Array.from(dsv.toFloat32Array()), [0, 0, 0, 0, 0]);

  expectCode(t, () => ops.rowNorms(Tensor.zeros([3]), Tensor.zeros([4, 5])), 'E_SHAPE', /row_norms out: expected shape \[4\]/);
  expectCode(t, () => ops.rowNorms(Tensor.zeros([4]), Tensor.zeros([4, 5, 1])), 'E_SHAPE', /row_norms w: expected 2 dimensions/);
  expectCode(t, () => ops.rowNorms(Tensor.zeros([4]), Tensor.zeros([4, 5], { dtype: 'i32' })), 'E_DTYPE', /row_norms w: expected dtype f32 or bf16/);
  expectCode(t, () => ops.rowNorms(Tensor.zeros([4], { dtype: 'bf16' }), Tensor.zeros([4, 5])), 'E_DTYPE', /row_norms out: expected dtype f32/);
});

test('dora op argument errors name the argument', (t) => {
  const v = () => Tensor.zeros([4]);
  expectCode(t, () => ops.doraScale(v(), v(), v(), Tensor.zeros([5])), 'E_SHAPE', /dora_scale g: expected the shape of norms \[5\]/);
  expectCode(t, () => ops.doraScale(v(), v(), Tensor.zeros([3]), v()), 'E_SHAPE', /dora_scale m: expected the shape of norms/);
  expectCode(t, () => ops.doraScale(v(), v(), v(), Tensor.zeros([2, 2])), 'E_SHAPE', /dora_scale norms: expected \[n\]/);
  expectCode(t, () => ops.doraScale(v(), v(), v(), Tensor.zeros([4], { dtype: 'bf16' })), 'E_DTYPE', /dora_scale norms: expected dtype f32/);
  const g = v();
  expectCode(t, () => ops.doraScale(g, g, v(), v()), 'E_ARG', /dora_scale g .* overlaps gMinus1/);
  const n = v();
  expectCode(t, () => ops.doraMagnitudeBackward(n, v(), n), 'E_ARG', /dora_magnitude_backward dm .* overlaps norms/);
  expectCode(t, () => ops.doraMagnitudeBackward(v(), Tensor.zeros([4], { dtype: 'i32' }), v()), 'E_DTYPE', /dora_magnitude_backward dg: expected dtype f32/);
});

test('colscale: empty tensors are no-ops', (t) => {
  const ds = Tensor.from(new Float32Array([1, 2, 3]), [3]);
  ops.mulColsBackward(Tensor.zeros([0, 3]), ds, Tensor.zeros([0, 3]), Tensor.zeros([0, 3]), Tensor.zeros([3]));
  t.deepEqual(Array.from(ds.toFloat32Array()), [1, 2, 3]);
  ops.mulCols(Tensor.zeros([0, 3]), Tensor.zeros([0, 3]), Tensor.zeros([3]));
  const out = poisoned([2]);
  ops.rowNorms(out, Tensor.zeros([2, 0]));
  t.deepEqual(Array.from(out.toFloat32Array()), [0, 0]);
});
