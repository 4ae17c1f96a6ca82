/**
 * Text generation with a KV cache: the prompt runs through the model once (prefill), then
 * one token at a time, each step attending to the cached keys and values of every earlier
 * position. Sampling: greedy at temperature 0, else temperature + nucleus (top-p), seeded.
 * An adapter, when given, is applied unmerged (LoRA beside the frozen base).
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import type { LoraAdapter } from '../peft/lora';
import { Tensor } from '../tensor';
import { SeededRng } from '../train/rng';
import type { LlamaModel } from './llama';

export interface GenerateOptions {
  /** Tokens to generate at most. Defaults to `64`. */
  maxNewTokens?: number;
  /** 0 = greedy. Defaults to `0.7`. */
  temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP. Defaults to `0.95`. */
  topP?: number;
  /** Seed of the sampler. Defaults to `0`. */
  seed?: number;
  /** Stop at any of these token ids (the model's EOS by default). */
  stopTokens?: number[];
  /** A LoRA adapter to apply. Defaults to none (the base model). */
  adapter?: LoraAdapter | null;
}

const LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];

/** Runs a prompt and continues it; returns the new token ids (not the prompt). */
export function generateIds(model: LlamaModel, prompt: readonly number[], o: GenerateOptions = {}): number[] {
  if (prompt.length === 0) throw new PeftkitError('E_ARG', 'generate: the prompt is empty (give at least one token, e.g. BOS)');
  const g = new KvGenerator(model, prompt.length + (o.maxNewTokens ?? 64), o.adapter ?? null);
  try {
    const rng = new SeededRng(o.seed ?? 0);
    const stop = new Set(o.stopTokens ?? ([] as number[]).concat(model.config.eosTokenId ?? []));
    const out: number[] = [];
    let logits = g.feed(prompt);
    for (let i = 0; i < (o.maxNewTokens ?? 64); i++) {
      checkFinite(model, logits, i, o.adapter ?? null);
      const next = sample(logits, o.temperature ?? 0.7, o.topP ?? 0.95, rng);
      out.push(next);
      if (stop.has(next)) break;
      if (i + 1 < (o.maxNewTokens ?? 64)) logits = g.feed([next]);
    }
    return out;
  } finally {
    g.dispose();
  }
}

/** NaN or infinite logits would sample garbage silently: they come from non-finite weights. */
function checkFinite(model: LlamaModel, logits: Float32Array, generated: number, adapter: LoraAdapter | null): void {
  for (let i = 0; i < logits.length; i++) {
    if (!Number.isFinite(logits[i])) {
      throw new PeftkitError(
        'E_NAN',
        `generate: logit ${i} is ${logits[i]} after ${generated} generated token(s): a weight in ${model.source}` +
          `${adapter ? ` or in the adapter${adapter.source ? ` ${adapter.source}` : ''}` : ''} holds NaN or Infinity, or the activations overflowed`,
      );
    }
  }
}

/**
 * The tokens by falling probability (ties in index order), at least up to where their mass
 * reaches `target`: the nucleus is a prefix of this. Rather than sorting the whole vocabulary
 * for every token (~30 ms at 128k), the tokens above a threshold are gathered, the threshold
 * falling 16× a pass until their mass reaches the target; they are a prefix of the full order
 * (every tie at the threshold is in), so sorting them alone gives the same nucleus.
 */
function nucleusCandidates(probs: Float64Array, top: number, target: number): number[] {
  for (let t = top / 16, pass = 0; pass < 8; t /= 16, pass++) {
    const chosen: number[] = [];
    let mass = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] >= t) {
        chosen.push(i);
        mass += probs[i];
      }
    }
    // A margin over the target: the caller sums the same mass in another order.
    if (mass >= target * (1 + 1e-9)) return chosen.sort((a, b) => probs[b] - probs[a]);
  }
  return Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
}

export function sample(logits: Float32Array, temperature: number, topP: number, rng: SeededRng): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature <= 0) return best;
  const probs = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    probs[i] = Math.exp((logits[i] - logits[best]) / temperature);
    sum += probs[i];
  }
  const order = nucleusCandidates(probs, probs[best], topP * sum);
  let kept = 0;
  let mass = 0;
  while (kept < order.length && (kept === 0 || mass < topP * sum)) mass += probs[order[kept++]];
  let u = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    u -= probs[order[i]];
    if (u <= 0) return order[i];
  }
  return order[kept - 1];
}

/** The model with its KV cache, fed tokens chunk by chunk (batch size 1). */
export class KvGenerator {
  private readonly model: LlamaModel;
  private readonly adapter: LoraAdapter | null;
  private readonly maxT: number;
  private readonly k: Tensor[] = [];
  private readonly v: Tensor[] = [];
  private readonly bufs: Tensor[] = [];
  private pos = 0;

  constructor(model: LlamaModel, maxT: number, adapter: LoraAdapter | null) {
    this.model = model;
    this.adapter = adapter;
    this.maxT = maxT;
    model.checkSequenceLength(maxT);
    const c = model.config;
    for (let l = 0; l < c.numLayers; l++) {
      this.k.push(Tensor.empty([maxT * c.numKvHeads * c.headDim], { device: model.device }));
      this.v.push(Tensor.empty([maxT * c.numKvHeads * c.headDim], { device: model.device }));
    }
  }

