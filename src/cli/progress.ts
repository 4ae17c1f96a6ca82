/**
 * Training progress on the terminal: a bar on a TTY (redrawn in place, fitted to the terminal's
 * width so the ETA always shows), plain log lines otherwise (CI, pipes). tokens/s is smoothed:
 * an exponential moving average of tokens over time, not one step's timing.
 */
import type { TrainEvent } from '../train/run';

type Step = Extract<TrainEvent, { type: 'step' }>;

/** 42s, 3m07s, 1h02m. */
export function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '-';
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.round(s)}s`;
}

/** Tokens per second as an EMA over steps: tokens and seconds are averaged apart, then divided. */
export class TokenRate {
  private tok = 0;
  private sec = 0;
  private lastElapsed: number | null = null;

  constructor(private readonly alpha = 0.1) {}

  /** Adds one step (its own rate and the run's elapsed seconds after it); returns the smoothed rate. */
  add(stepRate: number, elapsedS: number): number {
    const dt = this.lastElapsed === null ? null : elapsedS - this.lastElapsed;
    this.lastElapsed = elapsedS;
    if (dt === null || !(dt > 0) || !Number.isFinite(stepRate)) {
      if (this.sec === 0 && Number.isFinite(stepRate)) return stepRate;
      return this.value;
    }
    const tokens = stepRate * dt;
    if (this.sec === 0) [this.tok, this.sec] = [tokens, dt];
    else {
      this.tok = this.alpha * tokens + (1 - this.alpha) * this.tok;
      this.sec = this.alpha * dt + (1 - this.alpha) * this.sec;
    }
    return this.value;
  }

  get value(): number {
    return this.sec > 0 ? this.tok / this.sec : NaN;
  }
}

interface State {
  step: number;
  total: number;
  loss: string;
  tps: string;
  eta: string;
}

export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(s: string): boolean;
}

export class Progress {
  private state: State | null = null;
  private drawn = false;
  private lastDraw = 0;
  private readonly rate = new TokenRate();
  private readonly tty: boolean;

  constructor(private readonly out: ProgressStream = process.stderr, private readonly now: () => number = Date.now) {
    this.tty = !!out.isTTY;
  }

  /** True when progress is drawn as a bar (a terminal). */
  get isBar(): boolean {
    return this.tty;
  }

  start(total: number, startStep: number): void {
    this.state = { step: startStep, total, loss: '-', tps: '-', eta: '-' };
    if (this.tty) this.draw();
  }

  step(e: Step): void {
    const tps = this.rate.add(e.tokensPerS, e.elapsedS);
    const s: State = { step: e.step, total: e.totalSteps, loss: e.loss.toFixed(4), tps: Number.isFinite(tps) ? tps.toFixed(0) : '-', eta: fmtTime(e.etaS) };
    this.state = s;
    if (!this.tty) {
      this.out.write(`step ${e.step}/${e.totalSteps} loss ${s.loss} lr ${e.lr.toExponential(2)} grad_norm ${e.gradNorm.toFixed(3)} tok/s ${s.tps} eta ${s.eta}\n`);
      return;
    }
    // At most ten redraws a second; the last step always.
    if (e.step >= e.totalSteps || this.now() - this.lastDraw >= 100) this.draw();
  }

  /** A line printed above the bar (the bar is redrawn under it). */
  line(text: string): void {
    if (this.tty && this.drawn) {
      this.out.write(`\r\x1b[K${text}\n`);
      this.drawn = false;
      this.draw();
    } else this.out.write(text + '\n');
  }

  /** Ends the bar: its last state stays on screen. */
  stop(): void {
    if (this.tty && this.drawn) {
      this.draw();
      this.out.write('\n');
    }
    this.drawn = false;
    this.state = null;
  }

  /** The bar's text for `width` columns: step, ETA, loss and tokens/s always fit before the bar does. */
  render(width: number): string {
    const s = this.state!;
    const parts = [`${s.step}/${s.total}`, `loss ${s.loss}`, `${s.tps} tok/s`, `ETA ${s.eta}`];
    const max = Math.max(10, width - 1); // the last column would wrap on some terminals
    // Drop the least useful parts until the text fits: tokens/s, then the loss.
    for (const drop of [[], [2], [1, 2]]) {
      const text = parts.filter((_, i) => !drop.includes(i)).join(' | ');
      const room = max - text.length - 'train || '.length;
      if (room >= 10) {
        const barW = Math.min(40, room);
        const filled = s.total > 0 ? Math.round((barW * Math.min(s.step, s.total)) / s.total) : 0;
        return `train |${'█'.repeat(filled)}${'░'.repeat(barW - filled)}| ${text}`;
      }
      if (text.length <= max && drop.length === 2) return text;
    }
    return `${s.step}/${s.total} ETA ${s.eta}`.slice(0, max);
  }

  private draw(): void {
    if (!this.state) return;
    this.out.write(`\r${this.render(this.out.columns || 80)}\x1b[K`);
    this.drawn = true;
    this.lastDraw = this.now();
  }
}
