/**
 * Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): at a block's output Z (the
 * attention's o_proj output and the MLP's down_proj output, before their residual adds),
 *
 *   Z' = Z + up(relu(down(Z))),   down: [b, hidden] + bias, up: [hidden, b] + bias, b = hidden / reduction_factor,
 *
 * after both blocks (Houlsby) or after the MLP only (Pfeiffer). up starts at zero, so a new adapter
 * is the base. Not a PEFT method: peftkit's folder, laid out as PEFT's are — adapter_config.json
 * (peft_type "BOTTLENECK", adapter_type, reduction_factor, non_linearity) and
 * adapter_model.safetensors with base_model.model.model.layers.<l>.{attn,mlp}_adapter.{down,up}.{weight,bias}.
 * Nothing to merge: the block is nonlinear.
 */
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import type { BlockSite, LinearSite, ModelAdapter, NormSite, SiteCall } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { SeededRng } from '../../util/rng';
import { MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, readAdapterTensors, TrainableParam } from '../method';
import { BottleneckConfig, parseBottleneckConfig } from './config';

export type { BottleneckConfig } from './config';
export { defaultBottleneckConfig, parseBottleneckConfig } from './config';

/** One adapter: its weights, gradients, and what its forward keeps for the backward. */
export class BottleneckLayer implements BlockSite {
  readonly down: Tensor; readonly downBias: Tensor; readonly up: Tensor; readonly upBias: Tensor;
  readonly dDown: Tensor; readonly dDownBias: Tensor; readonly dUp: Tensor; readonly dUpBias: Tensor;
  private saved: { z: Tensor; pre: Tensor; act: Tensor } | null = null;

  constructor(readonly name: string, readonly hidden: number, readonly b: number, v: Record<'down' | 'downBias' | 'up' | 'upBias', Float32Array>, device: Device) {
    this.down = Tensor.from(v.down, [b, hidden], { device });
    this.downBias = Tensor.from(v.downBias, [b], { device });
    this.up = Tensor.from(v.up, [hidden, b], { device });
    this.upBias = Tensor.from(v.upBias, [hidden], { device });
    this.dDown = Tensor.zeros([b, hidden], { device });
    this.dDownBias = Tensor.zeros([b], { device });
    this.dUp = Tensor.zeros([hidden, b], { device });
    this.dUpBias = Tensor.zeros([hidden], { device });
  }

  private buffers(rows: number): { z: Tensor; pre: Tensor; act: Tensor } {
    if (!this.saved || this.saved.z.numel < rows * this.hidden) {
      this.disposeSaved();
      const device = this.down.device;
      this.saved = { z: Tensor.empty([rows * this.hidden], { device }), pre: Tensor.empty([rows * this.b], { device }), act: Tensor.empty([rows * this.b], { device }) };
    }
    const s = this.saved;
    return { z: s.z.view(0, [rows, this.hidden]), pre: s.pre.view(0, [rows, this.b]), act: s.act.view(0, [rows, this.b]) };
  }

  forward(Z: Tensor, _call: SiteCall): void {
    const { z, pre, act } = this.buffers(Z.shape[0]);
    z.copyFrom(Z);
    ops.linearForward(pre, z, this.down, { bias: this.downBias });
    ops.reluForward(act, pre);
    // Z += act·upᵀ + up bias
    ops.gemm(Z, act, this.up, { transB: true, beta: 1 });
    ops.biasAdd(Z, this.upBias);
  }

  backward(dZ: Tensor, dOut: Tensor, call: SiteCall): void {
    const rows = dOut.shape[0];
    const { z, pre, act } = this.buffers(rows);
    ops.gemm(this.dUp, dOut, act, { transA: true, beta: 1 });
    ops.biasBackward(this.dUpBias, dOut);
    const dAct = call.scratch.get(0, [rows, this.b]);
    ops.gemm(dAct, dOut, this.up);
    const dPre = call.scratch.get(1, [rows, this.b]);
    ops.reluBackward(dPre, dAct, pre);
    ops.gemm(this.dDown, dPre, z, { transA: true, beta: 1 });
    ops.biasBackward(this.dDownBias, dPre);
    // dZ = dOut (the residual inside the adapter) + dPre·down
    dZ.copyFrom(dOut);
    ops.gemm(dZ, dPre, this.down, { beta: 1 });
  }

  private disposeSaved(): void {
    if (!this.saved) return;
    for (const t of Object.values(this.saved)) t.dispose();
    this.saved = null;
  }

