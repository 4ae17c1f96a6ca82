import test from 'ava';
import { Tensor, PeftkitError, ops } from '../src/index';
import type { Device } from '../src/index';

type AdamWParam = ops.AdamWParam;
import { assertClose, devices, makeRng, randn } from './helpers/check';

/** float64 torch.optim.AdamW on one tensor: decay, moments, bias-corrected update. */
class RefAdamW {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  // The same sums over magnitudes: the scale of f32 rounding when terms cancel (a 1-element m
  // can land near 0 and make a plain relative error meaningless).
  pAbs: Float64Array;
  mAbs: Float64Array;
  constructor(p: Float32Array, readonly wd: number) {
    this.p = Float64Array.from(p);
    this.m = new Float64Array(p.length);
    this.v = new Float64Array(p.length);
    this.pAbs = Float64Array.from(p, Math.abs);
    this.mAbs = new Float64Array(p.length);
  }
  step(g: Float32Array, lr: number, b1: number, b2: number, eps: number, t: number): void {
    const bc1 = 1 - b1 ** t, bc2 = 1 - b2 ** t;
    for (let i = 0; i < g.length; i++) {
      this.p[i] *= 1 - lr * this.wd;
      this.m[i] = b1 * this.m[i] + (1 - b1) * g[i];
      this.mAbs[i] = b1 * this.mAbs[i] + (1 - b1) * Math.abs(g[i]);
      this.v[i] = b2 * this.v[i] + (1 - b2) * g[i] * g[i];
      const update = (lr / bc1) * this.m[i] / (Math.sqrt(this.v[i]) / Math.sqrt(bc2) + eps);
      this.p[i] -= update;
      this.pAbs[i] = this.pAbs[i] * (1 - lr * this.wd) + Math.abs(update);
    }
  }
}

function norm64(gs: Float32Array[]): number {
  let s = 0;
  for (const g of gs) for (const x of g) s += x * x;
  return Math.sqrt(s);
}

/** ‖actual − expected‖ ≤ 1e-5·‖scale‖, scale being the same sum taken over magnitudes. */
function closeToScale(t: import('ava').ExecutionContext, actual: Float32Array, expected: Float64Array, scale: Float64Array, what: string): void {
  let num = 0, den = 0;
  for (let i = 0; i < actual.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += scale[i] ** 2;
  }
  const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  t.true(e <= 1e-5, `${what}: error ${e.toExponential(3)} relative to the magnitudes > 1e-5`);
}

function adamwCase(
  t: import('ava').ExecutionContext, device: Device, sizes: number[], wds: Array<number | undefined>, o: {
    lr: number; betas?: [number, number]; eps?: number; weightDecay?: number; steps: number;
  },
): void {
  const rng = makeRng(t);
  const refs = sizes.map((n, i) => new RefAdamW(randn(rng, n), wds[i] ?? o.weightDecay ?? 0.01));
  const params: AdamWParam[] = sizes.map((n, i) => ({
    param: Tensor.from(new Float32Array(refs[i].p), [n], { device }),
    grad: Tensor.zeros([n], { device }),
    m: Tensor.zeros([n], { device }),
    v: Tensor.zeros([n], { device }),
    weightDecay: wds[i],
  }));
  const [b1, b2] = o.betas ?? [0.9, 0.999];
  for (let step = 1; step <= o.steps; step++) {
    sizes.forEach((n, i) => {
      const g = randn(rng, n, 0.1 + rng.next());
      params[i].grad.write(g);
      refs[i].step(g, o.lr, b1, b2, o.eps ?? 1e-8, step);
    });
    ops.adamw(params, { lr: o.lr, betas: o.betas, eps: o.eps, weightDecay: o.weightDecay, step });
  }
  sizes.forEach((n, i) => {
    const what = `size ${n}, weight decay ${refs[i].wd}`;
    closeToScale(t, params[i].param.toFloat32Array(), refs[i].p, refs[i].pAbs, `param ${what}`);
    closeToScale(t, params[i].m.toFloat32Array(), refs[i].m, refs[i].mAbs, `m ${what}`);
    assertClose(t, params[i].v.toFloat32Array(), refs[i].v, 1e-5, `v ${what}`);
  });
}

