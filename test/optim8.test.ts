/** 8-bit blockwise AdamW, paged (mapped) tensors and the optimizer kinds of training. */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, PeftkitError, ops } from '../src/index';
import type { Device } from '../src/index';
import { AdamW, OptimName } from '../src/train/optimizer';
import { restoreCheckpoint, saveCheckpoint } from '../src/train/checkpoint';
import type { TrainerState } from '../src/train/checkpoint';
import { resolveTrainOptions } from '../src/train/options';
import type { LoraAdapter } from '../src/peft/lora';
import { SafetensorsFile } from '../src/model/safetensors';
import { devices, makeRng, randn, relErr } from './helpers/check';
import type { Rng } from './helpers/check';
import { makeMemoryCgroup } from './helpers/memory_cgroup';
import { writeRandomModel } from '../src/model/random_model';
import { LlamaModel } from '../src/model/llama';
import { LoraAdapter as Adapter } from '../src/peft/lora';
import { train } from '../src/train/train';

const S = ops.dynamicMap('signed');
const U = ops.dynamicMap('unsigned');
const BLOCK = ops.ADAMW8BIT_BLOCK;
const made: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-optim8-'));
  made.push(d);
  return d;
};
test.after.always(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

test('the compiled dynamic maps are the reference tables (quant_codes.json when present)', (t) => {
  for (const [name, map] of [['signed', S], ['unsigned', U]] as const) {
    t.is(map.length, 256, name);
    for (let i = 1; i < 256; i++) t.true(map[i] > map[i - 1], `${name} map increases at ${i}`);
    t.is(map[255], 1, `${name} map ends at 1`);
  }
  t.is(S[127], 0, 'signed map: 0 at 127');
  t.is(U[0], 0, 'unsigned map: 0 at 0');
  const root = path.join(__dirname, '..', '..');
  const candidates = [
    process.env.PEFTKIT_QUANT_CODES,
    path.join(root, '..', 'shared', 'reference', 'quant_codes.json'),
    path.join(root, '..', '..', 'shared', 'reference', 'quant_codes.json'),
  ].filter((f): f is string => !!f && fs.existsSync(f));
  if (!candidates.length) {
    t.log('quant_codes.json not found (set PEFTKIT_QUANT_CODES): checked the tables\' shape only');
    return;
  }
  const ref = JSON.parse(fs.readFileSync(candidates[0], 'utf8')) as Record<string, number[]>;
  t.deepEqual(S, Float32Array.from(ref.dynamic_signed_256), `signed map equals ${candidates[0]}`);
  t.deepEqual(U, Float32Array.from(ref.dynamic_unsigned_256), `unsigned map equals ${candidates[0]}`);
});

/** Index of the code nearest x in float64, and whether f32 rounding could pick its neighbour. */
function nearest(map: Float32Array, x: number, slack: number): { code: number; ambiguous: boolean } {
  let i = 0;
  while (i < 255 && map[i + 1] <= x) i++;
  if (i === 255) return { code: 255, ambiguous: false };
  const mid = (map[i] + map[i + 1]) / 2;
  const code = map[i + 1] - x < x - map[i] ? i + 1 : i;
  return { code, ambiguous: Math.abs(x - mid) <= slack };
}

interface Eight {
  p: Float32Array;
  g: Float32Array;
  mc: Uint8Array;
  vc: Uint8Array;
  ma: Float32Array;
  va: Float32Array;
}

/**
 * float64 reference of one blockwise 8-bit AdamW step on one tensor: decode, update, new block
 * absmax, nearest codes. Codes come with the elements where the f32 kernel may differ by one.
 */
function ref8bitStep(s: Eight, h: { lr: number; b1: number; b2: number; eps: number; wd: number; step: number }) {
  const n = s.p.length;
  const p = new Float64Array(n), m = new Float64Array(n), v = new Float64Array(n), scale = new Float64Array(n);
  const bc1 = 1 - h.b1 ** h.step, bc2 = 1 - h.b2 ** h.step;
  for (let i = 0; i < n; i++) {
    const blk = Math.floor(i / BLOCK);
    const m0 = S[s.mc[i]] * s.ma[blk], v0 = U[s.vc[i]] * s.va[blk], g = s.g[i];
    m[i] = h.b1 * m0 + (1 - h.b1) * g;
    v[i] = h.b2 * v0 + (1 - h.b2) * g * g;
    scale[i] = Math.abs(h.b1 * m0) + Math.abs((1 - h.b1) * g);  // cancellation makes f32 m off by ~ulp(scale)
    p[i] = s.p[i] * (1 - h.lr * h.wd) - (h.lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + h.eps);
  }
  const blocks = Math.ceil(n / BLOCK);
  const ma = new Float64Array(blocks), va = new Float64Array(blocks);
  for (let i = 0; i < n; i++) {
    const blk = Math.floor(i / BLOCK);
    ma[blk] = Math.max(ma[blk], Math.abs(m[i]));
    va[blk] = Math.max(va[blk], v[i]);
  }
  const mc = [], vc = [];
  for (let i = 0; i < n; i++) {
    const blk = Math.floor(i / BLOCK);
    const xm = ma[blk] > 0 ? m[i] / ma[blk] : 0, xv = va[blk] > 0 ? v[i] / va[blk] : 0;
    mc.push(nearest(S, xm, ma[blk] > 0 ? 4e-6 * (scale[i] / ma[blk] + Math.abs(xm)) : 0));
    vc.push(nearest(U, xv, 4e-6 * Math.abs(xv)));
  }
  return { p, ma, va, mc, vc };
}

/** Random 8-bit state: codes anywhere in the maps, block maxima of a plausible size. */
function random8bit(rng: Rng, n: number): Eight {
  const blocks = Math.ceil(n / BLOCK);
  return {
    p: randn(rng, n),
    g: randn(rng, n, 0.1 + rng.next()),
    mc: Uint8Array.from({ length: n }, () => rng.int(0, 256)),
    vc: Uint8Array.from({ length: n }, () => rng.int(0, 256)),
    ma: Float32Array.from({ length: blocks }, () => 0.05 + 0.1 * rng.next()),
    va: Float32Array.from({ length: blocks }, () => 1e-3 + 1e-2 * rng.next()),
  };
}

function load8bit(s: Eight, device: Device): ops.AdamW8bitParam {
  const n = s.p.length;
  return {
    param: Tensor.from(s.p, [n], { device }), grad: Tensor.from(s.g, [n], { device }),
    m: Tensor.from(s.mc, [n], { device }), v: Tensor.from(s.vc, [n], { device }),
    mAbsmax: Tensor.from(s.ma, [s.ma.length], { device }), vAbsmax: Tensor.from(s.va, [s.va.length], { device }),
  };
}

function sub(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from({ length: a.length }, (_, i) => a[i] - b[i]);
}

for (const device of devices()) {
  test(`${device}: one 8-bit step equals a float64 blockwise reference (codes exact where unambiguous)`, (t) => {
    const rng = makeRng(t);
    // Whole blocks, a ragged last block, and a tensor spanning several 32k-element work items.
    const sizes = [4096, 17 * BLOCK + 3, 70001];
    const states = sizes.map((n) => random8bit(rng, n));
    // An all-zero block (state 0, gradient 0) must stay exactly 0 with absmax 0.
    states[1].ma[2] = 0;
    states[1].va[2] = 0;
    states[1].g.fill(0, 2 * BLOCK, 3 * BLOCK);
    const h = { lr: 1e-2, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01, step: 7 };
    const params = states.map((s) => load8bit(s, device));
    const skipped = ops.adamw8bit(params, { lr: h.lr, betas: [h.b1, h.b2], eps: h.eps, weightDecay: h.wd, step: h.step });
    t.is(skipped, 0);
    let ambiguous = 0, total = 0;
    states.forEach((s, k) => {
      const r = ref8bitStep(s, h);
      const what = `tensor of ${s.p.length}`;
      const p = params[k].param.toFloat32Array();
      const e = relErr(sub(p, s.p), sub(r.p, s.p));
      t.true(e <= 1e-5, `${what}: update relative error ${e}`);
      t.true(relErr(params[k].mAbsmax!.toFloat32Array(), r.ma) <= 1e-6, `${what}: m absmax`);
      t.true(relErr(params[k].vAbsmax!.toFloat32Array(), r.va) <= 1e-6, `${what}: v absmax`);
      for (const [name, got, want] of [['m', params[k].m.toArray(), r.mc], ['v', params[k].v.toArray(), r.vc]] as const) {
        let wrong = 0;
        for (let i = 0; i < got.length; i++) {
          total++;
          if (want[i].ambiguous) {
            ambiguous++;
            if (Math.abs(Number(got[i]) - want[i].code) > 1) wrong++;
          } else if (got[i] !== want[i].code) wrong++;
        }
        t.is(wrong, 0, `${what}: ${name} codes that differ from the reference`);
      }
    });
    t.log(`${ambiguous} of ${total} codes sat within rounding of a midpoint (allowed ±1)`);
    const zm = params[1].m.toArray().slice(2 * BLOCK, 3 * BLOCK), zv = params[1].v.toArray().slice(2 * BLOCK, 3 * BLOCK);
    t.true(zm.every((c) => c === 127) && zv.every((c) => c === 0), 'the zero block stores the zero codes');
    t.deepEqual(Array.from(params[1].mAbsmax!.toFloat32Array().slice(2, 3)), [0]);
  });

  test(`${device}: f32 states in the 8-bit op follow adamw() exactly`, (t) => {
    const rng = makeRng(t);
    const sizes = [1, 33, 4095, 40000];
    const p0 = sizes.map((n) => randn(rng, n));
    const mk = () => sizes.map((n, i) => ({
      param: Tensor.from(p0[i], [n], { device }), grad: Tensor.zeros([n], { device }),
      m: Tensor.zeros([n], { device }), v: Tensor.zeros([n], { device }), weightDecay: i % 2 ? 0 : 0.05,
    }));
    const a = mk(), b = mk();
    for (let step = 1; step <= 4; step++) {
      sizes.forEach((n, i) => {
        const g = randn(rng, n, 0.5);
        a[i].grad.write(g);
        b[i].grad.write(g);
      });
      const o = { lr: 3e-3, betas: step % 2 ? [0.9, 0.99] as [number, number] : [0.3, 0.99] as [number, number], step };
      ops.adamw(a, o);
      t.is(ops.adamw8bit(b, o), 0);
    }
    sizes.forEach((n, i) => {
      for (const k of ['param', 'm', 'v'] as const) {
        if (device === 'cpu') t.deepEqual(b[i][k].toFloat32Array(), a[i][k].toFloat32Array(), `${k} of ${n}: same bits`);
        else t.true(relErr(b[i][k].toFloat32Array(), a[i][k].toFloat32Array()) <= 1e-6, `${k} of ${n}`);
      }
    });
  });

  test(`${device}: 8-bit AdamW tracks f32 AdamW over 100 steps of a noisy quadratic`, (t) => {
    const rng = makeRng(t);
    const n = 8192 + 777;
    const curv = Float64Array.from({ length: n }, () => 0.5 + 1.5 * rng.next());
    const target = randn(rng, n);
    const p0 = randn(rng, n);
    const noise = Array.from({ length: 100 }, () => randn(rng, n, 0.3));
    const loss = (p: Float32Array) => p.reduce((s, x, i) => s + 0.5 * curv[i] * (x - target[i]) ** 2, 0) / n;
    const run = (eightBit: boolean) => {
      const param = Tensor.from(p0, [n], { device });
      const grad = Tensor.zeros([n], { device });
      const st = ops.adamw8bitState([n], { device, quantized: eightBit });
      const g = new Float32Array(n);
      for (let step = 1; step <= 100; step++) {
        const p = param.toFloat32Array();
        for (let i = 0; i < n; i++) g[i] = curv[i] * (p[i] - target[i]) + noise[step - 1][i];
        grad.write(g);
        const o = { lr: 2e-2, weightDecay: 0.01, step };
        if (eightBit) ops.adamw8bit([{ param, grad, ...st }], o);
        else ops.adamw([{ param, grad, m: st.m, v: st.v }], o);
      }
      return param.toFloat32Array();
    };
    const p8 = run(true), p32 = run(false);
    const e = relErr(sub(p8, p0), sub(p32, p0));
    t.log(`loss ${loss(p0).toFixed(4)} -> f32 ${loss(p32).toFixed(4)}, 8-bit ${loss(p8).toFixed(4)}; ` +
      `relative error of the 8-bit displacement vs f32: ${e.toExponential(3)}`);
    t.true(e > 0, '8-bit states are not f32 states');
    t.true(e < 0.05, `8-bit run within 5% of the f32 run (${e})`);
    // Both end at the noise floor of the problem, the 8-bit run a little above it.
    t.true(loss(p8) < 0.2 * loss(p0) && Math.abs(loss(p8) - loss(p32)) < 0.15 * loss(p32), 'about the same loss reached');
  });

  test(`${device}: states in paged memory (a mapped file, or CUDA managed memory) step as ordinary ones`, (t) => {
    const rng = makeRng(t);
    const s = random8bit(rng, 9000);
    const a = load8bit(s, device);
    const dir = tmp();
    const paged = (x: Tensor) => {
      const p = Tensor.mapped(x.shape, { dtype: x.dtype, device, dir });
      p.copyFrom(x);
      return p;
    };
    const b = { ...a, param: paged(a.param), m: paged(a.m), v: paged(a.v), mAbsmax: paged(a.mAbsmax!), vAbsmax: paged(a.vAbsmax!) };
    t.true(b.m.paged && b.param.paged && b.m.device === device);
    for (let step = 1; step <= 3; step++) {
      ops.adamw8bit([a], { lr: 1e-2, step });
      ops.adamw8bit([b], { lr: 1e-2, step });
    }
    for (const k of ['param', 'm', 'v', 'mAbsmax', 'vAbsmax'] as const) t.deepEqual(b[k]!.toArray(), a[k]!.toArray(), k);
    for (const x of Object.values(b)) if (x instanceof Tensor) x.dispose();
    t.deepEqual(fs.readdirSync(dir), []);
  });

  test(`${device}: a NaN or inf gradient leaves that tensor's param and states as they were`, (t) => {
    const rng = makeRng(t);
    const sizes = [5000, 6000, 4096, 100];
    const states = sizes.map((n) => random8bit(rng, n));
    states[0].g[4321] = NaN;
    states[1].g[0] = Infinity;
    states[3].g[99] = -Infinity;
    const params = states.map((s, i) => {
      const p = load8bit(s, device);
      if (i < 3) return p;
      return { ...p, m: Tensor.from(randn(rng, 100), [100], { device }), v: Tensor.from(randn(rng, 100).map(Math.abs), [100], { device }), mAbsmax: null, vAbsmax: null };
    });
    const before = params.map((p) => [p.param, p.m, p.v, p.mAbsmax, p.vAbsmax].map((x) => x?.toArray()));
    t.is(ops.adamw8bit(params, { lr: 1e-2, step: 3 }), 3);
    for (const i of [0, 1, 3]) {
      const after = [params[i].param, params[i].m, params[i].v, params[i].mAbsmax, params[i].vAbsmax].map((x) => x?.toArray());
      t.deepEqual(after, before[i], `tensor ${i} untouched`);
    }
    t.notDeepEqual(params[2].param.toArray(), before[2][0], 'the finite tensor is updated');
    // Without the count (a training step's way): NaN back, the same skips and the same update.
    const again = states.map((s, i) => {
      const p = load8bit(s, device);
      return i < 3 ? p : { ...params[3], param: Tensor.from(before[3][0] as Float32Array, [100], { device }) };
    });
    t.true(Number.isNaN(ops.adamw8bit(again, { lr: 1e-2, step: 3, countSkipped: false })));
    again.forEach((p, i) => t.deepEqual(p.param.toArray(), params[i].param.toArray(), `tensor ${i}, not counted`));
  });
}

test('mapped tensors read, write and view like heap tensors; their file goes at dispose', (t) => {
  const rng = makeRng(t);
  const dir = tmp();
  const file = path.join(dir, 'states.bin');
  const a = Tensor.mapped([3, 1000], { file });
  t.true(a.paged);
  t.false(Tensor.zeros([2]).paged);
  t.true(fs.existsSync(file));
  t.is(fs.statSync(file).size, 12000);
  t.deepEqual(a.toFloat32Array(), new Float32Array(3000), 'starts zeroed');
  const x = randn(rng, 3000);
  a.write(x);
  t.deepEqual(a.toFloat32Array(), x);
  const row = a.view(1000, [1000]);
  t.true(row.paged);
  t.deepEqual(row.toFloat32Array(), x.slice(1000, 2000));
  const fd = fs.openSync(file, 'r');
  const onDisk = Buffer.alloc(12000);
  fs.readSync(fd, onDisk, 0, 12000, 0);
  fs.closeSync(fd);
  t.deepEqual(new Float32Array(onDisk.buffer, onDisk.byteOffset, 3000), x, 'MAP_SHARED: the bytes are the file');
  const heap = Tensor.zeros([3000]);
  heap.copyFrom(a);
  t.deepEqual(heap.toFloat32Array(), x);
  a.dispose();
  t.deepEqual(row.toFloat32Array(), x.slice(1000, 2000), 'a view keeps the mapping alive');
  t.true(fs.existsSync(file));
  row.dispose();
  t.false(fs.existsSync(file), 'the file is removed when the last handle goes');

  // Unnamed: never visible in its folder, and unmapped at dispose.
  const b = Tensor.mapped([5, 7], { dtype: 'u8', dir });
  t.deepEqual(fs.readdirSync(dir), []);
  b.write(Uint8Array.from({ length: 35 }, (_, i) => i));
  t.is(b.toArray()[34], 34);
  const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(path.join(dir, 'peftkit-paged-'))).length;
  if (fs.existsSync('/proc/self/maps')) t.is(mapped(), 1, 'one mapping while alive');
  b.dispose();
  if (fs.existsSync('/proc/self/maps')) t.is(mapped(), 0, 'unmapped at dispose');
  t.is(Tensor.mapped([0], { dir }).numel, 0);

  const code = (f: () => unknown) => t.throws(f, { instanceOf: PeftkitError })?.code;
  fs.writeFileSync(file, 'taken');
  t.is(code(() => Tensor.mapped([4], { file })), 'E_IO', 'an existing file is never overwritten');
  t.is(fs.readFileSync(file, 'utf8'), 'taken');
  t.is(code(() => Tensor.mapped([4], { dir: path.join(dir, 'missing') })), 'E_IO');
  t.is(code(() => Tensor.mapped([4], { dir: '' })), 'E_ARG');
  t.is(code(() => Tensor.mapped([-1], { dir })), 'E_SHAPE');
});

