/**
 * LoRA at one Linear: Y = X·Wᵀ + b + s·dropout(X)·Aᵀ·Bᵀ, forward beside backward, in the
 * engine's fused ops (base + low rank in one GEMM; W + s·B·A is never formed, so W can stay
 * bf16 or quantized and frozen). X·Aᵀ is kept for the backward; the dropout mask is recomputed
 * from (seed, call site) instead of stored.
 */
import type { BaseLinear, LinearModule, LinearSite, SiteCall } from '../../model/sites';
import { weightOperand } from '../../model/sites';
import * as ops from '../../ops';
import { Device, Tensor } from '../../tensor';

export class LoraLayer implements LinearSite {
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly r: number;
  /** lora_alpha / r of this module (rank_pattern / alpha_pattern and rsLoRA applied). */
  readonly scaling: number;
  readonly A: Tensor;
  readonly B: Tensor;
  readonly dA: Tensor;
  readonly dB: Tensor;
  /** A trained copy of the base's bias (PEFT's bias "all" / "lora_only"), with its gradient. */
  bias: { b: Tensor; db: Tensor } | null = null;
  /** X·Aᵀ of the last forward, [rows, r]: grown to the largest batch seen. */
  private xaStore: Tensor | null = null;

  constructor(m: LinearModule, r: number, scaling: number, a: Float32Array, b: Float32Array, device: Device) {
    this.module = m.name;
    this.inFeatures = m.inFeatures;
    this.outFeatures = m.outFeatures;
    this.r = r;
    this.scaling = scaling;
    this.A = Tensor.from(a, [r, m.inFeatures], { device });
    this.B = Tensor.from(b, [m.outFeatures, r], { device });
    this.dA = Tensor.zeros([r, m.inFeatures], { device });
    this.dB = Tensor.zeros([m.outFeatures, r], { device });
  }

  /** Trains the bias too, starting from `init` (the base's). */
  trainBias(init: Float32Array): void {
    this.bias = { b: Tensor.from(init, [this.outFeatures], { device: this.A.device }), db: Tensor.zeros([this.outFeatures], { device: this.A.device }) };
  }

  /** The bias to add: the trained copy, else the base's. */
  protected biasOf(base: BaseLinear): Tensor | undefined {
    return this.bias?.b ?? base.bias;
  }

  protected xa(rows: number): Tensor {
    if (!this.xaStore || this.xaStore.numel < rows * this.r) {
      this.xaStore?.dispose();
      this.xaStore = Tensor.empty([rows * this.r], { device: this.A.device });
    }
    return this.xaStore.view(0, [rows, this.r]);
  }

  /** dropout(X) into scratch slot 0; each call site draws from its own range of the step's stream. */
  protected dropped(X: Tensor, call: SiteCall): Tensor {
    const out = call.scratch.get(0, X.shape);
    ops.dropoutForward(out, X, { p: call.dropout, seed: call.dropoutSeed, offset: call.streamOffset });
    return out;
  }

  /** dX += dropout'(dXa): a gradient at this call's dropout output taken back to its input (dXa is kept). */
  protected addThroughDropout(dX: Tensor, dXa: Tensor, call: SiteCall): void {
    const dXin = call.scratch.get(2, dX.shape);
    ops.dropoutBackward(dXin, dXa, { p: call.dropout, seed: call.dropoutSeed, offset: call.streamOffset });
    ops.add(dX, dX, dXin);
  }

  /**
   * Y = X·Wᵀ + s·dropout(X)·Aᵀ·Bᵀ (+ the bias when `withBias`). Returns the low-rank path's input:
   * X, or dropout(X) in scratch slot 0 (valid until the site's next use of that slot).
   */
  protected lowRankForward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall, withBias: boolean): Tensor {
    const dropoutInput = call.dropout > 0 ? this.dropped(X, call) : undefined;
    ops.loraForward(Y, this.xa(X.shape[0]), X, weightOperand(base), this.A, this.B, {
      scale: this.scaling, bias: withBias ? this.biasOf(base) : undefined, dropoutInput, compute: base.compute,
    });
    return dropoutInput ?? X;
  }

  /**
   * dX (overwritten unless null), dA and dB (accumulated) of Y = X·Wᵀ + s·dropout(X)·Aᵀ·Bᵀ.
   * Returns the low-rank path's input as {@link lowRankForward} does (the dropout recomputed).
   */
  protected lowRankBackward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): Tensor {
    const xa = this.xa(X.shape[0]);
    const W = weightOperand(base);
    if (call.dropout <= 0) {
      ops.loraBackward(dX, this.dA, this.dB, dY, X, xa, W, this.A, this.B, { scale: this.scaling, compute: base.compute });
      return X;
    }
    // Dropout: recompute the mask's output instead of keeping it; chain the low-rank input
    // gradient through the dropout backward and add it to the base path's dX.
    const Xa = this.dropped(X, call);
    const dXa = call.scratch.get(1, X.shape);
    ops.loraBackward(dX, this.dA, this.dB, dY, Xa, xa, W, this.A, this.B, { scale: this.scaling, dDropoutInput: dXa, compute: base.compute });
    if (dX) this.addThroughDropout(dX, dXa, call);
    return Xa;
  }

  forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    this.lowRankForward(Y, X, base, call, true);
  }

  backward(dX: Tensor | null, dY: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.bias) ops.biasBackward(this.bias.db, dY);
    this.lowRankBackward(dX, dY, X, base, call);
  }

  /** Y (the base output) += s·(X·Aᵀ)·Bᵀ; a layer with its own bias (or DoRA's rescaling) runs forward instead. */
  forwardOnBase(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    if (this.bias) return this.forward(Y, X, base, call);
    const xa = call.scratch.get(0, [X.shape[0], this.r]);
    ops.gemm(xa, X, this.A, { transB: true });
    ops.gemm(Y, xa, this.B, { transB: true, alpha: this.scaling, beta: 1 });
  }

  dispose(): void {
    for (const t of [this.A, this.B, this.dA, this.dB]) t.dispose();
    this.bias?.b.dispose();
    this.bias?.db.dispose();
    this.xaStore?.dispose();
    this.xaStore = null;
  }
}
