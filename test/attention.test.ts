import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Tensor, PeftkitError, ops, runtimeInfo } from '../src/index';
import { assertClose, devices, makeRng, poisoned, relErr } from './helpers/check';
import { makeInputs, runAttention } from './helpers/attention_run';
import type { AttentionInputs, AttentionResult, AttentionShape } from './helpers/attention_run';

interface Reference {
  out: Float64Array;
  lse: Float64Array;
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/**
 * float64 attention the plain way: per (b, h, i) the full softmax over keys j <= i + (Tk - Tq)
 * of scale·q·k, query head h reading kv head floor(h / (Hq/Hkv)); then the gradients from dout.
 */
function refAttention(s: AttentionShape, x: AttentionInputs): Reference {
  const { B, Tq, Tk, Hq, Hkv, D } = s;
  const scale = s.scale ?? 1 / Math.sqrt(D);
  const G = Hq / Hkv, off = Tk - Tq;
  const qi = (b: number, t: number, h: number) => ((b * Tq + t) * Hq + h) * D;
  const ki = (b: number, t: number, h: number) => ((b * Tk + t) * Hkv + h) * D;
  const r: Reference = {
    out: new Float64Array(B * Tq * Hq * D), lse: new Float64Array(B * Hq * Tq), dq: new Float64Array(B * Tq * Hq * D),
    dk: new Float64Array(B * Tk * Hkv * D), dv: new Float64Array(B * Tk * Hkv * D),
  };
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) {
      const hk = Math.floor(h / G);
      for (let i = 0; i < Tq; i++) {
        const n = i + off + 1; // keys this query sees
        const p = new Float64Array(n), dp = new Float64Array(n);
        let m = -Infinity;
        for (let j = 0; j < n; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += x.q[qi(b, i, h) + d] * x.k[ki(b, j, hk) + d];
          p[j] = scale * dot;
          m = Math.max(m, p[j]);
        }
        let sum = 0;
        for (let j = 0; j < n; j++) sum += (p[j] = Math.exp(p[j] - m));
        r.lse[(b * Hq + h) * Tq + i] = m + Math.log(sum);
        for (let j = 0; j < n; j++) p[j] /= sum;
        const o = qi(b, i, h);
        for (let j = 0; j < n; j++)
          for (let d = 0; d < D; d++) r.out[o + d] += p[j] * x.v[ki(b, j, hk) + d];
        // backward: dv_j += p_j dO; dp_j = dO·v_j; ds = p ⊙ (dp − Σ p dp); dq += scale ds k; dk += scale ds q
        let delta = 0;
        for (let j = 0; j < n; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) {
            dot += x.dout[o + d] * x.v[ki(b, j, hk) + d];
            r.dv[ki(b, j, hk) + d] += p[j] * x.dout[o + d];
          }
          dp[j] = dot;
          delta += p[j] * dot;
        }
        for (let j = 0; j < n; j++) {
          const ds = scale * p[j] * (dp[j] - delta);
          for (let d = 0; d < D; d++) {
            r.dq[o + d] += ds * x.k[ki(b, j, hk) + d];
            r.dk[ki(b, j, hk) + d] += ds * x.q[o + d];
          }
        }
      }
    }
  return r;
}

const name = (s: AttentionShape) =>
  `B=${s.B} Tq=${s.Tq} Tk=${s.Tk} Hq=${s.Hq} Hkv=${s.Hkv} D=${s.D}${s.scale === undefined ? '' : ` scale=${s.scale}`}`;

