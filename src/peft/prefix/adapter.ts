/**
 * Prefix tuning (Li & Liang 2021), PEFT's PREFIX_TUNING: per layer, n trained key and value rows
 * that every sequence attends to before its own, as transformers runs a PEFT prefix — a KV cache
 * of length n: the prefix keys are never rotated by RoPE, and the real tokens sit at positions
 * n... Grouped-query aware (rows are kv_heads · head_dim wide). The file holds PEFT's one tensor,
 * prompt_embeddings [n, num_layers · 2 · kv_dim], column ((l·2 + j)·kv_heads + h)·head_dim + d of
 * row t being layer l's key (j = 0) or value (j = 1); the model reads per-layer copies, refreshed
 * whenever the tensor changes, and their gradients are gathered back before clipping.
 */
import * as path from 'path';
import type { ModelConfig } from '../../model/config';
import type { LinearSite, ModelAdapter, NormSite, PrefixSite } from '../../model/sites';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { loadParamsFrom, MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { PeftkitError } from '../../errors';
import { parsePrefixTuningConfig, PrefixTuningConfig } from './config';

export type { PrefixTuningConfig } from './config';
export { defaultPrefixTuningConfig, parsePrefixTuningConfig } from './config';

const NAME = 'prompt_embeddings';

export class PrefixTuningAdapter extends ParamAdapter<PrefixTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: PrefixTuningConfig;
  readonly source: string | null;
  /** [n, L · 2 · kv_dim], PEFT's layout, and its gradient. */
  readonly table: Tensor;
  readonly grad: Tensor;
  private readonly sites: PrefixSite[];

  private constructor(config: PrefixTuningConfig, table: Float32Array, device: Device, source: string | null) {
    super();
    this.config = config;
    this.source = source;
    const n = config.num_virtual_tokens, kvd = config.token_dim;
    this.table = Tensor.from(table, [n, config.num_layers * 2 * kvd], { device });
    this.grad = Tensor.zeros([n, config.num_layers * 2 * kvd], { device });
    this.sites = Array.from({ length: config.num_layers }, () => ({
      keys: Tensor.zeros([n, kvd], { device }), values: Tensor.zeros([n, kvd], { device }),
      dKeys: Tensor.zeros([n, kvd], { device }), dValues: Tensor.zeros([n, kvd], { device }),
    }));
    this.refresh();
  }

  /** A new prefix: N(0, 1) rows, as PEFT's nn.Embedding starts them. */
  static create(config: PrefixTuningConfig, opts: { seed?: number; device?: Device } = {}): PrefixTuningAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const v = Float32Array.from({ length: config.num_virtual_tokens * config.num_layers * 2 * config.token_dim }, () => rng.normal());
    return new PrefixTuningAdapter(config, v, opts.device ?? 'cpu', null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): PrefixTuningAdapter {
    const config = parsePrefixTuningConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'), c);
    const shape = [config.num_virtual_tokens, config.num_layers * 2 * config.token_dim];
    const v = readAdapterTensors(dir, new Map([[NAME, shape]]), 'PREFIX_TUNING').get(NAME)!;
    return new PrefixTuningAdapter(config, v, opts.device ?? 'cpu', path.join(dir, 'adapter_model.safetensors'));
  }

  /** The per-layer copies from the table (after an update or a load). */
  private refresh(): void {
    const n = this.config.num_virtual_tokens, kvd = this.config.token_dim, W = this.config.num_layers * 2 * kvd;
    const t = this.table.toFloat32Array();
    this.sites.forEach((s, l) => {
      for (const [j, dst] of [[0, s.keys], [1, s.values]] as const) {
        const rows = new Float32Array(n * kvd);
        for (let r = 0; r < n; r++) rows.set(t.subarray(r * W + (l * 2 + j) * kvd, r * W + (l * 2 + j + 1) * kvd), r * kvd);
        dst.write(rows);
      }
    });
  }

  linear(): LinearSite | undefined {
    return undefined;
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  prefix(layer: number): PrefixSite | undefined {
    return this.sites[layer];
  }

  positionOffset(): number {
    return this.config.num_virtual_tokens;
  }

  parameters(): TrainableParam[] {
    return [{ name: NAME, param: this.table, grad: this.grad }];
  }

  override zeroGrad(): void {
    this.grad.zero();
    for (const s of this.sites) {
      s.dKeys.zero();
      s.dValues.zero();
    }
  }

  /** The per-layer gradients into the table's layout. */
  prepareGrads(): void {
    const n = this.config.num_virtual_tokens, kvd = this.config.token_dim, W = this.config.num_layers * 2 * kvd;
    const g = new Float32Array(n * W);
    this.sites.forEach((s, l) => {
      for (const [j, src] of [[0, s.dKeys], [1, s.dValues]] as const) {
        const rows = src.toFloat32Array();
        for (let r = 0; r < n; r++) g.set(rows.subarray(r * kvd, (r + 1) * kvd), r * W + (l * 2 + j) * kvd);
      }
    });
    this.grad.write(g);
  }

  afterUpdate(): void {
    this.refresh();
  }

  override loadWeightsFrom(dir: string): void {
    loadParamsFrom(this.parameters(), dir);
    this.refresh();
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'prefix tuning cannot be merged: its keys and values are extra attention rows, which no weight of the model holds; keep the adapter unmerged');
  }

  override dispose(): void {
    this.table.dispose();
    this.grad.dispose();
    for (const s of this.sites) for (const t of [s.keys, s.values, s.dKeys, s.dValues]) t.dispose();
  }
}