for (const device of devices()) {
  test(`${device}: AdamW, 5 steps on several tensors, matches a float64 torch.optim.AdamW`, (t) => {
    // Decay on some tensors (the default 0.01, or their own) and not on others.
    adamwCase(t, device, [1, 17, 1000, 5, 3], [undefined, 0, 0.1, undefined, 0], { lr: 1e-2, steps: 5 });
  });

  test(`${device}: AdamW over many small tensors and a few that span several work blocks`, (t) => {
    // 70k + 40k elements cross the kernel's 32k-element blocks; 300 tiny tensors share blocks.
    const sizes = [70001, ...Array.from({ length: 300 }, (_, i) => 1 + (i % 7)), 40000, 0, 2];
    adamwCase(t, device, sizes, sizes.map((_, i) => (i % 3 === 0 ? 0 : undefined)), {
      lr: 3e-3, betas: [0.8, 0.99], eps: 1e-6, weightDecay: 0.05, steps: 3,
    });
  });

  test(`${device}: AdamW with beta1 < 0.5 (the other branch of torch's lerp)`, (t) => {
    adamwCase(t, device, [33, 129], [0.01, 0], { lr: 5e-2, betas: [0.3, 0.6], steps: 3 });
  });

  test(`${device}: gradNorm matches float64 over many tensors`, (t) => {
    const rng = makeRng(t);
    const sizes = [1, 17, 1000, 0, 50000, 3];
    const gs = sizes.map((n) => randn(rng, n, 1 + 10 * rng.next()));
    const grads = gs.map((g, i) => Tensor.from(g, [sizes[i]], { device }));
    const n = ops.gradNorm(grads);
    t.true(Math.abs(n - norm64(gs)) <= 1e-12 * norm64(gs), `gradNorm ${n} vs ${norm64(gs)}`);
    t.is(ops.gradNorm([]), 0);
  });

  test(`${device}: clipGradNorm scales exactly as torch.nn.utils.clip_grad_norm_`, (t) => {
    const rng = makeRng(t);
    const sizes = [7, 1000, 1, 33000];
    const gs = sizes.map((n) => randn(rng, n));
    const total = norm64(gs);
    // Above the limit: every grad times max/(norm + 1e-6), the coefficient formed in f32.
    const maxNorm = total * (0.2 + 0.5 * rng.next());
    const grads = gs.map((g, i) => Tensor.from(g, [sizes[i]], { device }));
    const n = ops.clipGradNorm(grads, maxNorm);
    t.true(Math.abs(n - total) <= 1e-12 * total, `returned norm ${n} is the norm before clipping (${total})`);
    const coef = Math.fround(Math.fround(maxNorm) / Math.fround(Math.fround(n) + Math.fround(1e-6)));
    grads.forEach((g, i) => {
      const expected = gs[i].map((x) => Math.fround(x * coef));
      t.deepEqual(g.toFloat32Array(), expected, `tensor ${i} scaled by ${coef}`);
    });
    assertClose(t, [ops.gradNorm(grads)], [maxNorm], 1e-6, 'norm after clipping is maxNorm');
    // At or under the limit: untouched.
    const again = gs.map((g, i) => Tensor.from(g, [sizes[i]], { device }));
    t.true(Math.abs(ops.clipGradNorm(again, total * 1.5) - total) <= 1e-12 * total);
    t.true(Math.abs(ops.clipGradNorm(again, Infinity) - total) <= 1e-12 * total);
    again.forEach((g, i) => t.deepEqual(g.toFloat32Array(), gs[i], `tensor ${i} untouched under the limit`));
  });

  test(`${device}: a non-finite norm is returned as is and leaves the grads alone`, (t) => {
    const rng = makeRng(t);
    for (const bad of [NaN, Infinity, -Infinity]) {
      const a = randn(rng, 100), b = randn(rng, 20);
      b[7] = bad;
      const grads = [Tensor.from(a, [100], { device }), Tensor.from(b, [20], { device })];
      const n = ops.clipGradNorm(grads, 0.5);
      if (Number.isNaN(bad)) t.true(Number.isNaN(n), `NaN grad: norm ${n}`);
      else t.is(n, Infinity, `${bad} grad: norm ${n}`);
      if (Number.isNaN(bad)) t.true(Number.isNaN(ops.gradNorm(grads)));
      t.deepEqual(grads[0].toFloat32Array(), a);
      t.deepEqual(grads[1].toFloat32Array(), b);
    }
  });
}

