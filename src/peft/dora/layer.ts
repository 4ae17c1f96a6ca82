/**
 * DoRA (Liu et al. 2024) at one Linear, as PEFT computes it (lora/variants.py DoraLinearVariant.forward,
 * lora/dora.py DoraLinearLayer.forward). The LoRA-updated weight W' = W + s·B·A is split into a
 * direction and a learned magnitude m [out]: g = m / ‖W'‖ per output row, the norm detached (no
 * gradient through it: the paper's section 4.3 choice, which makes it cheap). PEFT adds to the base
 * output X·Wᵀ + b the DoRA term (g − 1) ⊙ P + g ⊙ s·Xa·Aᵀ·Bᵀ, where
 *  - without dropout (and in eval) Xa = X and P = X·Wᵀ, the base output reused:
 *      Y = g ⊙ Z + b,                 Z = X·Wᵀ + s·X·Aᵀ·Bᵀ;
 *  - with dropout Xa = Xd = dropout(X) (LoRA's mask at this call site) and P = Xd·Wᵀ recomputed, as
 *    F.linear of the dequantized weight without bias (never LLM.int8's: {@link dequantizedOperand}):
 *      Y = LoRA's Y + (g − 1) ⊙ Z,    Z = Xd·Wᵀ + s·Xd·Aᵀ·Bᵀ,   LoRA's Y = X·Wᵀ + b + s·Xd·Aᵀ·Bᵀ.
 * Z (a fused LoRA product without bias) is kept for the backward, where dm = Σ_rows(dY ⊙ Z) / ‖W'‖;
 * the rest is LoRA's backward of g ⊙ dY (no dropout), or LoRA's of dY plus Z's of (g − 1) ⊙ dY, whose
 * input gradient goes back through the dropout. One fused GEMM pass each way, two with dropout.
 * The norm is computed once a forward, in f32, from the dequantized base (so a quantized base works
 * as PEFT's does); in generation once a generator.
 */
import type { LlamaModel } from '../../model/llama';
import { baseWeightF32, BaseLinear, dequantizedOperand, LinearModule, Scratch, SiteCall } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';
import { LoraLayer } from '../lora/layer';

/** PEFT's saved name of a module's magnitude vector. */
export const doraMagnitudeName = (module: string) => `base_model.model.${module}.lora_magnitude_vector`;

export class DoraLayer extends LoraLayer {
  readonly m: Tensor;
  readonly dm: Tensor;
  /** ‖W + s·B·A‖ per row, as of the last forward (on the device: the step reads nothing back). */
  private readonly norms: Tensor;
  /** m / ‖W'‖, and that minus 1 (the DoRA term's factor with dropout). */
  private g: Tensor;
  private gMinus1: Tensor;
  private dg: Tensor;
  private zStore: Tensor | null = null;
  /** The generator's scratch the cached norm belongs to (weights fixed while it lives). */
  private normFor: WeakRef<Scratch> | null = null;

  constructor(mod: LinearModule, r: number, scaling: number, a: Float32Array, b: Float32Array, m: Float32Array, device: Device) {
    super(mod, r, scaling, a, b, device);
    this.m = Tensor.from(m, [mod.outFeatures], { device });
    this.dm = Tensor.zeros([mod.outFeatures], { device });
    this.g = Tensor.zeros([mod.outFeatures], { device });
    this.gMinus1 = Tensor.zeros([mod.outFeatures], { device });
    this.dg = Tensor.zeros([mod.outFeatures], { device });
    this.norms = Tensor.zeros([mod.outFeatures], { device });
  }

  /** A new DoRA layer: m = ‖W + s·B·A‖ per row, so the layer starts as LoRA's (PEFT's init). */
  static init(mod: LinearModule, r: number, scaling: number, a: Float32Array, b: Float32Array, model: LlamaModel, device: Device): DoraLayer {
    const layer = new DoraLayer(mod, r, scaling, a, b, new Float32Array(mod.outFeatures), device);
    const base: BaseLinear = { module: mod.name, weight: model.linear(`${mod.name}.weight`), bias: undefined, compute: model.compute };
    const scratch = new Scratch(device);
    try {
      layer.weightNorms(layer.m, base, scratch);
    } finally {
      scratch.dispose();
    }
    return layer;
  }

  /** ‖W + s·B·A‖ of each output row into `out`, in f32 from the f32 (dequantized) base. */
  private weightNorms(out: Tensor, base: BaseLinear, scratch: Scratch): void {
    const W = scratch.get(3, [this.outFeatures, this.inFeatures]);
    baseWeightF32(base, W);
    ops.gemm(W, this.B, this.A, { alpha: this.scaling, beta: 1 });
    ops.rowNorms(out, W);
  }

