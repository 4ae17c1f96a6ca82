/**
 * AdamW over the adapter's tensors, with its state (m, v, step) kept as engine tensors so a
 * checkpoint can save and restore it exactly. Four kinds, as transformers' `optim` names them:
 * - `adamw`: f32 moments in ordinary memory (torch.optim.AdamW, bit for bit);
 * - `adamw8bit`: bitsandbytes' blockwise 8-bit moments (2 bytes of state per parameter
 *   instead of 8); tensors under 4096 elements keep f32 moments;
 * - `paged_adamw`, `paged_adamw8bit`: the same states in paged memory (`Tensor.mapped`): on cpu
 *   a file on disk that the OS pages in and out, so the states may exceed the free RAM; on cuda
 *   managed memory prefetched to the GPU for each update and back to the host after it.
 * All but `adamw` would skip, for that step, a tensor whose gradient holds a NaN or an infinity
 * instead of letting it corrupt the quantized state; the trainer stops before that (E_NAN on the
 * gradient norm), so the count is not brought back from a GPU.
 */
import * as fs from 'fs';
import * as os from 'os';
import { PeftkitError } from '../errors';
import * as ops from '../ops';
import type { TrainableParam } from '../peft/method';
import { Tensor } from '../tensor';
import { OPTIM_NAMES, OptimName } from './options';

export { OPTIM_NAMES } from './options';
export type { OptimName } from './options';

export interface AdamWConfig {
  /** Defaults to `[0.9, 0.999]`. */
  betas?: [number, number];
  /** Defaults to `1e-8`. */
  eps?: number;
  /** Decoupled weight decay. Defaults to `0`. */
  weightDecay?: number;
  /** How the moments are held: `adamw`, `adamw8bit`, `paged_adamw` or `paged_adamw8bit`. Defaults to `'adamw'`. */
  optim?: OptimName;
  /** Paged kinds on cpu: the folder of the states' file (a disk, not tmpfs). Defaults to `os.tmpdir()`. */
  pagedDir?: string;
}

export class AdamW {
  readonly params: TrainableParam[];
  readonly optim: OptimName;
  /** First moments: f32 of the param's shape, or u8 codes of it when the state is 8-bit. */
  readonly m: Tensor[];
  /** Second moments, as `m`. */
  readonly v: Tensor[];
  /** 8-bit states: f32 [ceil(numel / 256)] block maxima of m; null for f32 states. */
  readonly mAbsmax: Array<Tensor | null>;
  /** 8-bit states: block maxima of v; null for f32 states. */
  readonly vAbsmax: Array<Tensor | null>;
  /** Updates done so far (the next update is step + 1). */
  step = 0;
  private readonly cfg: Required<Omit<AdamWConfig, 'optim' | 'pagedDir'>>;
  /** Paged kinds: the mapped tensors that every state is a view of. */
  private readonly arenas: Tensor[] = [];

  constructor(params: TrainableParam[], cfg: AdamWConfig = {}) {
    const optim = cfg.optim ?? 'adamw';
    if (!OPTIM_NAMES.includes(optim)) throw new PeftkitError('E_ARG', `optim: expected one of ${OPTIM_NAMES.join(', ')}, got '${String(optim)}'`);
    this.params = params;
    this.optim = optim;
    this.cfg = { betas: cfg.betas ?? [0.9, 0.999], eps: cfg.eps ?? 1e-8, weightDecay: cfg.weightDecay ?? 0 };
    const quantized = params.map((p) => optim.endsWith('8bit') && p.param.numel >= ops.MIN_8BIT_SIZE);
    const blocks = params.map((p) => Math.ceil(p.param.numel / ops.ADAMW8BIT_BLOCK));
    this.m = [];
    this.v = [];
    this.mAbsmax = [];
    this.vAbsmax = [];
    if (optim.startsWith('paged_')) {
      // Two mapped tensors (one file each on cpu) hold every state as views: u8 codes in one,
      // f32 moments and block maxima in the other. A LoRA model has hundreds of tensors.
      const device = params[0]?.param.device ?? 'cpu';
      const dir = cfg.pagedDir ?? os.tmpdir();
      fs.mkdirSync(dir, { recursive: true });
      let nCodes = 0;
      let nFloats = 0;
      params.forEach((p, i) => {
        if (quantized[i]) {
          nCodes += 2 * p.param.numel;
          nFloats += 2 * blocks[i];
        } else {
          nFloats += 2 * p.param.numel;
        }
      });
      const codes = Tensor.mapped([nCodes], { dtype: 'u8', device, dir });
      const floats = Tensor.mapped([nFloats], { device, dir });
      this.arenas.push(codes, floats);
      let atCodes = 0;
      let atFloats = 0;
      const take = (arena: Tensor, shape: number[], isCodes: boolean) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const t = arena.view(isCodes ? atCodes : atFloats, shape);
        if (isCodes) atCodes += n;
        else atFloats += n;
        return t;
      };
      params.forEach((p, i) => {
        const shape = p.param.shape;
        this.m.push(quantized[i] ? take(codes, shape, true) : take(floats, shape, false));
        this.v.push(quantized[i] ? take(codes, shape, true) : take(floats, shape, false));
        this.mAbsmax.push(quantized[i] ? take(floats, [blocks[i]], false) : null);
        this.vAbsmax.push(quantized[i] ? take(floats, [blocks[i]], false) : null);
      });
    } else {
      params.forEach((p, i) => {
        const s = ops.adamw8bitState(p.param.shape, { device: p.param.device, quantized: quantized[i] });
        this.m.push(s.m);
        this.v.push(s.v);
        this.mAbsmax.push(s.mAbsmax);
        this.vAbsmax.push(s.vAbsmax);
      });
    }
  }

  /** One update at learning rate lr (the schedule's value for this step). */
  update(lr: number): void {
    this.step++;
    const o = { step: this.step, lr, betas: this.cfg.betas, eps: this.cfg.eps };
    const wd = this.cfg.weightDecay;
    if (this.optim === 'adamw') {
      ops.adamw(this.params.map((p, i) => ({ param: p.param, grad: p.grad, m: this.m[i], v: this.v[i], weightDecay: p.decay === false ? 0 : wd })), o);
      return;
    }
    ops.adamw8bit(
      this.params.map((p, i) => ({
        param: p.param, grad: p.grad, m: this.m[i], v: this.v[i], mAbsmax: this.mAbsmax[i], vAbsmax: this.vAbsmax[i], weightDecay: p.decay === false ? 0 : wd,
      })),
      { ...o, countSkipped: false },
    );
  }

  /** Bytes of optimizer state (moments, codes and block maxima). */
  get stateBytes(): number {
    let n = 0;
    for (const t of [...this.m, ...this.v, ...this.mAbsmax, ...this.vAbsmax]) if (t) n += t.nbytes;
    return n;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v, ...this.mAbsmax, ...this.vAbsmax, ...this.arenas]) t?.dispose();
  }
}