// Tiles are 64 queries × 64 keys: T=130 crosses two tile edges, Tq=67 < Tk=150 puts the query
// and key tile edges at different places (the KV-cache / prefix offset).
const SHAPES: AttentionShape[] = [
  { B: 1, Tq: 1, Tk: 1, Hq: 1, Hkv: 1, D: 8 },
  { B: 2, Tq: 7, Tk: 7, Hq: 2, Hkv: 1, D: 5 },
  { B: 2, Tq: 19, Tk: 19, Hq: 6, Hkv: 2, D: 16 }, // groups of 3
  { B: 1, Tq: 33, Tk: 33, Hq: 3, Hkv: 3, D: 12, scale: 1.1 }, // Hq == Hkv, peaked softmax
  { B: 1, Tq: 130, Tk: 130, Hq: 4, Hkv: 2, D: 24 },
  { B: 1, Tq: 3, Tk: 11, Hq: 4, Hkv: 2, D: 7 }, // KV cache / prefix
  { B: 1, Tq: 67, Tk: 150, Hq: 2, Hkv: 1, D: 16 },
  { B: 2, Tq: 70, Tk: 70, Hq: 2, Hkv: 1, D: 64 },
  { B: 1, Tq: 65, Tk: 65, Hq: 1, Hkv: 1, D: 80 }, // D over one 64-column register block
];

function checkAgainstReference(t: ExecutionContext, got: AttentionResult, want: Reference, what: string): void {
  assertClose(t, got.out, want.out, 1e-5, `${what} out`);
  assertClose(t, got.lse, want.lse, 1e-5, `${what} lse`);
  assertClose(t, got.dq, want.dq, 1e-5, `${what} dq`);
  assertClose(t, got.dk, want.dk, 1e-5, `${what} dk`);
  assertClose(t, got.dv, want.dv, 1e-5, `${what} dv`);
}

for (const device of devices()) {
  test(`${device}: attention forward (out, lse) and backward (dq, dk, dv) match float64`, (t) => {
    const rng = makeRng(t);
    for (const s of SHAPES) {
      const x = makeInputs(rng, s);
      checkAgainstReference(t, runAttention(s, x, device), refAttention(s, x), `${device} ${name(s)}`);
    }
  });

  test(`${device}: attention with no queries still overwrites dk and dv (with zeros)`, (t) => {
    for (const s of [{ B: 2, Tq: 0, Tk: 5, Hq: 2, Hkv: 1, D: 3 }, { B: 1, Tq: 0, Tk: 0, Hq: 1, Hkv: 1, D: 4 }]) {
      const r = runAttention(s, makeInputs(makeRng(t), s), device);
      t.deepEqual(Array.from(r.dk), new Array(s.B * s.Tk * s.Hkv * s.D).fill(0), name(s));
      t.deepEqual(Array.from(r.dv), new Array(s.B * s.Tk * s.Hkv * s.D).fill(0), name(s));
      t.is(r.out.length, 0);
    }
  });
}

test('attention gradient matches finite differences of the forward kernel (loss = Σ G⊙out)', (t) => {
  const rng = makeRng(t);
  const s: AttentionShape = { B: 1, Tq: 5, Tk: 9, Hq: 4, Hkv: 2, D: 6 };
  const x = makeInputs(rng, s); // x.dout plays G
  const grads = runAttention(s, x);
  const qs = [s.B, s.Tq, s.Hq, s.D], ks = [s.B, s.Tk, s.Hkv, s.D];
  const out = Tensor.empty(qs), lse = Tensor.empty([s.B, s.Hq, s.Tq]);
  const Q = Tensor.empty(qs), K = Tensor.empty(ks), V = Tensor.empty(ks);
  const loss = (q: Float32Array, k: Float32Array, v: Float32Array): number => {
    Q.write(q);
    K.write(k);
    V.write(v);
    ops.attentionForward(out, lse, Q, K, V);
    const o = out.toFloat32Array();
    let l = 0;
    for (let i = 0; i < o.length; i++) l += x.dout[i] * o[i];
    return l;
  };
  const eps = 1e-2;
  for (const [which, grad] of [['q', grads.dq], ['k', grads.dk], ['v', grads.dv]] as const) {
    const fd: number[] = [], an: number[] = [];
    for (let n = 0; n < 12; n++) {
      const idx = rng.int(0, grad.length);
      const plus = { q: x.q.slice(), k: x.k.slice(), v: x.v.slice() };
      const minus = { q: x.q.slice(), k: x.k.slice(), v: x.v.slice() };
      plus[which][idx] += eps;
      minus[which][idx] -= eps;
      fd.push((loss(plus.q, plus.k, plus.v) - loss(minus.q, minus.k, minus.v)) / (2 * eps));
      an.push(grad[idx]);
    }
    const e = relErr(an, fd);
    t.true(e < 1e-2, `d${which}: analytic vs finite differences, relative error ${e.toExponential(3)}`);
  }
});