const trainable = (rng: Rng, sizes: number[][]) =>
  sizes.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    return { name: `layer${i}.weight`, param: Tensor.from(randn(rng, n), shape), grad: Tensor.zeros(shape) };
  });

function stepAll(opt: AdamW, grads: Float32Array[][], from: number, to: number): void {
  for (let s = from; s < to; s++) {
    opt.params.forEach((p, i) => p.grad.write(grads[s][i]));
    opt.update(1e-2);
  }
}

test('optimizer kinds: small tensors keep f32 states; paged states give the in-RAM results', (t) => {
  const rng = makeRng(t);
  const shapes = [[4095], [64, 64], [3, 1500], [7]];
  const init = trainable(rng, shapes).map((p) => p.param.toFloat32Array());
  const grads = Array.from({ length: 3 }, () => shapes.map((s) => randn(rng, s[0] * (s[1] ?? 1))));
  const results = new Map<OptimName, AdamW>();
  for (const optim of ['adamw', 'adamw8bit', 'paged_adamw', 'paged_adamw8bit'] as const) {
    const params = shapes.map((shape, i) => ({ name: `t${i}`, param: Tensor.from(init[i], shape), grad: Tensor.zeros(shape) }));
    const opt = new AdamW(params, { optim, weightDecay: 0.1, pagedDir: tmp() });
    stepAll(opt, grads, 0, 3);
    results.set(optim, opt);
    const eight = optim.endsWith('8bit');
    t.deepEqual(opt.m.map((m) => m.dtype), eight ? ['f32', 'u8', 'u8', 'f32'] : ['f32', 'f32', 'f32', 'f32'], `${optim}: state dtypes`);
    t.deepEqual(opt.mAbsmax.map((a) => a?.shape ?? null), eight ? [null, [16], [18], null] : [null, null, null, null], `${optim}: absmax`);
    t.is(opt.m.every((m) => m.paged), optim.startsWith('paged'), `${optim}: paged states`);
    const f32Bytes = 8 * (4095 + 4096 + 4500 + 7);
    t.is(opt.stateBytes, eight ? 8 * (4095 + 7) + 2 * (4096 + 4500) + 8 * (16 + 18) : f32Bytes, `${optim}: state bytes`);
  }
  const same = (a: AdamW, b: AdamW, what: string) =>
    a.params.forEach((p, i) => {
      t.deepEqual(b.params[i].param.toArray(), p.param.toArray(), `${what}: param ${i}`);
      t.deepEqual(b.m[i].toArray(), a.m[i].toArray(), `${what}: m ${i}`);
      t.deepEqual(b.v[i].toArray(), a.v[i].toArray(), `${what}: v ${i}`);
    });
  same(results.get('adamw')!, results.get('paged_adamw')!, 'paged_adamw = adamw');
  same(results.get('adamw8bit')!, results.get('paged_adamw8bit')!, 'paged_adamw8bit = adamw8bit');
  // The small tensors' f32 states follow plain AdamW bit for bit.
  for (const i of [0, 3]) t.deepEqual(results.get('adamw8bit')!.params[i].param.toArray(), results.get('adamw')!.params[i].param.toArray());
  t.notDeepEqual(results.get('adamw8bit')!.params[1].param.toArray(), results.get('adamw')!.params[1].param.toArray());
  for (const o of results.values()) {
    o.dispose();
    for (const p of o.params) p.param.dispose();
  }
  t.throws(() => new AdamW([], { optim: 'sgd' as OptimName }), { instanceOf: PeftkitError, code: 'E_ARG' });
});

