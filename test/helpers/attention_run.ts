/**
 * Runs attention forward + backward on seeded inputs, in this process or (run as a script) in a
 * child whose PEFTKIT_ISA caps the CPU dispatch, so the lower ISA paths are tested too: the ISA
 * is read once per process. Script use: `node attention_run.js '<json AttentionRunSpec>'` prints
 * the AttentionResult[] as JSON.
 */
import { Tensor, ops } from '../../src/index';
import type { Device } from '../../src/index';
import { makeRng, poisoned, randn } from './check';
import type { Rng } from './check';

export interface AttentionShape {
  B: number;
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  /** undefined: the default 1/sqrt(D) */
  scale?: number;
}

export interface AttentionInputs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout: Float32Array;
}

export interface AttentionResult {
  out: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

export interface AttentionRunSpec {
  seed: number;
  shapes: AttentionShape[];
}

export function makeInputs(rng: Rng, s: AttentionShape): AttentionInputs {
  const nq = s.B * s.Tq * s.Hq * s.D, nk = s.B * s.Tk * s.Hkv * s.D;
  return { q: randn(rng, nq), k: randn(rng, nk), v: randn(rng, nk), dout: randn(rng, nq) };
}

/** Forward then backward (dout as the output gradient), every output poisoned first. */
export function runAttention(s: AttentionShape, x: AttentionInputs, device: Device = 'cpu'): AttentionResult {
  const qs = [s.B, s.Tq, s.Hq, s.D], ks = [s.B, s.Tk, s.Hkv, s.D];
  const q = Tensor.from(x.q, qs, { device }), dout = Tensor.from(x.dout, qs, { device });
  const k = Tensor.from(x.k, ks, { device }), v = Tensor.from(x.v, ks, { device });
  const out = poisoned(qs, device), lse = poisoned([s.B, s.Hq, s.Tq], device);
  const dq = poisoned(qs, device), dk = poisoned(ks, device), dv = poisoned(ks, device);
  const o = s.scale === undefined ? {} : { scale: s.scale };
  ops.attentionForward(out, lse, q, k, v, o);
  ops.attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, o);
  const r = {
    out: out.toFloat32Array(), lse: lse.toFloat32Array(), dq: dq.toFloat32Array(), dk: dk.toFloat32Array(),
    dv: dv.toFloat32Array(),
  };
  for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
  return r;
}

/** The results for a spec: inputs drawn in order from one rng seeded with spec.seed. */
export function runSpec(spec: AttentionRunSpec): AttentionResult[] {
  const rng = makeRng(undefined, spec.seed);
  return spec.shapes.map((s) => runAttention(s, makeInputs(rng, s)));
}

if (require.main === module) {
  const results = runSpec(JSON.parse(process.argv[2]) as AttentionRunSpec);
  // NaN and Infinity do not survive JSON: send them as strings.
  const enc = (a: Float32Array) => Array.from(a, (x) => (Number.isFinite(x) ? x : String(x)));
  const encoded = results.map((r) => ({ out: enc(r.out), lse: enc(r.lse), dq: enc(r.dq), dk: enc(r.dk), dv: enc(r.dv) }));
  process.stdout.write(JSON.stringify(encoded));
}
