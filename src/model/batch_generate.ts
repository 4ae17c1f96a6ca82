/**
 * Batched generation, each row with its own prompt, adapter, sampling options and length: every
 * row is prefilled alone into its own KV cache (llama_generate.ts's KvGenerator, with its adapter's
 * prefix or virtual tokens), then the live rows are decoded together, one token each a step.
 * Decoding at one row reads every weight for a single token (bandwidth-bound); here each frozen
 * Linear is one [rows, in] product over the shared base weights, each row's adapter term added to
 * its own rows (row_groups.ts), attention per row against its own cache, sampling per row with its
 * own seeded stream. Rows end at their own stop token or length and leave the batch.
 *
 * Each row's tokens are those of generating it alone, up to f32 rounding: the batch computes a
 * row's base product with other rows in one GEMM and adds the low-rank term after it, where
 * generation alone fuses them into one one-row product, so logits differ in the last bits
 * (measured ≤ 2e-6 relative on the test models) and only a near-tie could pick another token.
 */
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import { SeededRng } from '../util/rng';
import type { LlamaModel } from './llama';
import { checkFinite, DEFAULT_MAX_NEW_TOKENS, GenerateOptions, KvGenerator, sample } from './llama_generate';
import { LayerActs, LlamaLayers, PassOptions } from './llama_layer';
import { checkBatchable, RowGroup, RowGroupAdapter } from './row_groups';
import type { ModelAdapter } from './sites';

/** One row of a batch. */
export interface BatchRequest {
  /** Prompt token ids (at least one). */
  prompt: readonly number[];
  options: GenerateOptions;
  /** Names the row's adapter in messages. Defaults to its `source`. */
  label?: string;
}

/** What a step produced for one row: its next token (`done` when it was the row's last), or why it failed. */
export type BatchEvent = { row: number; token: number; done: boolean } | { row: number; error: PeftkitError };

interface Row {
  gen: KvGenerator | null;
  rng: SeededRng;
  stop: Set<number>;
  maxNew: number;
  temperature: number;
  topP: number;
  generated: number;
  last: number;
  /** Rows with the same adapter share a group (its index in `adapters`, -1 for none). */
  group: number;
}

const PASS: PassOptions = { dropout: 0, dropoutSeed: 0, siteStride: 0, weightsFixed: true };

export class BatchGenerator {
  private readonly model: LlamaModel;
  private readonly requests: readonly BatchRequest[];
  private readonly rows: Array<Row | null>;
  private readonly adapters: ModelAdapter[] = [];
  private readonly layers: LlamaLayers;
  private readonly grouped: RowGroupAdapter;
  /** Decode buffers by name, sized for the first decode step's rows (rows only leave), viewed at each step's. */
  private readonly bufs = new Map<string, Tensor>();
  private started = false;

  /** Checks every request (E_ARG, E_UNSUPPORTED naming the row's adapter); nothing runs until step(). */
  constructor(model: LlamaModel, requests: readonly BatchRequest[]) {
    this.model = model;
    this.requests = requests;
    const c = model.config;
    const norms = ['model.norm', ...Array.from({ length: c.numLayers }, (_, l) => [`model.layers.${l}.input_layernorm`, `model.layers.${l}.post_attention_layernorm`]).flat()];
    this.rows = requests.map((r, i) => {
      if (r.prompt.length === 0) throw new PeftkitError('E_ARG', `generateBatch: request ${i}: the prompt is empty (give at least one token, e.g. BOS)`);
      const a = r.options.adapter ?? null;
      let group = a ? this.adapters.indexOf(a) : -1;
      if (a && group < 0) {
        checkBatchable(a, norms, r.label ?? a.source ?? `of request ${i}`);
        group = this.adapters.push(a) - 1;
      }
      const o = r.options;
      return {
        gen: null, rng: new SeededRng(o.seed ?? 0), maxNew: o.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS, temperature: o.temperature ?? 0.7, topP: o.topP ?? 0.95,
        stop: new Set(o.stopTokens ?? ([] as number[]).concat(c.eosTokenId ?? [])), generated: 0, last: -1, group,
      };
    });
    this.grouped = new RowGroupAdapter(this.adapters);
    this.layers = new LlamaLayers(model, this.grouped);
  }

  /** Rows still generating. */
  get live(): number {
    return this.rows.filter((r) => r !== null).length;
  }

  /**
   * The next token of every live row: the first call prefills each row alone and samples its first
   * token, later calls decode all live rows together. A row that has its last token (a stop token,
   * or its maxNewTokens) or fails (E_NAN: non-finite logits) leaves the batch.
   */
  step(): BatchEvent[] {
    if (!this.started) {
      this.started = true;
      // A row asking for no token ends here, as generation alone gives it none.
      this.rows.forEach((row, i) => row!.maxNew < 1 && this.stop(i));
      return this.rows.flatMap((row, i) => (row ? [this.guard(i, () => this.prefill(i, row))] : []));
    }
    const live = this.rows.flatMap((r, i) => (r ? [i] : [])).sort((a, b) => this.rows[a]!.group - this.rows[b]!.group || a - b);
    if (live.length === 0) return [];
    const logits = this.decode(live);
    const V = this.model.config.vocabSize;
    return live.map((i, j) => this.guard(i, () => this.next(i, this.rows[i]!, logits.subarray(j * V, (j + 1) * V))));
  }