test('checkpoints save and restore every optimizer kind exactly', (t) => {
  const rng = makeRng(t);
  const shapes = [[16, 300], [5], [4096]];
  const init = shapes.map((s) => randn(rng, s[0] * (s[1] ?? 1)));
  const grads = Array.from({ length: 4 }, () => shapes.map((s) => randn(rng, s[0] * (s[1] ?? 1))));
  // The adapter half of a checkpoint is tested with training; here only the optimizer's.
  const adapter = { writeFiles: () => undefined, loadWeightsFrom: () => undefined } as unknown as LoraAdapter;
  const make = (optim: OptimName) =>
    new AdamW(shapes.map((shape, i) => ({ name: `m.t${i}`, param: Tensor.from(init[i], shape), grad: Tensor.zeros(shape) })), { optim, pagedDir: tmp() });
  const state = (step: number): TrainerState => ({ step, totalSteps: 4, position: { epoch: 0, index: 0 }, seed: 0, elapsedS: 0, tokensSeen: 0, fingerprint: {} });
  for (const [saved, resumed] of [['adamw', 'paged_adamw'], ['adamw8bit', 'paged_adamw8bit'], ['paged_adamw8bit', 'adamw8bit'], ['paged_adamw', 'adamw']] as const) {
    const straight = make(saved);
    stepAll(straight, grads, 0, 4);
    const first = make(saved);
    stepAll(first, grads, 0, 2);
    const out = tmp();
    const dir = saveCheckpoint(out, adapter, first, state(2));
    const file = new SafetensorsFile(path.join(dir, 'optimizer.safetensors'));
    t.is(file.tensors.get('exp_avg.m.t0')!.dtype, saved.endsWith('8bit') ? 'U8' : 'F32', `${saved}: stored moments`);
    t.is(file.tensors.has('exp_avg_sq_absmax.m.t0'), saved.endsWith('8bit'));
    t.is(file.tensors.get('exp_avg.m.t1')!.dtype, 'F32', 'small tensors: f32 moments');
    const second = make(resumed);
    second.params.forEach((p, i) => p.param.copyFrom(first.params[i].param)); // the adapter's part
    restoreCheckpoint(dir, adapter, second, state(2));
    t.is(second.step, 2);
    stepAll(second, grads, 2, 4);
    straight.params.forEach((p, i) => {
      t.deepEqual(second.params[i].param.toArray(), p.param.toArray(), `${saved} -> ${resumed}: param ${i}`);
      t.deepEqual(second.m[i].toArray(), straight.m[i].toArray(), `${saved} -> ${resumed}: m ${i}`);
      t.deepEqual(second.vAbsmax[i]?.toArray(), straight.vAbsmax[i]?.toArray(), `${saved} -> ${resumed}: v absmax ${i}`);
    });
    const other = make(saved.endsWith('8bit') ? 'adamw' : 'adamw8bit');
    const err = t.throws(() => restoreCheckpoint(dir, adapter, other, state(2)), { instanceOf: PeftkitError });
    t.is(err?.code, 'E_ARG');
    t.regex(err!.message, /resume with the optim/);
    for (const o of [straight, first, second, other]) o.dispose();
  }
});

