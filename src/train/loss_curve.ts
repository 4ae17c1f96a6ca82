/** The loss curve beside the adapter: a small standalone SVG (train loss, eval loss). */
import { writeFileAtomic } from '../io/atomic';
import { isEval, LogRecord } from './log';

const W = 640;
const H = 360;
const PAD = { l: 64, r: 16, t: 28, b: 40 };

const MAX_POINTS = 2000;

/** Averages consecutive records into at most `max` points, so a long run's picture stays small. */
function downsample(pts: Array<{ step: number; loss: number }>, max: number): Array<{ step: number; loss: number }> {
  if (pts.length <= max) return pts;
  const per = Math.ceil(pts.length / max);
  const out: Array<{ step: number; loss: number }> = [];
  for (let i = 0; i < pts.length; i += per) {
    const chunk = pts.slice(i, i + per).filter((p) => Number.isFinite(p.loss));
    if (chunk.length) out.push({ step: chunk[chunk.length - 1].step, loss: chunk.reduce((a, p) => a + p.loss, 0) / chunk.length });
  }
  return out;
}

/** A round step (1, 2 or 5 times a power of ten) giving about `n` intervals over [lo, hi]. */
function niceStep(lo: number, hi: number, n: number): number {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * (1 - 1e-9)) ?? raw;
}

const round = (v: number) => Number(v.toPrecision(12));

/** A linear axis: its ends on round numbers around [lo, hi], and the ticks between them. */
export function linearAxis(lo: number, hi: number, n = 5): { lo: number; hi: number; ticks: number[] } {
  if (!(hi > lo)) [lo, hi] = [lo - 0.5, hi + 0.5];
  const step = niceStep(lo, hi, n);
  const a = round(Math.floor(lo / step + 1e-9) * step);
  const b = round(Math.ceil(hi / step - 1e-9) * step);
  const ticks: number[] = [];
  for (let i = 0; a + i * step <= b + step * 1e-9; i++) ticks.push(round(a + i * step));
  return { lo: a, hi: b, ticks };
}

/** A log axis over [lo, hi] (lo > 0): its ends and ticks at 1, 2 and 5 times powers of ten. */
export function logAxis(lo: number, hi: number): { lo: number; hi: number; ticks: number[] } {
  const cands: number[] = [];
  for (let e = Math.floor(Math.log10(lo)) - 1; e <= Math.ceil(Math.log10(hi)) + 1; e++) for (const m of [1, 2, 5]) cands.push(round(m * 10 ** e));
  const a = [...cands].reverse().find((c) => c <= lo * (1 + 1e-9)) ?? lo;
  const b = cands.find((c) => c >= hi * (1 - 1e-9)) ?? hi;
  let ticks = cands.filter((c) => c >= a && c <= b);
  // Many decades: the powers of ten only.
  if (ticks.length > 9) ticks = ticks.filter((c) => Number.isInteger(Math.log10(c)) || c === a || c === b);
  return { lo: a, hi: b, ticks };
}

/** A tick's label: short, no float noise (0.30000000000000004 -> 0.3). */
function label(v: number): string {
  if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(0);
  return String(round(v));
}

/**
 * The loss curve: train loss as a line, eval loss as a line with dots on top; a y-axis labelled
 * "loss" with ticks on round numbers; a log scale when the losses span more than a decade (the
 * first steps' high loss then no longer flattens the rest of the run).
 */
export function lossCurveSvg(records: readonly LogRecord[], title = 'training loss'): string {
  const train = downsample(records.filter((r) => !isEval(r)) as Array<{ step: number; loss: number }>, MAX_POINTS).filter((r) => Number.isFinite(r.loss));
  const evals = records.filter(isEval).filter((r) => Number.isFinite(r.eval_loss));
  const pts = [...train.map((r) => [r.step, r.loss]), ...evals.map((r) => [r.step, r.eval_loss])];
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  // Loops, not Math.min(...xs): a long run's points would overflow the call stack when spread.
  const x0 = xs.reduce((a, b) => Math.min(a, b), 0), x1 = xs.reduce((a, b) => Math.max(a, b), 1);
  let y0 = ys.reduce((a, b) => Math.min(a, b), Infinity), y1 = ys.reduce((a, b) => Math.max(a, b), -Infinity);
  if (!pts.length) [y0, y1] = [0, 1];
  const log = y0 > 0 && y1 / y0 > 10;
  const ya = log ? logAxis(y0, y1) : linearAxis(y0, y1);
  const xa = linearAxis(x0, x1);
  const f = (y: number) => (log ? Math.log10(y) : y);
  const sx = (x: number) => PAD.l + ((x - xa.lo) / (xa.hi - xa.lo)) * (W - PAD.l - PAD.r);
  const sy = (y: number) => H - PAD.b - ((f(y) - f(ya.lo)) / (f(ya.hi) - f(ya.lo))) * (H - PAD.t - PAD.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="13">${title}${log ? ' (log scale)' : ''}</text>`,
  ];
  for (const t of ya.ticks) {
    parts.push(`<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${PAD.l - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${label(t)}</text>`);
  }
  for (const t of xa.ticks) {
    parts.push(`<text x="${sx(t).toFixed(1)}" y="${H - PAD.b + 16}" text-anchor="middle">${label(t)}</text>`);
  }
  parts.push(`<text x="${W / 2}" y="${H - 8}" text-anchor="middle">step</text>`);
  const mid = (PAD.t + H - PAD.b) / 2;
  parts.push(`<text x="14" y="${mid}" text-anchor="middle" transform="rotate(-90 14 ${mid})">loss${log ? ' (log)' : ''}</text>`);
  parts.push(`<rect x="${PAD.l}" y="${PAD.t}" width="${W - PAD.l - PAD.r}" height="${H - PAD.t - PAD.b}" fill="none" stroke="#888"/>`);
  const line = train.map((r) => `${sx(r.step).toFixed(1)},${sy(r.loss).toFixed(1)}`).join(' ');
  if (line) parts.push(`<polyline class="train" points="${line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
  if (evals.length > 1) {
    parts.push(`<polyline class="eval" points="${evals.map((e) => `${sx(e.step).toFixed(1)},${sy(e.eval_loss).toFixed(1)}`).join(' ')}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"/>`);
  }
  for (const e of evals) parts.push(`<circle class="eval" cx="${sx(e.step).toFixed(1)}" cy="${sy(e.eval_loss).toFixed(1)}" r="4" fill="#d62728" stroke="white" stroke-width="1"/>`);
  parts.push(`<text x="${W - PAD.r - 4}" y="${PAD.t + 14}" text-anchor="end" fill="#1f77b4">train loss</text>`);
  if (evals.length) parts.push(`<text x="${W - PAD.r - 4}" y="${PAD.t + 28}" text-anchor="end" fill="#d62728">eval loss</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

export function writeLossCurve(file: string, records: readonly LogRecord[], title?: string): void {
  writeFileAtomic(file, [lossCurveSvg(records, title)]);
}