  /** Ends row `row` now (its cache is freed); later steps leave it out. */
  stop(row: number): void {
    this.rows[row]?.gen?.dispose();
    this.rows[row] = null;
  }

  dispose(): void {
    for (let i = 0; i < this.rows.length; i++) this.stop(i);
    this.layers.dispose();
    for (const t of this.bufs.values()) t.dispose();
    this.bufs.clear();
  }

  private guard(i: number, f: () => BatchEvent): BatchEvent {
    try {
      return f();
    } catch (e) {
      this.stop(i);
      if (e instanceof PeftkitError) return { row: i, error: e };
      throw e;
    }
  }

  private prefill(i: number, row: Row): BatchEvent {
    const r = this.requests[i];
    row.gen = new KvGenerator(this.model, r.prompt.length + row.maxNew, r.options.adapter ?? null);
    return this.next(i, row, row.gen.feed(r.prompt));
  }

  /** Samples row i's next token from its logits. */
  private next(i: number, row: Row, logits: Float32Array): BatchEvent {
    checkFinite(this.model, logits, row.generated, this.requests[i].options.adapter ?? null);
    const token = sample(logits, row.temperature, row.topP, row.rng);
    row.generated++;
    row.last = token;
    const done = row.stop.has(token) || row.generated >= row.maxNew;
    if (done) this.stop(i);
    return { row: i, token, done };
  }

  /** One token for each of `live` (ordered by adapter group): the logits, [live.length, vocab]. */
  private decode(live: number[]): Float32Array {
    const c = this.model.config;
    const M = live.length, C = c.hiddenSize, D = c.headDim, QD = c.numHeads * D, KD = c.numKvHeads * D, F = c.intermediateSize;
    const rows = live.map((i) => this.rows[i]!);
    const groups: RowGroup[] = [];
    for (let j = 0; j < M; j++) {
      const g = groups[groups.length - 1];
      if (g && rows[j].group === rows[j - 1].group) g.count++;
      else groups.push({ start: j, count: 1, adapter: rows[j].group < 0 ? null : this.adapters[rows[j].group] });
    }
    this.grouped.groups = groups;
    const buf = (name: string, shape: number[], dtype: 'f32' | 'i32' = 'f32') => this.buffer(name, shape, dtype);
    const ids = buf('ids', [M], 'i32');
    ids.write(Int32Array.from(rows, (r) => r.last));
    let x = buf('x', [M, C]);
    ops.embeddingForward(x, ids, this.model.weight('model.embed_tokens.weight'));
    const pos = buf('pos', [M], 'i32');
    pos.write(Int32Array.from(rows, (r) => r.gen!.position));
    const rope = { cos: buf('cos', [M, D / 2]), sin: buf('sin', [M, D / 2]) };
    ops.ropeTable(rope.cos, rope.sin, pos, { theta: c.ropeTheta, scaling: c.ropeScaling });
    const a: LayerActs = {
      h1: buf('h1', [M, C]), rstd1: buf('rstd1', [M]), q: buf('q', [M, QD]), k: buf('k', [M, KD]), v: buf('v', [M, KD]),
      att: buf('att', [M, QD]), lse: buf('lse', [c.numHeads * M]), x2: buf('x2', [M, C]), h2: buf('h2', [M, C]), rstd2: buf('rstd2', [M]),
      g: buf('g', [M, F]), u: buf('u', [M, F]), act: buf('act', [M, F]),
    };
    let xNext = buf('xNext', [M, C]);
    for (let l = 0; l < c.numLayers; l++) {
      this.layers.forward(l, x, xNext, a, 1, M, rope, PASS, rows.map((r) => r.gen!.layerCache(l)));
      [x, xNext] = [xNext, x];
    }
    for (const r of rows) r.gen!.advance();
    const h = buf('h', [M, C]);
    ops.rmsnormForward(h, buf('rstd', [M]), x, this.layers.norm('model.norm').w, { eps: c.rmsNormEps });
    const logits = buf('logits', [M, c.vocabSize]);
    this.layers.linearForward('lm_head', logits, h, PASS, 0);
    return logits.toFloat32Array();
  }

  /** The buffer `name` viewed as `shape`: made at the first step, when the batch has the most rows. */
  private buffer(name: string, shape: number[], dtype: 'f32' | 'i32'): Tensor {
    const n = shape.reduce((p, d) => p * d, 1);
    let t = this.bufs.get(name);
    if (!t || t.numel < n) {
      t?.dispose();
      t = Tensor.empty([n], { device: this.model.device, dtype });
      this.bufs.set(name, t);
    }
    return t.view(0, shape);
  }
}