  private tmp(shape: number[], dtype: 'f32' | 'i32' = 'f32'): Tensor {
    const t = Tensor.empty(shape, { device: this.model.device, dtype });
    this.bufs.push(t);
    return t;
  }

  private linear(l: number, suffix: string, Y: Tensor, X: Tensor): void {
    const p = `model.layers.${l}.${suffix}`;
    const lw = this.model.linear(`${p}.weight`);
    const bias = this.model.maybeWeight(`${p}.bias`);
    const lo = this.adapter?.layers.get(p);
    const compute = this.model.compute;  // as in training, so a trained adapter sees the same products
    if (lo) {
      const xa = this.tmp([X.shape[0], lo.A.shape[0]]);
      ops.loraForward(Y, xa, X, 'q' in lw ? lw.q : lw.W, lo.A, lo.B, { scale: this.adapter!.scaling, bias, compute });
      return;
    }
    if ('q' in lw) ops.gemmQuant(Y, X, lw.q, { transB: true, compute });
    else ops.gemm(Y, X, lw.W, { transB: true, compute });
    if (bias) ops.biasAdd(Y, bias);
  }

  /** Appends tokens to the context; returns the logits after the last one. */
  feed(tokens: readonly number[]): Float32Array {
    const c = this.model.config;
    const n = tokens.length;
    if (this.pos + n > this.maxT) throw new PeftkitError('E_ARG', `generate: context of ${this.pos + n} tokens exceeds the cache (${this.maxT})`);
    const C = c.hiddenSize, D = c.headDim, QD = c.numHeads * D, KD = c.numKvHeads * D, F = c.intermediateSize;
    const ids = this.tmp([n], 'i32');
    ids.write(Int32Array.from(tokens));
    const x = this.tmp([n, C]);
    ops.embeddingForward(x, ids, this.model.weight('model.embed_tokens.weight'));
    const pos = this.tmp([n], 'i32');
    pos.write(Int32Array.from({ length: n }, (_, i) => this.pos + i));
    const cos = this.tmp([n, D / 2]), sin = this.tmp([n, D / 2]);
    ops.ropeTable(cos, sin, pos, { theta: c.ropeTheta, scaling: c.ropeScaling });
    const h = this.tmp([n, C]), rstd = this.tmp([n]), q = this.tmp([n, QD]), att = this.tmp([n, QD]), lse = this.tmp([c.numHeads * n]);
    const o = this.tmp([n, C]), g = this.tmp([n, F]), u = this.tmp([n, F]), act = this.tmp([n, F]);
    const Tk = this.pos + n;
    for (let l = 0; l < c.numLayers; l++) {
      const p = `model.layers.${l}.`;
      ops.rmsnormForward(h, rstd, x, this.model.weight(`${p}input_layernorm.weight`), { eps: c.rmsNormEps });
      this.linear(l, LINEARS[0], q, h);
      // New keys and values go straight into their cache slots.
      const kNew = this.k[l].view(this.pos * KD, [n, KD]);
      const vNew = this.v[l].view(this.pos * KD, [n, KD]);
      this.linear(l, LINEARS[1], kNew, h);
      this.linear(l, LINEARS[2], vNew, h);
      const q4 = q.view(0, [1, n, c.numHeads, D]);
      const k4 = kNew.view(0, [1, n, c.numKvHeads, D]);
      ops.ropeForward(q4, q4, cos, sin);
      ops.ropeForward(k4, k4, cos, sin);
      ops.attentionForward(att.view(0, [1, n, c.numHeads, D]), lse.view(0, [1, c.numHeads, n]), q4,
        this.k[l].view(0, [1, Tk, c.numKvHeads, D]), this.v[l].view(0, [1, Tk, c.numKvHeads, D]), { scale: 1 / Math.sqrt(D) });
      this.linear(l, LINEARS[3], o, att);
      ops.add(x, x, o);
      ops.rmsnormForward(h, rstd, x, this.model.weight(`${p}post_attention_layernorm.weight`), { eps: c.rmsNormEps });
      this.linear(l, LINEARS[4], g, h);
      this.linear(l, LINEARS[5], u, h);
      ops.swigluForward(act, g, u);
      this.linear(l, LINEARS[6], o, act);
      ops.add(x, x, o);
    }
    this.pos += n;
    const last = x.view((n - 1) * C, [1, C]);
    const hl = this.tmp([1, C]);
    ops.rmsnormForward(hl, this.tmp([1]), last, this.model.weight('model.norm.weight'), { eps: c.rmsNormEps });
    const logits = this.tmp([1, c.vocabSize]);
    const head = this.model.weight('lm_head.weight');
    const lo = this.adapter?.layers.get('lm_head');
    if (lo) ops.loraForward(logits, this.tmp([1, lo.A.shape[0]]), hl, head, lo.A, lo.B, { scale: this.adapter!.scaling, compute: this.model.compute });
    else ops.gemm(logits, hl, head, { transB: true, compute: this.model.compute });
    const out = logits.toFloat32Array();
    this.releaseTemps();
    return out;
  }

  private releaseTemps(): void {
    for (const t of this.bufs) t.dispose();
    this.bufs.length = 0;
  }

  dispose(): void {
    this.releaseTemps();
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}