test('optimizer async twins give the sync results', async (t) => {
  const rng = makeRng(t);
  const p0 = randn(rng, 300), g = randn(rng, 300);
  const make = (): AdamWParam => ({
    param: Tensor.from(p0, [300]), grad: Tensor.from(g, [300]), m: Tensor.zeros([300]), v: Tensor.zeros([300]),
  });
  const a = make(), b = make();
  ops.adamw([a], { lr: 1e-2, step: 1 });
  const pr = ops.adamwAsync([b], { lr: 1e-2, step: 1 });
  b.grad.dispose(); // the running op keeps its inputs alive
  await pr;
  t.deepEqual(b.param.toFloat32Array(), a.param.toFloat32Array());
  const gs = [Tensor.from(g, [300])];
  t.is(await ops.gradNormAsync(gs), ops.gradNorm(gs));
  const n = ops.gradNorm(gs);
  t.is(await ops.clipGradNormAsync(gs, n / 2), n);
  t.true(Math.abs(ops.gradNorm(gs) - n / 2) < 1e-5 * n);
  const nanGrad = Tensor.from(new Float32Array([1, NaN]), [2]);
  t.true(Number.isNaN(await ops.gradNormAsync([nanGrad])));
  await t.throwsAsync(ops.adamwAsync([a], { lr: -1, step: 2 }), { instanceOf: PeftkitError, code: 'E_ARG' });
});

test('optimizer ops reject bad arguments with PeftkitError codes', (t) => {
  const code = (f: () => unknown) => t.throws(f, { instanceOf: PeftkitError })?.code;
  const slot = (n = 4): AdamWParam => ({ param: Tensor.zeros([n]), grad: Tensor.zeros([n]), m: Tensor.zeros([n]), v: Tensor.zeros([n]) });
  const ok = slot();
  t.notThrows(() => ops.adamw([ok], { step: 1 }));
  t.is(code(() => ops.adamw([{ ...slot(), m: Tensor.zeros([5]) }], { step: 1 })), 'E_SHAPE');
  t.is(code(() => ops.adamw([{ ...slot(), v: Tensor.zeros([2, 2]) }], { step: 1 })), 'E_SHAPE');
  t.is(code(() => ops.adamw([{ ...slot(), grad: Tensor.zeros([4], { dtype: 'bf16' }) }], { step: 1 })), 'E_DTYPE');
  t.is(code(() => ops.adamw([ok], { step: 0 })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1.5 })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, lr: -1e-3 })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, lr: Infinity })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, betas: [1, 0.999] })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, betas: [0.9, -0.1] })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, eps: NaN })), 'E_ARG');
  t.is(code(() => ops.adamw([ok], { step: 1, weightDecay: -0.1 })), 'E_ARG');
  t.is(code(() => ops.adamw([ok, ok], { step: 1 })), 'E_ARG');
  const e = t.throws(() => ops.adamw([{ ...slot(), m: ok.v, v: ok.v }], { step: 1 }), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_ARG');
  t.regex(e!.message, /same tensor/);
  t.is(code(() => ops.adamw([{ ...slot(), param: {} as Tensor }], { step: 1 })), 'E_ARG');
  t.is(code(() => ops.adamw([null as unknown as AdamWParam], { step: 1 })), 'E_ARG');
  const gone = Tensor.zeros([4]);
  gone.dispose();
  t.is(code(() => ops.adamw([{ ...slot(), grad: gone }], { step: 1 })), 'E_DISPOSED');
  t.is(code(() => ops.gradNorm([Tensor.zeros([3], { dtype: 'i32' })])), 'E_DTYPE');
  t.is(code(() => ops.gradNorm([{} as Tensor])), 'E_ARG');
  t.is(code(() => ops.clipGradNorm([Tensor.zeros([3])], -1)), 'E_ARG');
  t.is(code(() => ops.clipGradNorm([Tensor.zeros([3])], NaN)), 'E_ARG');
  const g = Tensor.zeros([3]);
  t.is(code(() => ops.clipGradNorm([g, g], 1)), 'E_ARG');
});
