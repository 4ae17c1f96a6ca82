/**
 * Text generation with a KV cache: the prompt runs through the model once (prefill), then
 * one token at a time, each step attending to the cached keys and values of every earlier
 * position. Sampling: greedy at temperature 0, else temperature + nucleus (top-p), seeded.
 * An adapter, when given, is applied unmerged through its sites (the same layer code as training).
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import { SeededRng } from '../util/rng';
import type { LlamaModel } from './llama';
import { LayerActs, LayerCache, LlamaLayers, PassOptions } from './llama_layer';
import type { ModelAdapter } from './sites';

export interface GenerateOptions {
  /** Tokens to generate at most. Defaults to `64` (DEFAULT_MAX_NEW_TOKENS). */
  maxNewTokens?: number;
  /** 0 = greedy. Defaults to `0.7`. */
  temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches topP. Defaults to `0.95`. */
  topP?: number;
  /** Seed of the sampler. Defaults to `0`. */
  seed?: number;
  /** Stop at any of these token ids (the model's EOS by default). */
  stopTokens?: number[];
  /** An adapter (any method) to apply unmerged. Defaults to none (the base model). */
  adapter?: ModelAdapter | null;
}

export const DEFAULT_MAX_NEW_TOKENS = 64;

/** Runs a prompt and continues it; returns the new token ids (not the prompt). */
export function generateIds(model: LlamaModel, prompt: readonly number[], o: GenerateOptions = {}): number[] {
  return [...generateTokens(model, prompt, o)];
}

/**
 * The tokens of generateIds one at a time, each yielded as soon as it is sampled (a stop token
 * is yielded, then the generator ends). Returning early (`return()`, a `break` out of a for-of)
 * frees the KV cache at once.
 */
export function* generateTokens(model: LlamaModel, prompt: readonly number[], o: GenerateOptions = {}): Generator<number, void, undefined> {
  if (prompt.length === 0) throw new PeftkitError('E_ARG', 'generate: the prompt is empty (give at least one token, e.g. BOS)');
  const maxNew = o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  const g = new KvGenerator(model, prompt.length + maxNew, o.adapter ?? null);
  try {
    const rng = new SeededRng(o.seed ?? 0);
    const stop = new Set(o.stopTokens ?? ([] as number[]).concat(model.config.eosTokenId ?? []));
    let logits = g.feed(prompt);
    for (let i = 0; i < maxNew; i++) {
      checkFinite(model, logits, i, o.adapter ?? null);
      const next = sample(logits, o.temperature ?? 0.7, o.topP ?? 0.95, rng);
      yield next;
      if (stop.has(next)) break;
      if (i + 1 < maxNew) logits = g.feed([next]);
    }
  } finally {
    g.dispose();
  }
}