  dispose(): void {
    this.disposeSaved();
    for (const t of [this.down, this.downBias, this.up, this.upBias, this.dDown, this.dDownBias, this.dUp, this.dUpBias]) t.dispose();
  }
}

const PARTS = ['attn', 'mlp'] as const;
const prefix = (l: number, part: 'attn' | 'mlp') => `base_model.model.model.layers.${l}.${part}_adapter`;

export class BottleneckAdapter extends ParamAdapter<BottleneckConfig> implements PeftMethod, ModelAdapter {
  readonly config: BottleneckConfig;
  readonly source: string | null;
  private readonly layers: Map<string, BottleneckLayer>;

  private constructor(config: BottleneckConfig, layers: Map<string, BottleneckLayer>, source: string | null) {
    super();
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  /** The (layer, part) pairs the adapter type places adapters at, and the bottleneck size. */
  static placement(config: BottleneckConfig, c: ModelConfig): { sites: Array<[number, 'attn' | 'mlp']>; b: number } {
    const b = Math.floor(c.hiddenSize / config.reduction_factor);
    if (b < 1) throw new PeftkitError('E_CONFIG', `reduction_factor ${config.reduction_factor} leaves no bottleneck for hidden_size ${c.hiddenSize}`);
    const parts = config.adapter_type === 'houlsby' ? PARTS : (['mlp'] as const);
    return { sites: Array.from({ length: c.numLayers }, (_, l) => parts.map((p) => [l, p] as [number, 'attn' | 'mlp'])).flat(), b };
  }

  /** A new adapter: down as nn.Linear initialises it, up zero (the identity). */
  static create(c: ModelConfig, config: BottleneckConfig, opts: { seed?: number; device?: Device } = {}): BottleneckAdapter {
    const rng = new SeededRng(opts.seed ?? 0);
    const { sites, b } = BottleneckAdapter.placement(config, c);
    const H = c.hiddenSize;
    const bound = 1 / Math.sqrt(H);
    const layers = new Map<string, BottleneckLayer>();
    for (const [l, part] of sites) {
      const u = (n: number) => Float32Array.from({ length: n }, () => rng.uniform(-bound, bound));
      layers.set(prefix(l, part), new BottleneckLayer(prefix(l, part), H, b, { down: u(b * H), downBias: u(b), up: new Float32Array(H * b), upBias: new Float32Array(H) }, opts.device ?? 'cpu'));
    }
    return new BottleneckAdapter(config, layers, null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): BottleneckAdapter {
    const config = parseBottleneckConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'));
    const { sites, b } = BottleneckAdapter.placement(config, c);
    const H = c.hiddenSize;
    const shapes = (p: string): Array<[string, number[]]> => [[`${p}.down.weight`, [b, H]], [`${p}.down.bias`, [b]], [`${p}.up.weight`, [H, b]], [`${p}.up.bias`, [H]]];
    const expected = new Map(sites.flatMap(([l, part]) => shapes(prefix(l, part))));
    const v = readAdapterTensors(dir, expected, 'BOTTLENECK');
    const layers = new Map<string, BottleneckLayer>();
    for (const [l, part] of sites) {
      const p = prefix(l, part);
      layers.set(p, new BottleneckLayer(p, H, b, { down: v.get(`${p}.down.weight`)!, downBias: v.get(`${p}.down.bias`)!, up: v.get(`${p}.up.weight`)!, upBias: v.get(`${p}.up.bias`)! }, opts.device ?? 'cpu'));
    }
    return new BottleneckAdapter(config, layers, path.join(dir, 'adapter_model.safetensors'));
  }

  linear(): LinearSite | undefined {
    return undefined;
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  block(layer: number, part: 'attn' | 'mlp'): BlockSite | undefined {
    return this.layers.get(prefix(layer, part));
  }

  parameters(): TrainableParam[] {
    return [...this.layers.values()].flatMap((a) => [
      { name: `${a.name}.down.weight`, param: a.down, grad: a.dDown },
      { name: `${a.name}.down.bias`, param: a.downBias, grad: a.dDownBias, decay: false },
      { name: `${a.name}.up.weight`, param: a.up, grad: a.dUp },
      { name: `${a.name}.up.bias`, param: a.upBias, grad: a.dUpBias, decay: false },
    ]);
  }

  mergeEdits(): MergeEdit[] {
    throw new PeftkitError('E_UNSUPPORTED', 'bottleneck adapters cannot be merged: they add a nonlinear block after attention and MLP, which no weight of the model can hold; keep the adapter unmerged');
  }

  override dispose(): void {
    for (const l of this.layers.values()) l.dispose();
  }
}
