/** Training progress on the terminal: a bar on a TTY, plain log lines otherwise (CI, pipes). */
import { SingleBar } from 'cli-progress';
import type { TrainEvent } from '../train/run';

type Step = Extract<TrainEvent, { type: 'step' }>;

const fmtTime = (s: number) => (s >= 3600 ? `${(s / 3600).toFixed(1)}h` : s >= 60 ? `${Math.floor(s / 60)}m${Math.round(s % 60)}s` : `${s.toFixed(0)}s`);

export class Progress {
  private bar: SingleBar | null = null;
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {
    this.tty = !!out.isTTY;
  }

  start(total: number, startStep: number): void {
    if (!this.tty) return;
    this.bar = new SingleBar({
      stream: this.out,
      format: 'train |{bar}| {value}/{total} | loss {loss} | {tps} tok/s | ETA {etaHuman}',
      barCompleteChar: '█',
      barIncompleteChar: '░',
      hideCursor: true,
    });
    this.bar.start(total, startStep, { loss: '-', tps: '-', etaHuman: '-' });
  }

  step(e: Step): void {
    const payload = { loss: e.loss.toFixed(4), tps: e.tokensPerS.toFixed(0), etaHuman: fmtTime(e.etaS) };
    if (this.bar) this.bar.update(e.step, payload);
    else this.out.write(`step ${e.step}/${e.totalSteps} loss ${payload.loss} lr ${e.lr.toExponential(2)} grad_norm ${e.gradNorm.toFixed(3)} tok/s ${payload.tps} eta ${payload.etaHuman}\n`);
  }

  /** A line that must not be overdrawn by the bar. */
  line(text: string): void {
    if (this.bar) {
      this.bar.stop();
      this.out.write(text + '\n');
      const b = this.bar as unknown as { value: number; total: number };
      this.bar.start(b.total, b.value);
    } else this.out.write(text + '\n');
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
