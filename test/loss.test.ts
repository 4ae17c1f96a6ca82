import test from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, PeftkitError, ops, runtimeInfo } from '../src/index';
import type { Device } from '../src/index';
import { assertClose, devices, makeRng, poisoned, randn, relErr, roundBf16 } from './helpers/check';
import type { Rng } from './helpers/check';
import { CE_CHILD_IGNORE, crossEntropyInputs } from './helpers/cross_entropy_child';

const IGNORE = -100;

/** float64 cross-entropy rows: losses and gradScale·(softmax − onehot), zero for ignored rows. */
function refCrossEntropy(
  x: ArrayLike<number>, targets: Int32Array, N: number, V: number, ignore: number, scale: number,
): { loss: Float64Array; grad: Float64Array } {
  const loss = new Float64Array(N), grad = new Float64Array(N * V);
  for (let n = 0; n < N; n++) {
    const t = targets[n];
    if (t === ignore) continue;
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, x[n * V + j]);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp(x[n * V + j] - m);
    loss[n] = m - x[n * V + t] + Math.log(s);
    for (let j = 0; j < V; j++) grad[n * V + j] = (scale * Math.exp(x[n * V + j] - m)) / s;
    grad[n * V + t] -= scale;
  }
  return { loss, grad };
}

/** Targets in [0, V) with about a quarter of the rows set to the ignore index (never all of them). */
function targetsWithIgnored(rng: Rng, N: number, V: number): Int32Array {
  const t = new Int32Array(N);
  for (let n = 0; n < N; n++) t[n] = n > 0 && rng.next() < 0.25 ? IGNORE : rng.int(0, V);
  return t;
}

const CE_SHAPES: Array<[number, number]> = [[1, 1], [3, 1], [5, 7], [17, 33], [64, 1000], [7, 4099], [2, 1031]];

