/**
 * Diff pruning (Guo et al. 2021), magnitude-pruning variant: a task-specific difference δ on each
 * targeted Linear weight, Y = X·(W + δ)ᵀ + b. δ starts at zero (the identity) and trains dense
 * until optimizer step `prune_step`; right after that step's update each module keeps the
 * ceil(density · out·in) entries of largest |δ| (ties: lower index first) and the rest are fixed
 * at zero: from then on they get no gradient (before clipping, so the clipping norm counts only
 * kept entries) and are held at zero after every update.
 *
 * Not a PEFT method: peftkit's adapter folder, laid out as PEFT's are. adapter_config.json:
 * {"peft_type": "DIFF", "target_modules", "density", "prune_step", ...}; adapter_model.safetensors:
 * per module base_model.model.<module>.diff_indices (I64 [k], flat row-major indices into
 * [out, in], ascending) and .diff_values (F32 [k]). A dense δ (not yet pruned) lists every index.
 * Merging gives W + δ.
 */
import * as path from 'path';
import { PeftkitError } from '../../errors';
import type { ModelConfig } from '../../model/config';
import { SafetensorsCheckpoint, writeSafetensors } from '../../model/safetensors';
import { baseBackwardInput, baseForward, BaseLinear, LinearModule, LinearSite, ModelAdapter, NormSite, SiteCall } from '../../model/sites';
import { linearModules } from '../../model/weights';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { checkFinite, MergeEdit, ParamAdapter, PeftMethod, readAdapterConfigJson, TrainableParam, writeAdapterConfigJson } from '../method';
import { selectTargets } from '../targets';
import { DiffConfig, parseDiffConfig } from './config';

export type { DiffConfig } from './config';
export { defaultDiffConfig, parseDiffConfig } from './config';

/**
 * Rows from which forming W + δ beats two products: the sum moves 3 weights' worth of memory,
 * the product it saves 2·rows flops per weight element.
 */
const MERGE_MIN_ROWS = 16;

/** A Linear with a trainable difference: Y = X·Wᵀ + X·δᵀ + b. */
export class DiffLayer implements LinearSite {
  readonly delta: Tensor;
  readonly grad: Tensor;
  /** 1 where δ may be non-zero; null while dense (before pruning). */
  private maskHost: Uint8Array | null = null;
  /** The same mask beside δ (u8), so each step applies it where δ lives: nothing weight-sized crosses to the host. */
  private keep: Tensor | null = null;

  constructor(readonly module: LinearModule, device: Device) {
    this.delta = Tensor.zeros([module.outFeatures, module.inFeatures], { device });
    this.grad = Tensor.zeros([module.outFeatures, module.inFeatures], { device });
  }

  get numel(): number {
    return this.module.outFeatures * this.module.inFeatures;
  }

  /**
   * W + δ in the call's scratch, where the base is a dense f32 weight computed in f32: then one
   * product does the work of two, forward and backward (3 weight-sized products a step instead
   * of 5; the sum costs a pass over two weights, recomputed each call since the scratch is lent
   * for one call only). Only for products of at least MERGE_MIN_ROWS rows: generation's
   * one-row products read W and δ once each apart, but three times to form the sum. Other
   * storages keep W and δ apart: adding δ to a bf16 or quantized weight would change the base's
   * numerics.
   */
  private merged(base: BaseLinear, rows: number, call: SiteCall): Tensor | null {
    const w = base.weight;
    if (rows < MERGE_MIN_ROWS || !('W' in w) || w.W.dtype !== 'f32' || base.compute !== 'f32') return null;
    const sum = call.scratch.get(0, [this.module.outFeatures, this.module.inFeatures]);
    ops.add(sum, w.W, this.delta);
    return sum;
  }

  forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    const sum = this.merged(base, X.shape[0], call);
    if (sum) {
      ops.linearForward(Y, X, sum, { bias: base.bias });
      return;
    }
    baseForward(base, Y, X);
    ops.gemm(Y, X, this.delta, { transB: true, beta: 1 });
  }

  backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    ops.gemm(this.grad, dY, X, { transA: true, beta: 1 });
    if (!dX) return;
    const sum = this.merged(base, dY.shape[0], call);
    if (sum) {
      ops.linearBackward(dX, dY, sum);
      return;
    }
    baseBackwardInput(base, dX, dY);
    ops.gemm(dX, dY, this.delta, { beta: 1 });
  }

  /** The mask's device copy (δ and its gradient are the adapter's parameters, disposed with it). */
  dispose(): void {
    this.setMask(null);
  }

  get mask(): Uint8Array | null {
    return this.maskHost;
  }

  private setMask(mask: Uint8Array | null): void {
    this.keep?.dispose();
    this.maskHost = mask;
    this.keep = mask ? Tensor.from(mask, this.delta.shape, { dtype: 'u8', device: this.delta.device }) : null;
  }

  /** Zeroes the pruned entries of `t` (δ or its gradient). */
  applyMask(t: Tensor): void {
    if (this.keep) ops.keepMasked(t, this.keep);
  }

  /** Keeps the k entries of largest |δ| (ties: lower index first). */
  prune(density: number): void {
    const v = this.delta.toFloat32Array();
    const k = Math.ceil(density * v.length);
    const order = Array.from(v.keys()).sort((a, b) => Math.abs(v[b]) - Math.abs(v[a]) || a - b);
    const mask = new Uint8Array(v.length);
    for (let i = 0; i < k; i++) mask[order[i]] = 1;
    this.setMask(mask);
    this.applyMask(this.delta);
  }

  /** The kept entries, as the file stores them. */
  sparse(): { indices: BigInt64Array; values: Float32Array } {
    const v = this.delta.toFloat32Array();
    const idx: number[] = [];
    for (let i = 0; i < v.length; i++) if (!this.mask || this.mask[i]) idx.push(i);
    return { indices: BigInt64Array.from(idx, (i) => BigInt(i)), values: Float32Array.from(idx, (i) => v[i]) };
  }

  /** Sets δ (and the mask, unless every index is listed) from the file's form. */
  setSparse(indices: BigInt64Array, values: Float32Array, file: string, name: string): void {
    const n = this.numel;
    const dense = new Float32Array(n);
    const mask = new Uint8Array(n);
    let prev = -1;
    indices.forEach((bi, j) => {
      const i = Number(bi);
      if (!(i > prev && i < n)) throw new PeftkitError('E_FORMAT', `${file}: '${name}' element ${j} is ${i}: expected strictly ascending indices in [0, ${n})`);
      prev = i;
      dense[i] = values[j];
      mask[i] = 1;
    });
    this.delta.write(dense);
    this.setMask(indices.length === n ? null : mask);
  }
}

