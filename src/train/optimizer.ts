/**
 * AdamW over the adapter's tensors, with its state (m, v, step) kept as engine tensors so a
 * checkpoint can save and restore it exactly.
 */
import * as ops from '../ops';
import type { TrainableParam } from '../peft/lora';
import { Tensor } from '../tensor';

export interface AdamWConfig {
  /** Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Defaults to `1e-8`. */
  eps?: number;
  /** Decoupled weight decay. Defaults to `0`. */
  weightDecay?: number;
}

export class AdamW {
  readonly params: TrainableParam[];
  readonly m: Tensor[];
  readonly v: Tensor[];
  /** Updates done so far (the next update is step + 1). */
  step = 0;
  private readonly cfg: Required<AdamWConfig>;

  constructor(params: TrainableParam[], cfg: AdamWConfig = {}) {
    this.params = params;
    this.cfg = { betas: cfg.betas ?? [0.9, 0.999], eps: cfg.eps ?? 1e-8, weightDecay: cfg.weightDecay ?? 0 };
    this.m = params.map((p) => Tensor.zeros(p.param.shape, { device: p.param.device }));
    this.v = params.map((p) => Tensor.zeros(p.param.shape, { device: p.param.device }));
  }

  /** One update at learning rate lr (the schedule's value for this step). */
  update(lr: number): void {
    this.step++;
    ops.adamw(
      this.params.map((p, i) => ({ param: p.param, grad: p.grad, m: this.m[i], v: this.v[i], weightDecay: this.cfg.weightDecay })),
      { step: this.step, lr, betas: this.cfg.betas, eps: this.cfg.eps },
    );
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