for (const device of devices()) {
  test(`${device}: cross-entropy losses and gradient match float64 (ignored rows, V=1, V not a multiple of 16)`, (t) => {
    const rng = makeRng(t);
    for (const [N, V] of CE_SHAPES) {
      const x = randn(rng, N * V, 3), tg = targetsWithIgnored(rng, N, V);
      const scale = 0.5 + rng.next();
      const logits = Tensor.from(x, [N, V], { device }), targets = Tensor.from(tg, [N], { device });
      const losses = poisoned([N], device), dlogits = poisoned([N, V], device);
      ops.crossEntropy(losses, dlogits, logits, targets, { gradScale: scale });
      const ref = refCrossEntropy(x, tg, N, V, IGNORE, scale);
      assertClose(t, losses.toFloat32Array(), ref.loss, 1e-5, `loss N=${N} V=${V}`);
      assertClose(t, dlogits.toFloat32Array(), ref.grad, 1e-5, `dlogits N=${N} V=${V}`);
      t.deepEqual(logits.toFloat32Array(), x, 'logits untouched when dlogits is another tensor');
      // Losses only.
      const losses2 = poisoned([N], device);
      ops.crossEntropy(losses2, null, logits, targets);
      assertClose(t, losses2.toFloat32Array(), ref.loss, 1e-5, `loss only N=${N} V=${V}`);
      for (let n = 0; n < N; n++) if (tg[n] === IGNORE) t.is(losses.toFloat32Array()[n], 0);
    }
  });

  test(`${device}: cross-entropy in place over the logits, batched [B, T, V]`, (t) => {
    const rng = makeRng(t);
    const [B, T, V] = [3, 5, 517];
    const x = randn(rng, B * T * V, 2), tg = targetsWithIgnored(rng, B * T, V);
    const logits = Tensor.from(x, [B, T, V], { device }), targets = Tensor.from(tg, [B, T], { device });
    const losses = poisoned([B, T], device);
    ops.crossEntropy(losses, logits, logits, targets, { gradScale: 1 / (B * T) });
    const ref = refCrossEntropy(x, tg, B * T, V, IGNORE, 1 / (B * T));
    assertClose(t, losses.toFloat32Array(), ref.loss, 1e-5, 'loss');
    assertClose(t, logits.toFloat32Array(), ref.grad, 1e-5, 'gradient written over the logits');
  });

  test(`${device}: cross-entropy is stable for logits near ±1e4`, (t) => {
    const rng = makeRng(t);
    for (const [N, V] of [[9, 50], [4, 3001]] as const) {
      const x = randn(rng, N * V, 1e4), tg = targetsWithIgnored(rng, N, V);
      // Two rows of a near tie at the top, so the gradient is not just a onehot.
      for (let j = 0; j < V; j++) x[j] = j < 2 ? 1e4 + j * 0.5 : x[j];
      const logits = Tensor.from(x, [N, V], { device }), targets = Tensor.from(tg, [N], { device });
      const losses = poisoned([N], device), dlogits = poisoned([N, V], device);
      ops.crossEntropy(losses, dlogits, logits, targets, { ignoreIndex: IGNORE });
      const ref = refCrossEntropy(x, tg, N, V, IGNORE, 1);
      assertClose(t, losses.toFloat32Array(), ref.loss, 1e-5, `loss N=${N} V=${V}`);
      assertClose(t, dlogits.toFloat32Array(), ref.grad, 1e-5, `dlogits N=${N} V=${V}`);
    }
  });

  test(`${device}: a NaN or infinite logit gives a NaN loss, not a silent 0`, (t) => {
    const V = 40;
    const x = new Float32Array(3 * V).fill(0.5);
    x[3] = NaN;
    x[V + 7] = Infinity;
    x[2 * V + 9] = -Infinity; // -inf is a logit of probability 0: fine
    const losses = poisoned([3], device);
    ops.crossEntropy(losses, null, Tensor.from(x, [3, V], { device }), Tensor.from(new Int32Array([0, 1, 2]), [3], { device }));
    const l = losses.toFloat32Array();
    t.true(Number.isNaN(l[0]), `NaN logit: loss ${l[0]}`);
    t.true(Number.isNaN(l[1]), `+inf logit: loss ${l[1]}`);
    t.true(Math.abs(l[2] - Math.log(V - 1)) < 1e-5, `-inf logit: loss ${l[2]}`);
  });

  test(`${device}: cross-entropy gradient agrees with finite differences of its own losses`, (t) => {
    const rng = makeRng(t);
    const [N, V] = [3, 11];
    const x = randn(rng, N * V), tg = new Int32Array([rng.int(0, V), IGNORE, rng.int(0, V)]);
    const targets = Tensor.from(tg, [N], { device });
    const lossSum = (v: Float32Array): number => {
      const logits = Tensor.from(v, [N, V], { device }), losses = poisoned([N], device);
      ops.crossEntropy(losses, null, logits, targets);
      return losses.toFloat32Array().reduce((a, b) => a + b, 0);
    };
    const dlogits = poisoned([N, V], device);
    ops.crossEntropy(poisoned([N], device), dlogits, Tensor.from(x, [N, V], { device }), targets);
    const fd = new Float64Array(N * V);
    for (let i = 0; i < N * V; i++) {
      const hi = x.slice(), lo = x.slice();
      hi[i] += 1e-2;
      lo[i] -= 1e-2;
      fd[i] = (lossSum(hi) - lossSum(lo)) / (hi[i] - lo[i]);
    }
    const err = relErr(dlogits.toFloat32Array(), fd);
    t.true(err < 2e-3, `finite differences: relative error ${err.toExponential(3)}`);
  });
}

/**
 * float64 unfused LM head: logits = H·Wᵀ, cross-entropy, dH = G·W, dW = dW0 + Gᵀ·H. With
 * bf16Compute, as the kernel computes it: H and W rounded to bf16 in all three products, and the
 * logit gradient G (which the kernel forms in f32) rounded to f32 and then bf16 before dH, dW.
 */
function refLinearCrossEntropy(
  H: Float32Array, W: Float32Array, dW0: Float32Array, tg: Int32Array, N: number, C: number, V: number, scale: number,
  bf16Compute = false,
): { loss: Float64Array; dH: Float64Array; dW: Float64Array } {
  if (bf16Compute) {
    H = roundBf16(H);
    W = roundBf16(W);
  }
  const logits = new Float64Array(N * V);
  for (let n = 0; n < N; n++)
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += H[n * C + c] * W[v * C + c];
      logits[n * V + v] = s;
    }
  const { loss, grad: g64 } = refCrossEntropy(logits, tg, N, V, IGNORE, scale);
  const grad = bf16Compute ? roundBf16(Float32Array.from(g64)) : g64;
  const dH = new Float64Array(N * C), dW = Float64Array.from(dW0);
  for (let n = 0; n < N; n++)
    for (let v = 0; v < V; v++) {
      const g = grad[n * V + v];
      if (g === 0) continue;
      for (let c = 0; c < C; c++) {
        dH[n * C + c] += g * W[v * C + c];
        dW[v * C + c] += g * H[n * C + c];
      }
    }
  return { loss, dH, dW };
}