/** NaN or infinite logits would sample garbage silently: they come from non-finite weights. @internal */
export function checkFinite(model: LlamaModel, logits: Float32Array, generated: number, adapter: ModelAdapter | null): void {
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
  private readonly layers: LlamaLayers;
  private readonly maxT: number;
  private readonly k: Tensor[] = [];
  private readonly v: Tensor[] = [];
  private readonly bufs: Tensor[] = [];
  private pos = 0;

  constructor(model: LlamaModel, maxT: number, adapter: ModelAdapter | null) {
    this.model = model;
    this.layers = new LlamaLayers(model, adapter);
    // A prefix (prefix tuning) is the cache's first rows, once per generator, unrotated: the
    // prompt's tokens then sit at positions n.., as transformers runs a PEFT prefix.
    const off = adapter?.positionOffset?.() ?? 0;
    const virtual = adapter?.virtualTokens?.();
    this.maxT = maxT + off + (virtual?.weight.shape[0] ?? 0);
    model.checkSequenceLength(this.maxT);
    const c = model.config;
    const KVD = c.numKvHeads * c.headDim;
    for (let l = 0; l < c.numLayers; l++) {
      this.k.push(Tensor.empty([this.maxT * KVD], { device: model.device }));
      this.v.push(Tensor.empty([this.maxT * KVD], { device: model.device }));
      const pre = adapter?.prefix?.(l);
      if (pre) {
        this.k[l].view(0, [off * KVD]).copyFrom(pre.keys.view(0, [off * KVD]));
        this.v[l].view(0, [off * KVD]).copyFrom(pre.values.view(0, [off * KVD]));
      }
    }
    this.pos = off;
    // Virtual tokens (prompt tuning) are the first positions of every sequence: run once, cached.
    if (virtual) {
      const n = virtual.weight.shape[0];
      const x = this.tmp([n, c.hiddenSize]);
      x.copyFrom(virtual.weight);
      this.forwardRows(x, n);
      this.releaseTemps();
    }
  }

  private tmp(shape: number[], dtype: 'f32' | 'i32' = 'f32'): Tensor {
    const t = Tensor.empty(shape, { device: this.model.device, dtype });
    this.bufs.push(t);
    return t;
  }

  /** Appends tokens to the context; returns the logits after the last one. */
  feed(tokens: readonly number[]): Float32Array {
    const c = this.model.config;
    const n = tokens.length;
    if (this.pos + n > this.maxT) throw new PeftkitError('E_ARG', `generate: context of ${this.pos + n} tokens exceeds the cache (${this.maxT})`);
    const C = c.hiddenSize;
    const ids = this.tmp([n], 'i32');
    ids.write(Int32Array.from(tokens));
    const x0 = this.tmp([n, C]);
    ops.embeddingForward(x0, ids, this.layers.adapter?.embedding?.()?.weight ?? this.model.weight('model.embed_tokens.weight'));
    const x = this.forwardRows(x0, n);
    const last = x.view((n - 1) * C, [1, C]);
    const hl = this.tmp([1, C]);
    ops.rmsnormForward(hl, this.tmp([1]), last, this.layers.norm('model.norm').w, { eps: c.rmsNormEps });
    const logits = this.tmp([1, c.vocabSize]);
    const head = this.layers.adapter?.head?.();
    if (head) ops.gemm(logits, hl, head.weight, { transB: true, compute: this.model.compute });
    else this.layers.linearForward('lm_head', logits, hl, { dropout: 0, dropoutSeed: 0, siteStride: 0, weightsFixed: true }, 0);
    const out = logits.toFloat32Array();
    this.releaseTemps();
    return out;
  }

  /** Runs n rows of hidden states [n, C] through the layers at the next positions; returns the last layer's output. */
  private forwardRows(x0: Tensor, n: number): Tensor {
    const c = this.model.config;
    const C = c.hiddenSize, D = c.headDim, QD = c.numHeads * D, KD = c.numKvHeads * D, F = c.intermediateSize;
    let x = x0;
    let xNext = this.tmp([n, C]);
    const pos = this.tmp([n], 'i32');
    pos.write(Int32Array.from({ length: n }, (_, i) => this.pos + i));
    const rope = { cos: this.tmp([n, D / 2]), sin: this.tmp([n, D / 2]) };
    ops.ropeTable(rope.cos, rope.sin, pos, { theta: c.ropeTheta, scaling: c.ropeScaling });
    const pass: PassOptions = { dropout: 0, dropoutSeed: 0, siteStride: 0, weightsFixed: true };
    const a: LayerActs = {
      h1: this.tmp([n, C]), rstd1: this.tmp([n]), q: this.tmp([n, QD]), k: this.tmp([n, KD]), v: this.tmp([n, KD]),
      att: this.tmp([n, QD]), lse: this.tmp([c.numHeads * n]), x2: this.tmp([n, C]), h2: this.tmp([n, C]), rstd2: this.tmp([n]),
      g: this.tmp([n, F]), u: this.tmp([n, F]), act: this.tmp([n, F]),
    };
    for (let l = 0; l < c.numLayers; l++) {
      // New keys and values go straight into their cache slots.
      a.k = this.k[l].view(this.pos * KD, [n, KD]);
      a.v = this.v[l].view(this.pos * KD, [n, KD]);
      this.layers.forward(l, x, xNext, a, 1, n, rope, pass, { k: this.k[l], v: this.v[l], pos: this.pos });
      [x, xNext] = [xNext, x];
    }
    this.pos += n;
    return x;
  }

  /** @internal The position the next token takes (tokens fed so far, plus a prefix or virtual tokens). */
  get position(): number {
    return this.pos;
  }

  /** @internal Layer `l`'s cache as it stands: batched decoding writes the next position's key and value into it. */
  layerCache(l: number): LayerCache {
    return { k: this.k[l], v: this.v[l], pos: this.pos };
  }

  /** @internal A batched decode step wrote one more position into every layer's cache. */
  advance(): void {
    if (this.pos + 1 > this.maxT) throw new PeftkitError('E_ARG', `generate: context of ${this.pos + 1} tokens exceeds the cache (${this.maxT})`);
    this.pos++;
  }

  private releaseTemps(): void {
    for (const t of this.bufs) t.dispose();
    this.bufs.length = 0;
  }

  dispose(): void {
    this.releaseTemps();
    this.layers.dispose();
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}