test('train options: optim is checked and defaults to adamw', (t) => {
  const base = { model: 'm', data: 'd', out: 'o' };
  t.is(resolveTrainOptions(base).optim, 'adamw');
  t.is(resolveTrainOptions({ ...base, optim: 'paged_adamw8bit' }).optim, 'paged_adamw8bit');
  t.is(resolveTrainOptions(base).pagedDir, os.tmpdir());
  const err = t.throws(() => resolveTrainOptions({ ...base, optim: 'adam' as OptimName }), { instanceOf: PeftkitError });
  t.is(err?.code, 'E_ARG');
  t.regex(err!.message, /optim: expected one of adamw, adamw8bit, paged_adamw, paged_adamw8bit/);
  t.is(t.throws(() => resolveTrainOptions({ ...base, pagedDir: '' }), { instanceOf: PeftkitError })?.code, 'E_ARG');
});

test('adamw8bit rejects bad arguments with PeftkitError codes', async (t) => {
  const code = (f: () => unknown) => t.throws(f, { instanceOf: PeftkitError })?.code;
  const n = 300;
  const slot = (): ops.AdamW8bitParam => ({ param: Tensor.zeros([n]), grad: Tensor.zeros([n]), ...ops.adamw8bitState([n], { quantized: true }) });
  const ok = slot();
  t.notThrows(() => ops.adamw8bit([ok], { step: 1 }));
  t.is(code(() => ops.adamw8bit([{ ...slot(), mAbsmax: null }], { step: 1 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([{ ...slot(), vAbsmax: Tensor.zeros([3]) }], { step: 1 })), 'E_SHAPE');
  t.is(code(() => ops.adamw8bit([{ ...slot(), mAbsmax: Tensor.zeros([2], { dtype: 'bf16' }) }], { step: 1 })), 'E_DTYPE');
  t.is(code(() => ops.adamw8bit([{ ...slot(), v: Tensor.zeros([n]) }], { step: 1 })), 'E_DTYPE');
  t.is(code(() => ops.adamw8bit([{ ...slot(), m: Tensor.zeros([n], { dtype: 'i32' }) }], { step: 1 })), 'E_DTYPE');
  t.is(code(() => ops.adamw8bit([{ ...slot(), m: Tensor.zeros([n + 1], { dtype: 'u8' }) }], { step: 1 })), 'E_SHAPE');
  t.is(code(() => ops.adamw8bit([{ ...slot(), grad: Tensor.zeros([2, 150]) }], { step: 1 })), 'E_SHAPE');
  const f32 = { param: Tensor.zeros([n]), grad: Tensor.zeros([n]), m: Tensor.zeros([n]), v: Tensor.zeros([n]) };
  t.notThrows(() => ops.adamw8bit([f32], { step: 1 }));
  t.is(code(() => ops.adamw8bit([{ ...f32, mAbsmax: Tensor.zeros([2]) }], { step: 1 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([ok, ok], { step: 1 })), 'E_ARG');
  const shared = slot();
  t.is(code(() => ops.adamw8bit([{ ...shared, vAbsmax: shared.mAbsmax }], { step: 1 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([ok], { step: 0 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([ok], { step: 1, lr: NaN })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([ok], { step: 1, betas: [0.9, 1] })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([ok], { step: 1, weightDecay: -1 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([{ ...slot(), param: {} as Tensor }], { step: 1 })), 'E_ARG');
  t.is(code(() => ops.adamw8bit([null as unknown as ops.AdamW8bitParam], { step: 1 })), 'E_ARG');
  const gone = Tensor.zeros([n]);
  gone.dispose();
  t.is(code(() => ops.adamw8bit([{ ...slot(), grad: gone }], { step: 1 })), 'E_DISPOSED');
  t.is(code(() => ops.dynamicMap('nf4' as 'signed')), 'E_ARG');
  // The async twin: same result, inputs kept alive while it runs.
  const a = slot(), b = slot();
  a.grad.write(new Float32Array(n).fill(0.5));
  b.grad.write(new Float32Array(n).fill(0.5));
  ops.adamw8bit([a], { step: 1 });
  const pr = ops.adamw8bitAsync([b], { step: 1 });
  b.grad.dispose();
  t.is(await pr, 0);
  t.deepEqual(b.m.toArray(), a.m.toArray());
  t.deepEqual(b.param.toArray(), a.param.toArray());
});

test('train() with adamw8bit, stopped and resumed as paged_adamw8bit, ends at the uninterrupted adapter', async (t) => {
  const dir = tmp();
  const model = path.join(dir, 'model');
  // hidden 128 and r 32: q_proj's lora_A and lora_B have 4096 elements (8-bit states), v_proj's
  // lora_B 2048 (f32 states).
  writeRandomModel(model, { hiddenSize: 128, numHeads: 4, numKvHeads: 2, numLayers: 1, seed: 5 });
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `item ${i} is followed by ${i + 1}.` })).join('\n') + '\n');
  // 20 steps: the abort asked for at step 3's event lands at a later step boundary, and the
  // steps after 3 are the room for this thread's delay in reading the event (see train.test.ts).
  const common = { model, data, r: 32, alpha: 32, dropout: 0, batchSize: 4, lr: 1e-2, maxLength: 32, seed: 1, steps: 20, pagedDir: dir };
  const straight = path.join(dir, 'straight');
  const losses: number[] = [];
  const run = train({ ...common, out: straight, optim: 'adamw8bit' });
  run.on('step', (e) => losses.push(e.loss));
  await run;
  t.true(losses[5] < losses[0], `loss fell: ${losses.slice(0, 6).map((l) => l.toFixed(3)).join(' ')}`);
  const out = path.join(dir, 'resumed');
  const ctrl = new AbortController();
  const stopped = train({ ...common, out, optim: 'adamw8bit', saveEvery: 2, signal: ctrl.signal });
  stopped.on('step', (e) => {
    if (e.step === 3) ctrl.abort();
  });
  t.is((await t.throwsAsync(stopped.result, { instanceOf: PeftkitError }))?.code, 'E_ABORTED');
  const ck = new SafetensorsFile(path.join(out, 'checkpoints', 'step-2', 'optimizer.safetensors'));
  const dtypes = new Set([...ck.tensors.values()].map((i) => i.dtype));
  t.deepEqual([...dtypes].sort(), ['F32', 'U8'], 'the checkpoint holds 8-bit codes and f32 states');
  await train({ ...common, out, optim: 'paged_adamw8bit', resume: out });
  const m = LlamaModel.load(model);
  const a = Adapter.load(straight, m.linearModules).stateDict();
  const b = Adapter.load(out, m.linearModules).stateDict();
  for (const [k, v] of a) t.deepEqual(b.get(k), v, `${k} after resume`);
  m.dispose();
});

// The paged optimizer's claim, tested for real: states larger than the memory a process may use.
// A child process runs in a memory cgroup limited to LIMIT with swap off. Its parameter (24M
// elements) has param and grad in mapped files too, since in f32 they would be as big as the
// states; only where the two moments live differs between the two runs. paged_adamw: 192 MiB
// of states (2x the limit; 384 MiB touched per step) in a mapped file, and it finishes with
// the right numbers. adamw: the same states in RAM, and the kernel kills it (SIGKILL).
const LIMIT = 96 << 20;
const PAGED_N = 24 << 20;
const TMPFS_MAGIC = 0x01021994;
const pagedSkip = (() => {
  if (process.platform !== 'linux') return 'memory cgroups are Linux only';
  if (fs.statfsSync(os.tmpdir()).type === TMPFS_MAGIC) return `${os.tmpdir()} is tmpfs: its pages cannot be paged out without swap`;
  const cg = makeMemoryCgroup(LIMIT);
  if (typeof cg === 'string') return cg;
  cg.remove();
  return null;
})();

(pagedSkip ? test.skip : test)(
  `paged_adamw: states twice a child's memory limit page through a file; in RAM the child is killed${pagedSkip ? ` (skipped: ${pagedSkip})` : ''}`,
  async (t) => {
    const child = path.join(__dirname, 'helpers', 'paged_child.js');
    const run = async (optim: OptimName) => {
      const cg = makeMemoryCgroup(LIMIT);
      if (typeof cg === 'string') throw new Error(cg);
      const dir = tmp();
      try {
        const r = await cg.run(process.execPath, [child, optim, String(PAGED_N), dir]);
        return { ...r, peak: cg.peakBytes(), left: fs.readdirSync(dir) };
      } finally {
        cg.remove();
      }
    };
    const paged = await run('paged_adamw');
    t.is(paged.code, 0, `paged child: ${paged.stderr.slice(0, 500)}`);
    const out = JSON.parse(paged.stdout) as { stateBytes: number; paged: boolean; bad: number };
    t.true(out.paged);
    t.true(out.stateBytes >= 2 * LIMIT, `states ${out.stateBytes >> 20} MiB, limit ${LIMIT >> 20} MiB`);
    t.is(out.bad, 0, 'params and moments after two steps are exact');
    t.deepEqual(paged.left, [], 'no state file left behind');
    t.true(paged.peak === null || paged.peak <= LIMIT, 'the cgroup held it to its limit');
    const inRam = await run('adamw');
    t.is(inRam.signal, 'SIGKILL', `the same states in RAM: exit ${inRam.code}, signal ${inRam.signal}, ${inRam.stdout}`);
    t.log(`limit ${LIMIT >> 20} MiB: paged_adamw with ${out.stateBytes >> 20} MiB of states finished (peak ${(paged.peak ?? NaN) / 2 ** 20} MiB); adamw was killed`);
  },
);