// [N, C, V, chunkRows]: chunks that do not divide N, one row per chunk, one chunk (0 = automatic).
const LCE_CASES: Array<[number, number, number, number]> = [
  [1, 1, 1, 0], [7, 5, 3, 3], [13, 19, 37, 1], [13, 19, 37, 5], [50, 24, 101, 16], [33, 40, 300, 0], [6, 9, 17, 100],
];

function linearCase(t: import('ava').ExecutionContext, device: Device, wdtype: 'f32' | 'bf16'): void {
  const rng = makeRng(t);
  const tol = 1e-5;
  for (const [N, C, V, chunkRows] of LCE_CASES) {
    const h = randn(rng, N * C), w0 = randn(rng, V * C, 1 / Math.sqrt(C));
    const w = wdtype === 'bf16' ? roundBf16(w0) : w0;
    const dw0 = randn(rng, V * C);
    const tg = targetsWithIgnored(rng, N, V);
    // A whole first chunk of masked rows (a prompt) when there is more than one chunk.
    const chunk = chunkRows || N;
    if (chunk < N) for (let n = 0; n < chunk; n++) tg[n] = IGNORE;
    const scale = 1 / N;
    const H = Tensor.from(h, [N, C], { device }), W = Tensor.from(w, [V, C], { device, dtype: wdtype });
    const targets = Tensor.from(tg, [N], { device });
    const losses = poisoned([N], device), dH = poisoned([N, C], device), dW = Tensor.from(dw0, [V, C], { device });
    ops.linearCrossEntropy(losses, dH, dW, H, W, targets, { gradScale: scale, chunkRows });
    const ref = refLinearCrossEntropy(h, w, dw0, tg, N, C, V, scale);
    const what = `${wdtype} W, N=${N} C=${C} V=${V} chunkRows=${chunkRows}`;
    assertClose(t, losses.toFloat32Array(), ref.loss, tol, `loss ${what}`);
    assertClose(t, dH.toFloat32Array(), ref.dH, tol, `dH ${what}`);
    assertClose(t, dW.toFloat32Array(), ref.dW, tol, `dW (accumulated) ${what}`);
    // Loss only, and dW only.
    const losses2 = poisoned([N], device);
    ops.linearCrossEntropy(losses2, null, null, H, W, targets, { chunkRows });
    assertClose(t, losses2.toFloat32Array(), ref.loss, tol, `loss only ${what}`);
    const dW2 = Tensor.from(dw0, [V, C], { device });
    ops.linearCrossEntropy(poisoned([N], device), null, dW2, H, W, targets, { gradScale: scale, chunkRows });
    assertClose(t, dW2.toFloat32Array(), ref.dW, tol, `dW without dH ${what}`);
  }
}

/**
 * bf16 compute: losses come from f32 logits of the bf16-rounded H and W, so they keep f32's 1e-5.
 * dH and dW multiply the bf16 rounding of the f32 logit gradient, which the float64 reference can
 * only round from its own value: where the two straddle a rounding boundary (a few elements per
 * case) one element differs by a bf16 ulp, ~1e-5 of the result. Hence 1e-4; not rounding the
 * gradient (or H, W) would be ~1e-3 off, which the test also checks fails.
 */