const indicesName = (module: string) => `base_model.model.${module}.diff_indices`;
const valuesName = (module: string) => `base_model.model.${module}.diff_values`;
/** The dense trainable tensor's name (optimizer state, stateDict). */
const deltaName = (module: string) => `base_model.model.${module}.diff_delta`;

export class DiffAdapter extends ParamAdapter<DiffConfig> implements PeftMethod, ModelAdapter {
  readonly config: DiffConfig;
  source: string | null;
  readonly layers: ReadonlyMap<string, DiffLayer>;

  private constructor(config: DiffConfig, layers: Map<string, DiffLayer>, source: string | null) {
    super();
    this.config = config;
    this.layers = layers;
    this.source = source;
  }

  static targets(config: DiffConfig, c: ModelConfig): LinearModule[] {
    const chosen = selectTargets(linearModules(c), config.target_modules);
    if (chosen.some((m) => m.name === 'lm_head')) throw new PeftkitError('E_UNSUPPORTED', 'diff pruning on lm_head is not supported (the head is fused with the loss); remove lm_head from the target modules');
    return chosen;
  }

  static create(c: ModelConfig, config: DiffConfig, opts: { device?: Device } = {}): DiffAdapter {
    return new DiffAdapter(config, new Map(DiffAdapter.targets(config, c).map((m) => [m.name, new DiffLayer(m, opts.device ?? 'cpu')])), null);
  }

  static load(dir: string, c: ModelConfig, opts: { device?: Device } = {}): DiffAdapter {
    const config = parseDiffConfig(readAdapterConfigJson(dir), path.join(dir, 'adapter_config.json'));
    const a = DiffAdapter.create(c, config, opts);
    try {
      a.loadWeightsFrom(dir);
    } catch (e) {
      a.dispose();
      throw e;
    }
    a.source = path.join(dir, 'adapter_model.safetensors');
    return a;
  }

  linear(module: string): DiffLayer | undefined {
    return this.layers.get(module);
  }

  norm(): NormSite | undefined {
    return undefined;
  }

  parameters(): TrainableParam[] {
    return [...this.layers.values()].map((l) => ({ name: deltaName(l.module.name), param: l.delta, grad: l.grad }));
  }

  override dispose(): void {
    for (const l of this.layers.values()) l.dispose();
    super.dispose();
  }

  prepareGrads(): void {
    for (const l of this.layers.values()) l.applyMask(l.grad);
  }

  afterUpdate(step: number): void {
    for (const l of this.layers.values()) {
      if (l.mask) l.applyMask(l.delta);
      else if (step >= this.config.prune_step && this.config.density < 1) l.prune(this.config.density);
    }
  }

  override writeFiles(dir: string): void {
    const tensors: Record<string, { dtype: 'F32' | 'I64'; shape: number[]; data: Float32Array | BigInt64Array }> = {};
    for (const l of this.layers.values()) {
      const { indices, values } = l.sparse();
      tensors[indicesName(l.module.name)] = { dtype: 'I64', shape: [indices.length], data: indices };
      tensors[valuesName(l.module.name)] = { dtype: 'F32', shape: [values.length], data: values };
    }
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), tensors);
    writeAdapterConfigJson(dir, this.config);
  }

  override loadWeightsFrom(dir: string): void {
    const ck = new SafetensorsCheckpoint(dir, 'adapter_model.safetensors');
    const known = new Set([...this.layers.keys()].flatMap((m) => [indicesName(m), valuesName(m)]));
    for (const name of ck.tensors.keys()) {
      if (!known.has(name)) throw new PeftkitError('E_CONFIG', `${ck.source}: tensor '${name}' is not one of this DIFF adapter's tensors for this model and adapter_config.json`);
    }
    for (const l of this.layers.values()) {
      const iName = indicesName(l.module.name), vName = valuesName(l.module.name);
      for (const n of [iName, vName]) if (!ck.has(n)) throw new PeftkitError('E_MISSING', `${ck.source}: no tensor '${n}'`);
      const info = ck.info(iName);
      if (info.dtype !== 'I64' || info.shape.length !== 1) throw new PeftkitError('E_FORMAT', `${ck.source}: '${iName}' is ${info.dtype}[${info.shape.join(', ')}], expected I64[k]`);
      const bytes = ck.readBytes(iName);
      const indices = new BigInt64Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
      const values = checkFinite(ck.source, vName, ck.readFloat32(vName, [indices.length]));
      l.setSparse(indices, values, ck.source, iName);
    }
  }

  mergeEdits(): MergeEdit[] {
    return [...this.layers.values()].map((l) => ({
      tensor: `${l.module.name}.weight`, shape: [l.module.outFeatures, l.module.inFeatures],
      apply: (w) => {
        const d = l.delta.toFloat32Array();
        return w!.map((x, i) => x + d[i]);
      },
    }));
  }
}