test('attention async twins give the same results', async (t) => {
  const rng = makeRng(t);
  const s: AttentionShape = { B: 1, Tq: 20, Tk: 20, Hq: 4, Hkv: 1, D: 8 };
  const x = makeInputs(rng, s);
  const want = refAttention(s, x);
  const qs = [s.B, s.Tq, s.Hq, s.D], ks = [s.B, s.Tk, s.Hkv, s.D];
  const q = Tensor.from(x.q, qs), k = Tensor.from(x.k, ks), v = Tensor.from(x.v, ks), dout = Tensor.from(x.dout, qs);
  const out = poisoned(qs), lse = poisoned([s.B, s.Hq, s.Tq]);
  const dq = poisoned(qs), dk = poisoned(ks), dv = poisoned(ks);
  await ops.attentionForwardAsync(out, lse, q, k, v);
  await ops.attentionBackwardAsync(dq, dk, dv, dout, q, k, v, out, lse);
  assertClose(t, out.toFloat32Array(), want.out, 1e-5, 'out');
  assertClose(t, dq.toFloat32Array(), want.dq, 1e-5, 'dq');
  assertClose(t, dk.toFloat32Array(), want.dk, 1e-5, 'dk');
  assertClose(t, dv.toFloat32Array(), want.dv, 1e-5, 'dv');
});

// The ISA is chosen once per process, so the lower paths run in child processes.
for (const isa of ['portable', 'avx2'] as const) {
  if (isa === 'avx2' && !runtimeInfo().avx2) {
    test.skip(`attention on the ${isa} CPU path matches float64: no AVX2 on this CPU`, () => {});
    continue;
  }
  test(`attention on the ${isa} CPU path matches float64`, (t) => {
    const spec = { seed: makeRng(t).seed, shapes: [1, 2, 3, 4, 5, 6, 8].map((i) => SHAPES[i]) };
    const script = path.join(__dirname, 'helpers', 'attention_run.js');
    const child = spawnSync(process.execPath, [script, JSON.stringify(spec)], {
      env: { ...process.env, PEFTKIT_ISA: isa },
      encoding: 'utf8',
      maxBuffer: 256 << 20,
    });
    t.is(child.status, 0, child.stderr);
    const dec = (a: Array<number | string>) => Float32Array.from(a, Number);
    const results = JSON.parse(child.stdout) as Array<Record<keyof AttentionResult, Array<number | string>>>;
    const rng = makeRng(undefined, spec.seed);
    spec.shapes.forEach((s, n) => {
      const r = results[n];
      const got = { out: dec(r.out), lse: dec(r.lse), dq: dec(r.dq), dk: dec(r.dk), dv: dec(r.dv) };
      checkAgainstReference(t, got, refAttention(s, makeInputs(rng, s)), `${isa} ${name(s)}`);
    });
  });
}