function linearCaseBf16Compute(t: import('ava').ExecutionContext, device: Device, wdtype: 'f32' | 'bf16'): void {
  const rng = makeRng(t);
  for (const [N, C, V, chunkRows] of [...LCE_CASES, [40, 600, 257, 16] as [number, number, number, number]]) {
    const h = randn(rng, N * C), w0 = randn(rng, V * C, 1 / Math.sqrt(C));
    const w = wdtype === 'bf16' ? roundBf16(w0) : w0;
    const dw0 = randn(rng, V * C, 0.01);
    const tg = targetsWithIgnored(rng, N, V);
    const scale = 1 / N;
    const H = Tensor.from(h, [N, C], { device }), W = Tensor.from(w, [V, C], { device, dtype: wdtype });
    const targets = Tensor.from(tg, [N], { device });
    const losses = poisoned([N], device), dH = poisoned([N, C], device), dW = Tensor.from(dw0, [V, C], { device });
    ops.linearCrossEntropy(losses, dH, dW, H, W, targets, { gradScale: scale, chunkRows, compute: 'bf16' });
    const ref = refLinearCrossEntropy(h, w, dw0, tg, N, C, V, scale, true);
    const what = `${wdtype} W, N=${N} C=${C} V=${V} chunkRows=${chunkRows}`;
    assertClose(t, losses.toFloat32Array(), ref.loss, 1e-5, `loss ${what}`);
    assertClose(t, dH.toFloat32Array(), ref.dH, 1e-4, `dH ${what}`);
    assertClose(t, dW.toFloat32Array(), ref.dW, 1e-4, `dW (accumulated) ${what}`);
    if (C >= 16 && V >= 16) {
      const f32 = refLinearCrossEntropy(h, w, dw0, tg, N, C, V, scale);
      t.true(relErr(dH.toFloat32Array(), f32.dH) > 1e-4, `dH ${what}: equals the f32 head, nothing was rounded`);
    }
  }
}

for (const device of devices()) {
  test(`${device}: linear cross-entropy matches the float64 unfused LM head (f32 W)`, (t) => linearCase(t, device, 'f32'));
  test(`${device}: bf16 compute linear cross-entropy (f32 W) matches float64 on the rounded operands`, (t) => linearCaseBf16Compute(t, device, 'f32'));
  test(`${device}: bf16 compute linear cross-entropy (bf16 W) matches float64 on the rounded operands`, (t) => linearCaseBf16Compute(t, device, 'bf16'));
  test(`${device}: linear cross-entropy matches the float64 unfused LM head (bf16 W)`, (t) => linearCase(t, device, 'bf16'));

  test(`${device}: linear cross-entropy over [B, T, C] hidden states, dH checked by finite differences`, (t) => {
    const rng = makeRng(t);
    const [B, T, C, V] = [2, 3, 6, 13];
    const h = randn(rng, B * T * C), w = randn(rng, V * C, 0.5), tg = targetsWithIgnored(rng, B * T, V);
    const H = Tensor.from(h, [B, T, C], { device }), W = Tensor.from(w, [V, C], { device });
    const targets = Tensor.from(tg, [B, T], { device });
    const dH = poisoned([B, T, C], device);
    ops.linearCrossEntropy(poisoned([B, T], device), dH, null, H, W, targets, { chunkRows: 4 });
    const lossSum = (hv: Float32Array): number => {
      const losses = poisoned([B, T], device);
      ops.linearCrossEntropy(losses, null, null, Tensor.from(hv, [B, T, C], { device }), W, targets, { chunkRows: 4 });
      return losses.toFloat32Array().reduce((a, b) => a + b, 0);
    };
    const fd = new Float64Array(B * T * C);
    for (let i = 0; i < fd.length; i++) {
      const hi = h.slice(), lo = h.slice();
      hi[i] += 1e-2;
      lo[i] -= 1e-2;
      fd[i] = (lossSum(hi) - lossSum(lo)) / (hi[i] - lo[i]);
    }
    const err = relErr(dH.toFloat32Array(), fd);
    t.true(err < 2e-3, `finite differences: relative error ${err.toExponential(3)}`);
  });
}

test('cross-entropy async twins give the sync results', async (t) => {
  const rng = makeRng(t);
  const [N, C, V] = [9, 8, 70];
  const h = randn(rng, N * C), w = randn(rng, V * C), tg = targetsWithIgnored(rng, N, V);
  const H = Tensor.from(h, [N, C]), W = Tensor.from(w, [V, C]), targets = Tensor.from(tg, [N]);
  const ref = refLinearCrossEntropy(h, w, new Float32Array(V * C), tg, N, C, V, 1);
  const losses = poisoned([N]), dH = poisoned([N, C]), dW = Tensor.zeros([V, C]);
  const p = ops.linearCrossEntropyAsync(losses, dH, dW, H, W, targets, { chunkRows: 4 });
  H.dispose(); // the running op keeps its inputs alive
  await p;
  assertClose(t, losses.toFloat32Array(), ref.loss, 1e-5, 'async loss');
  assertClose(t, dH.toFloat32Array(), ref.dH, 1e-5, 'async dH');
  assertClose(t, dW.toFloat32Array(), ref.dW, 1e-5, 'async dW');
  const x = randn(rng, N * V), logits = Tensor.from(x, [N, V]), losses2 = poisoned([N]);
  await ops.crossEntropyAsync(losses2, logits, logits, targets);
  const ref2 = refCrossEntropy(x, tg, N, V, IGNORE, 1);
  assertClose(t, losses2.toFloat32Array(), ref2.loss, 1e-5, 'async CE loss');
  assertClose(t, logits.toFloat32Array(), ref2.grad, 1e-5, 'async CE gradient in place');
});

