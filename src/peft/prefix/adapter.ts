/**
 * Prefix tuning (Li & Liang 2021), PEFT's PREFIX_TUNING: per layer, n trained key and value rows
 * that every sequence attends to before its own, as transformers runs a PEFT prefix — a KV cache
 * of length n: the prefix keys are never rotated by RoPE, and the real tokens sit at positions
 * n... Grouped-query aware (rows are kv_heads · head_dim wide). The file holds PEFT's one tensor,
 * prompt_embeddings [n, num_layers · 2 · kv_dim], column ((l·2 + j)·kv_heads + h)·head_dim + d of
 * row t being layer l's key (j = 0) or value (j = 1); the model reads per-layer copies, refreshed
 * whenever the tensor changes, and their gradients are gathered back before clipping. With
 * prefix_projection the table is an MLP's output (PEFT's PrefixEncoder: embedding → Linear →
 * tanh → Linear), the MLP trains, and it is written beside PEFT's file (prompt_encoder.safetensors).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { ModelConfig } from '../../model/config';
import type { LinearSite, ModelAdapter, NormSite, PrefixSite } from '../../model/sites';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { SafetensorsCheckpoint, writeSafetensors } from '../../model/safetensors';
import * as ops from '../../ops';
import { checkFinite, loadParamsFrom, MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam, writeAdapterConfigJson } from '../method';
import { PeftkitError } from '../../errors';
import { parsePrefixTuningConfig, PrefixTuningConfig } from './config';

export type { PrefixTuningConfig } from './config';
export { defaultPrefixTuningConfig, parsePrefixTuningConfig } from './config';

const NAME = 'prompt_embeddings';

/** The projection MLP of prefix_projection: E → Linear → tanh → Linear, with its gradients and activations. */
interface Projection {
  E: Tensor; dE: Tensor;
  W: [Tensor, Tensor]; dW: [Tensor, Tensor]; b: [Tensor, Tensor]; db: [Tensor, Tensor];
  pre: Tensor; act: Tensor;
}

const PROJECTION_FILE = 'prompt_encoder.safetensors';

export class PrefixTuningAdapter extends ParamAdapter<PrefixTuningConfig> implements PeftMethod, ModelAdapter {
  readonly config: PrefixTuningConfig;
  readonly source: string | null;
  /** [n, L · 2 · kv_dim], PEFT's layout, and its gradient. */
  readonly table: Tensor;
  readonly grad: Tensor;
  private readonly sites: PrefixSite[];
  /** With prefix_projection: the MLP that makes the table (null when the folder holds only its output). */
  private readonly proj: Projection | null;

  private constructor(config: PrefixTuningConfig, table: Float32Array | null, device: Device, source: string | null, proj: Record<string, Float32Array> | null = null) {
    super();
    this.config = config;
    this.source = source;
    const n = config.num_virtual_tokens, kvd = config.token_dim, W = config.num_layers * 2 * kvd, h = config.encoder_hidden_size;
    this.table = table ? Tensor.from(table, [n, W], { device }) : Tensor.zeros([n, W], { device });
    this.grad = Tensor.zeros([n, W], { device });
    this.sites = Array.from({ length: config.num_layers }, () => ({
      keys: Tensor.zeros([n, kvd], { device }), values: Tensor.zeros([n, kvd], { device }),
      dKeys: Tensor.zeros([n, kvd], { device }), dValues: Tensor.zeros([n, kvd], { device }),
    }));
    const t = (name: string, shape: number[]) => Tensor.from(proj![name], shape, { device });
    const z = (shape: number[]) => Tensor.zeros(shape, { device });
    this.proj = proj ? {
      E: t('prompt_encoder.embedding.weight', [n, kvd]), dE: z([n, kvd]),
      W: [t('prompt_encoder.transform.0.weight', [h, kvd]), t('prompt_encoder.transform.2.weight', [W, h])], dW: [z([h, kvd]), z([W, h])],
      b: [t('prompt_encoder.transform.0.bias', [h]), t('prompt_encoder.transform.2.bias', [W])], db: [z([h]), z([W])],
      pre: z([n, h]), act: z([n, h]),
    } : null;
    this.refresh();
  }