test('attention rejects bad arguments with PeftkitError codes', (t) => {
  const T = (shape: number[], dtype: 'f32' | 'bf16' | 'i32' = 'f32') => Tensor.zeros(shape, { dtype });
  const code = (f: () => void) => t.throws(f, { instanceOf: PeftkitError })?.code;
  const q = T([1, 4, 6, 8]), k = T([1, 4, 2, 8]), v = T([1, 4, 2, 8]), out = T([1, 4, 6, 8]), lse = T([1, 6, 4]);
  t.notThrows(() => ops.attentionForward(out, lse, q, k, v));
  // heads: 6 query heads over 4 kv heads is no grouping
  const k4 = T([1, 4, 4, 8]), v4 = T([1, 4, 4, 8]);
  const e = t.throws(() => ops.attentionForward(out, lse, q, k4, v4), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_SHAPE');
  t.regex(e!.message, /multiple of key\/value heads/);
  t.is(code(() => ops.attentionForward(out, lse, q, T([1, 4, 2, 7]), T([1, 4, 2, 7]))), 'E_SHAPE'); // D differs
  t.is(code(() => ops.attentionForward(out, lse, q, T([2, 4, 2, 8]), T([2, 4, 2, 8]))), 'E_SHAPE'); // B differs
  t.is(code(() => ops.attentionForward(out, lse, q, k, T([1, 5, 2, 8]))), 'E_SHAPE'); // v unlike k
  t.is(code(() => ops.attentionForward(out, lse, q, T([1, 3, 2, 8]), T([1, 3, 2, 8]))), 'E_SHAPE'); // Tk < Tq
  t.is(code(() => ops.attentionForward(out, T([1, 4, 6]), q, k, v)), 'E_SHAPE'); // lse is [B, Hq, Tq]
  t.is(code(() => ops.attentionForward(T([1, 4, 6, 9]), lse, q, k, v)), 'E_SHAPE');
  t.is(code(() => ops.attentionForward(out, lse, T([4, 6, 8]), k, v)), 'E_SHAPE');
  t.is(code(() => ops.attentionForward(out, lse, T([1, 4, 6, 0]), T([1, 4, 2, 0]), T([1, 4, 2, 0]))), 'E_SHAPE');
  t.is(code(() => ops.attentionForward(out, lse, T([1, 4, 6, 8], 'bf16'), k, v)), 'E_DTYPE');
  t.is(code(() => ops.attentionForward(out, lse, q, k, T([1, 4, 2, 8], 'i32'))), 'E_DTYPE');
  t.is(code(() => ops.attentionForward(out, T([1, 6, 4], 'bf16'), q, k, v)), 'E_DTYPE');
  t.is(code(() => ops.attentionForward(out, lse, q, k, v, { scale: NaN })), 'E_ARG');
  t.is(code(() => ops.attentionForward(out, lse, q, k, {} as Tensor)), 'E_ARG');
  t.is(code(() => ops.attentionForward(q, lse, q, k, v)), 'E_ARG'); // out aliases q
  const dq = T([1, 4, 6, 8]), dk = T([1, 4, 2, 8]), dv = T([1, 4, 2, 8]);
  t.notThrows(() => ops.attentionBackward(dq, dk, dv, out, q, k, v, out, lse));
  t.is(code(() => ops.attentionBackward(dq, T([1, 4, 6, 8]), dv, out, q, k, v, out, lse)), 'E_SHAPE'); // dk like k
  t.is(code(() => ops.attentionBackward(dq, dk, dv, T([1, 4, 6, 7]), q, k, v, out, lse)), 'E_SHAPE'); // dout like q
  t.is(code(() => ops.attentionBackward(dq, dk, dv, out, q, k, v, out, T([1, 6, 5]))), 'E_SHAPE');
  t.is(code(() => ops.attentionBackward(dq, dk, T([1, 4, 2, 8], 'bf16'), out, q, k, v, out, lse)), 'E_DTYPE');
  t.is(code(() => ops.attentionBackward(dq, dk, dk, out, q, k, v, out, lse)), 'E_ARG'); // dk and dv alias
  t.is(code(() => ops.attentionBackward(dq, dk, dv, out, q, k, v, out, lse, { scale: Infinity })), 'E_ARG');
  q.dispose();
  t.is(code(() => ops.attentionForward(out, lse, q, k, v)), 'E_DISPOSED');
});