// The host logits chunk is kept per calling thread between calls: what a call leaves there (even
// NaN) must not reach the next call, and concurrent calls on the thread pool must not share it.
test('linear cross-entropy reuses its scratch safely: after a NaN call, across shapes, concurrently', async (t) => {
  const rng = makeRng(t);
  const run = (N: number, C: number, V: number, chunkRows: number, nan = false) => {
    const h = nan ? new Float32Array(N * C).fill(NaN) : randn(rng, N * C), w = randn(rng, V * C, 1 / Math.sqrt(C));
    const tg = targetsWithIgnored(rng, N, V);
    const args = { H: Tensor.from(h, [N, C]), W: Tensor.from(w, [V, C]), targets: Tensor.from(tg, [N]) };
    const losses = poisoned([N]), dH = poisoned([N, C]);
    const ref = () => refLinearCrossEntropy(h, w, new Float32Array(V * C), tg, N, C, V, 1 / N);
    return { ...args, losses, dH, ref, what: `N=${N} C=${C} V=${V} chunkRows=${chunkRows}`, o: { gradScale: 1 / N, chunkRows } };
  };
  const check = (c: ReturnType<typeof run>, how: string) => {
    const r = c.ref();
    assertClose(t, c.losses.toFloat32Array(), r.loss, 1e-5, `loss ${how} ${c.what}`);
    assertClose(t, c.dH.toFloat32Array(), r.dH, 1e-5, `dH ${how} ${c.what}`);
  };
  // A large chunk of NaN logits, then smaller and equal chunks that reuse the same memory.
  const poison = run(64, 8, 997, 0, true);
  ops.linearCrossEntropy(poison.losses, poison.dH, null, poison.H, poison.W, poison.targets, poison.o);
  t.true(poison.losses.toFloat32Array().some((x) => Number.isNaN(x)), 'NaN hidden states give NaN losses');
  for (const [N, C, V, chunkRows] of [[5, 7, 31, 0], [64, 8, 997, 0], [30, 3, 1000, 7]]) {
    const c = run(N, C, V, chunkRows);
    ops.linearCrossEntropy(c.losses, c.dH, null, c.H, c.W, c.targets, c.o);
    check(c, 'after a NaN call');
  }
  // Several at once on the pool (each thread its own scratch), one on this thread meanwhile.
  const cases = [run(40, 16, 513, 0), run(17, 5, 2049, 3), run(64, 12, 301, 0), run(9, 33, 4099, 0)];
  const pending = cases.map((c) => ops.linearCrossEntropyAsync(c.losses, c.dH, null, c.H, c.W, c.targets, c.o));
  const here = run(50, 10, 777, 0);
  ops.linearCrossEntropy(here.losses, here.dH, null, here.H, here.W, here.targets, here.o);
  await Promise.all(pending);
  cases.forEach((c) => check(c, 'concurrent async'));
  check(here, 'sync beside async calls');
});

// The softmax passes have portable, AVX2 and AVX-512 builds (the pointwise table), picked once
// per process; a child per ISA (PEFTKIT_ISA caps it) checks every path this CPU has.
test('cpu: every ISA path of the cross-entropy matches float64', (t) => {
  const info = runtimeInfo();
  const isas = ['portable', ...(info.avx2 ? ['avx2'] : []), ...(info.avx512 ? ['avx512'] : [])];
  const seed = makeRng(t).int(0, 2 ** 31);
  const inputs = crossEntropyInputs(seed);
  const refs = inputs.map(({ N, V, logits, targets, scale }) => refCrossEntropy(logits, targets, N, V, CE_CHILD_IGNORE, scale));
  for (const isa of isas) {
    const child = spawnSync(process.execPath, [path.join(__dirname, 'helpers', 'cross_entropy_child.js'), String(seed)], {
      env: { ...process.env, PEFTKIT_ISA: isa },
      encoding: 'utf8',
    });
    t.is(child.status, 0, `${isa} child failed: ${child.stderr}`);
    if (child.status !== 0) continue;
    const result = JSON.parse(child.stdout) as { isa: string; cases: Array<Record<string, string>> };
    t.true(result.isa.startsWith(isa), `PEFTKIT_ISA=${isa} ran ${result.isa}`);
    const f32 = (b64: string) => {
      const b = Buffer.from(b64, 'base64');
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    };
    result.cases.forEach((c, i) => {
      const what = `${isa} N=${inputs[i].N} V=${inputs[i].V}`;
      assertClose(t, f32(c.losses), refs[i].loss, 1e-5, `loss ${what}`);
      assertClose(t, f32(c.lossOnly), refs[i].loss, 1e-5, `loss only ${what}`);
      assertClose(t, f32(c.grad), refs[i].grad, 1e-5, `gradient in place ${what}`);
    });
  }
});