  /** A new prefix as PEFT starts one: N(0, 1) rows, or with prefix_projection an N(0, 1) embedding and nn.Linear-initialised MLP. */
  static create(config: PrefixTuningConfig, opts: { seed?: number; device?: Device } = {}): PrefixTuningAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const n = config.num_virtual_tokens, kvd = config.token_dim, W = config.num_layers * 2 * kvd, h = config.encoder_hidden_size;
    if (!config.prefix_projection) return new PrefixTuningAdapter(config, Float32Array.from({ length: n * W }, () => rng.normal()), opts.device ?? 'cpu', null);
    const u = (len: number, fanIn: number) => Float32Array.from({ length: len }, () => rng.uniform(-1 / Math.sqrt(fanIn), 1 / Math.sqrt(fanIn)));
    return new PrefixTuningAdapter(config, null, opts.device ?? 'cpu', null, {
      'prompt_encoder.embedding.weight': Float32Array.from({ length: n * kvd }, () => rng.normal()),
      'prompt_encoder.transform.0.weight': u(h * kvd, kvd), 'prompt_encoder.transform.0.bias': u(h, kvd),
      'prompt_encoder.transform.2.weight': u(W * h, h), 'prompt_encoder.transform.2.bias': u(W, h),
    });
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): PrefixTuningAdapter {
    const config = parsePrefixTuningConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'), c);
    const n = config.num_virtual_tokens, kvd = config.token_dim, W = config.num_layers * 2 * kvd, h = config.encoder_hidden_size;
    const source = path.join(dir, 'adapter_model.safetensors');
    if (config.prefix_projection && fs.existsSync(path.join(dir, PROJECTION_FILE))) {
      const ck = new SafetensorsCheckpoint(dir, PROJECTION_FILE);
      const shapes: Record<string, number[]> = {
        'prompt_encoder.embedding.weight': [n, kvd], 'prompt_encoder.transform.0.weight': [h, kvd], 'prompt_encoder.transform.0.bias': [h],
        'prompt_encoder.transform.2.weight': [W, h], 'prompt_encoder.transform.2.bias': [W],
      };
      const proj: Record<string, Float32Array> = {};
      for (const [name, shape] of Object.entries(shapes)) {
        if (!ck.has(name)) throw new PeftkitError('E_MISSING', `${ck.source}: no tensor '${name}'`);
        proj[name] = checkFinite(ck.source, name, ck.readFloat32(name, shape));
      }
      return new PrefixTuningAdapter(config, null, opts.device ?? 'cpu', source, proj);
    }
    const v = readAdapterTensors(dir, new Map([[NAME, [n, W]]]), 'PREFIX_TUNING').get(NAME)!;
    return new PrefixTuningAdapter(config, v, opts.device ?? 'cpu', source);
  }

  /** The table from the projection (when there is one), then the per-layer copies from the table. */
  private refresh(): void {
    const p = this.proj;
    if (p) {
      ops.linearForward(p.pre, p.E, p.W[0], { bias: p.b[0] });
      ops.tanhForward(p.act, p.pre);
      ops.linearForward(this.table, p.act, p.W[1], { bias: p.b[1] });
    }
    // Each layer's keys and values are a block of the table's columns, copied where both live.
    const kvd = this.config.token_dim;
    this.sites.forEach((s, l) => {
      ops.copyCols(s.keys, 0, this.table, l * 2 * kvd, kvd);
      ops.copyCols(s.values, 0, this.table, (l * 2 + 1) * kvd, kvd);
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
    const p = this.proj;
    if (!this.config.prefix_projection) return [{ name: NAME, param: this.table, grad: this.grad }];
    if (!p) return [];
    return [
      { name: 'prompt_encoder.embedding.weight', param: p.E, grad: p.dE },
      { name: 'prompt_encoder.transform.0.weight', param: p.W[0], grad: p.dW[0] },
      { name: 'prompt_encoder.transform.0.bias', param: p.b[0], grad: p.db[0], decay: false },
      { name: 'prompt_encoder.transform.2.weight', param: p.W[1], grad: p.dW[1] },
      { name: 'prompt_encoder.transform.2.bias', param: p.b[1], grad: p.db[1], decay: false },
    ];
  }

  override zeroGrad(): void {
    super.zeroGrad();
    this.grad.zero();
    for (const s of this.sites) {
      s.dKeys.zero();
      s.dValues.zero();
    }
  }

  /** The per-layer gradients into the table's layout, then (prefix_projection) back through the MLP. */
  prepareGrads(): void {
    if (this.config.prefix_projection && !this.proj) {
      throw new PeftkitError('E_UNSUPPORTED', `${this.source}: this prefix_projection adapter holds no projection MLP (PEFT saves only its output), so it can be used, not trained`);
    }
    const kvd = this.config.token_dim;
    this.sites.forEach((s, l) => {
      ops.copyCols(this.grad, l * 2 * kvd, s.dKeys, 0, kvd);
      ops.copyCols(this.grad, (l * 2 + 1) * kvd, s.dValues, 0, kvd);
    });
    const p = this.proj;
    if (!p) return;
    ops.gemm(p.dW[1], this.grad, p.act, { transA: true, beta: 1 });
    ops.biasBackward(p.db[1], this.grad);
    const dAct = Tensor.zeros(p.act.shape, { device: p.act.device });
    try {
      ops.gemm(dAct, this.grad, p.W[1]);
      ops.tanhBackward(dAct, dAct, p.act);
      ops.gemm(p.dW[0], dAct, p.E, { transA: true, beta: 1 });
      ops.biasBackward(p.db[0], dAct);
      ops.gemm(p.dE, dAct, p.W[0], { beta: 1 });
    } finally {
      dAct.dispose();
    }
  }

  afterUpdate(): void {
    this.refresh();
  }

  /** PEFT's file (the table), and with prefix_projection the MLP beside it so that training can go on. */
  override writeFiles(dir: string): void {
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), { [NAME]: { dtype: 'F32', shape: this.table.shape, data: this.table.toFloat32Array() } });
    if (this.proj) {
      const enc: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
      for (const q of this.parameters()) enc[q.name] = { dtype: 'F32', shape: q.param.shape, data: q.param.toFloat32Array() };
      writeSafetensors(path.join(dir, PROJECTION_FILE), enc);
    }
    writeAdapterConfigJson(dir, this.config);
  }

  override loadWeightsFrom(dir: string): void {
    if (this.proj) {
      const ck = new SafetensorsCheckpoint(dir, PROJECTION_FILE);
      for (const q of this.parameters()) q.param.write(checkFinite(ck.source, q.name, ck.readFloat32(q.name, q.param.shape)));
    } else {
      loadParamsFrom(this.parameters(), dir);
    }
    this.refresh();
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'prefix tuning cannot be merged: its keys and values are extra attention rows, which no weight of the model holds; keep the adapter unmerged');
  }

  override dispose(): void {
    if (this.proj) for (const q of this.parameters()) {
      q.param.dispose();
      q.grad.dispose();
    }
    if (this.proj) {
      this.proj.pre.dispose();
      this.proj.act.dispose();
    }
    this.table.dispose();
    this.grad.dispose();
    for (const s of this.sites) for (const t of [s.keys, s.values, s.dKeys, s.dValues]) t.dispose();
  }
}