  /** The merged weight's DoRA rescaling in place: W' ⊙ m / ‖W'‖ per row (`w` holds W' = W + s·B·A). */
  rescaleMerged(w: Float32Array): void {
    const m = this.m.toFloat32Array();
    for (let o = 0; o < this.outFeatures; o++) {
      let ss = 0;
      for (let i = 0; i < this.inFeatures; i++) ss += w[o * this.inFeatures + i] ** 2;
      const g = m[o] / Math.sqrt(ss);
      for (let i = 0; i < this.inFeatures; i++) w[o * this.inFeatures + i] *= g;
    }
  }

  private z(rows: number): Tensor {
    if (!this.zStore || this.zStore.numel < rows * this.outFeatures) {
      this.zStore?.dispose();
      this.zStore = Tensor.empty([rows * this.outFeatures], { device: this.m.device });
    }
    return this.zStore.view(0, [rows, this.outFeatures]);
  }

  /** g = m / ‖W + s·B·A‖, once a forward (once a generator when the weights are fixed). */
  private updateScale(base: BaseLinear, call: SiteCall): void {
    // normFor is set only once the norms are: a generator's scratch finds them computed.
    if (call.weightsFixed && this.normFor?.deref() === call.scratch) return;
    this.weightNorms(this.norms, base, call.scratch);
    this.normFor = call.weightsFixed ? new WeakRef(call.scratch) : null;
    ops.doraScale(this.g, this.gMinus1, this.m, this.norms);
  }

  /** Y (the base output X·Wᵀ) becomes g ⊙ (Y + s·X·Aᵀ·Bᵀ); with a bias (base or trained), forward instead. */
  override forwardOnBase(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.biasOf(base)) return this.forward(Y, X, base, call);
    this.updateScale(base, call);
    const xa = call.scratch.get(0, [X.shape[0], this.r]);
    ops.gemm(xa, X, this.A, { transB: true });
    ops.gemm(Y, xa, this.B, { transB: true, alpha: this.scaling, beta: 1 });
    ops.mulCols(Y, Y, this.g);
  }

  override forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    this.updateScale(base, call);
    const Z = this.z(X.shape[0]);
    if (call.dropout > 0) {
      const Xd = this.lowRankForward(Y, X, base, call, true);
      ops.loraForward(Z, call.scratch.get(6, [X.shape[0], this.r]), Xd, dequantizedOperand(base), this.A, this.B, { scale: this.scaling, compute: base.compute });
      const gz = call.scratch.get(1, Y.shape);
      ops.mulCols(gz, Z, this.gMinus1);
      ops.add(Y, Y, gz);
      return;
    }
    this.lowRankForward(Z, X, base, call, false);
    ops.mulCols(Y, Z, this.g);
    const bias = this.biasOf(base);
    if (bias) ops.biasAdd(Y, bias);
  }

  override backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    const Z = this.z(X.shape[0]);
    // dZ: g ⊙ dY, or (g − 1) ⊙ dY with dropout; either way dg = Σ_rows dY ⊙ Z.
    const dZ = call.scratch.get(5, dY.shape);
    this.dg.zero();
    ops.mulColsBackward(dZ, this.dg, dY, Z, call.dropout > 0 ? this.gMinus1 : this.g);
    // dm = dg / ‖W'‖, accumulated (the norm is a constant to the gradient).
    ops.doraMagnitudeBackward(this.dm, this.dg, this.norms);
    if (this.bias) ops.biasBackward(this.bias.db, dY);
    if (call.dropout <= 0) {
      this.lowRankBackward(dX, dZ, X, base, call);
      return;
    }
    // LoRA's backward of dY, then Z's of dZ = (g − 1) ⊙ dY, its input gradient through the dropout.
    const Xd = this.lowRankBackward(dX, dY, X, base, call);
    const dXd = dX ? call.scratch.get(1, X.shape) : null;
    ops.loraBackward(dXd, this.dA, this.dB, dZ, Xd, this.xa(X.shape[0]), dequantizedOperand(base), this.A, this.B, { scale: this.scaling, compute: base.compute });
    if (dX && dXd) this.addThroughDropout(dX, dXd, call);
  }

  override dispose(): void {
    super.dispose();
    for (const t of [this.m, this.dm, this.g, this.gMinus1, this.dg, this.norms]) t.dispose();
    this.zStore?.dispose();
    this.zStore = null;
  }
}