test('cross-entropy rejects bad arguments with PeftkitError codes', async (t) => {
  const code = (f: () => unknown) => t.throws(f, { instanceOf: PeftkitError })?.code;
  const logits = Tensor.zeros([4, 10]), losses = Tensor.zeros([4]), targets = Tensor.from(new Int32Array([1, -100, 3, 0]), [4]);
  const bad = Tensor.from(new Int32Array([1, 2, 10, 0]), [4]);
  const e = t.throws(() => ops.crossEntropy(losses, null, logits, bad), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_ARG');
  t.regex(e!.message, /row 2 has target 10/);
  t.is(code(() => ops.crossEntropy(losses, null, logits, Tensor.from(new Int32Array([0, 0, -1, 0]), [4]))), 'E_ARG');
  t.is(code(() => ops.crossEntropy(losses, null, logits, Tensor.zeros([4]))), 'E_DTYPE');
  t.is(code(() => ops.crossEntropy(losses, null, Tensor.zeros([4, 10], { dtype: 'bf16' }), targets)), 'E_DTYPE');
  t.is(code(() => ops.crossEntropy(Tensor.zeros([5]), null, logits, targets)), 'E_SHAPE');
  t.is(code(() => ops.crossEntropy(losses, Tensor.zeros([4, 9]), logits, targets)), 'E_SHAPE');
  t.is(code(() => ops.crossEntropy(losses, null, Tensor.zeros([4, 0]), targets)), 'E_SHAPE');
  t.is(code(() => ops.crossEntropy(losses, null, logits, targets, { gradScale: NaN })), 'E_ARG');
  t.is(code(() => ops.crossEntropy(losses, null, logits, targets, { ignoreIndex: 2 ** 40 })), 'E_ARG');
  t.is(code(() => ops.crossEntropy(losses, null, {} as Tensor, targets)), 'E_ARG');
  const H = Tensor.zeros([4, 6]), W = Tensor.zeros([10, 6]);
  t.is(code(() => ops.linearCrossEntropy(losses, null, null, H, Tensor.zeros([10, 5]), targets)), 'E_SHAPE');
  t.is(code(() => ops.linearCrossEntropy(losses, H, null, H, W, targets)), 'E_ARG');
  t.is(code(() => ops.linearCrossEntropy(losses, null, Tensor.zeros([10, 6], { dtype: 'bf16' }), H, W, targets)), 'E_DTYPE');
  t.is(code(() => ops.linearCrossEntropy(losses, null, Tensor.zeros([6, 10]), H, W, targets)), 'E_SHAPE');
  for (const dtype of ['f16', 'i32'] as const) t.is(code(() => ops.linearCrossEntropy(losses, null, null, H, Tensor.zeros([10, 6], { dtype }), targets)), 'E_DTYPE');
  t.is(code(() => ops.linearCrossEntropy(losses, null, null, H, W, targets, { chunkRows: -1 })), 'E_ARG');
  t.is(code(() => ops.linearCrossEntropy(losses, null, null, H, W, targets, { compute: 'f16' as 'bf16' })), 'E_ARG');
  t.is(code(() => ops.linearCrossEntropy(losses, null, null, H, W, bad)), 'E_ARG');
  await t.throwsAsync(ops.crossEntropyAsync(losses, null, logits, bad), { instanceOf: PeftkitError, code: 'E_ARG' });
  // A target equal to ignoreIndex is fine wherever it lies.
  t.notThrows(() => ops.crossEntropy(losses, null, logits, bad, { ignoreIndex: 10 }));
});
