/** The loss curve beside the adapter: a small standalone SVG (train loss, and eval loss dots). */
import { writeFileAtomic } from '../io/atomic';
import { isEval, LogRecord } from './log';

const W = 640;
const H = 360;
const PAD = { l: 56, r: 16, t: 28, b: 40 };

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

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export function lossCurveSvg(records: readonly LogRecord[], title = 'training loss'): string {
  const train = downsample(records.filter((r) => !isEval(r)) as Array<{ step: number; loss: number }>, MAX_POINTS);
  const evals = records.filter(isEval);
  const pts = [...train.map((r) => [r.step, r.loss]), ...evals.map((r) => [r.step, r.eval_loss])].filter(([, y]) => Number.isFinite(y));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  // Loops, not Math.min(...xs): a long run's points would overflow the call stack when spread.
  const x0 = xs.reduce((a, b) => Math.min(a, b), 0), x1 = xs.reduce((a, b) => Math.max(a, b), 1);
  let y0 = ys.reduce((a, b) => Math.min(a, b), Infinity), y1 = ys.reduce((a, b) => Math.max(a, b), -Infinity);
  if (!pts.length) [y0, y1] = [0, 1];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const sx = (x: number) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
  const sy = (y: number) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="13">${title}</text>`,
  ];
  for (const t of niceTicks(y0, y1)) {
    parts.push(`<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${PAD.l - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(x0, x1)) {
    parts.push(`<text x="${sx(t).toFixed(1)}" y="${H - PAD.b + 16}" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<text x="${W / 2}" y="${H - 8}" text-anchor="middle">step</text>`);
  parts.push(`<rect x="${PAD.l}" y="${PAD.t}" width="${W - PAD.l - PAD.r}" height="${H - PAD.t - PAD.b}" fill="none" stroke="#888"/>`);
  const line = train.filter((r) => Number.isFinite(r.loss)).map((r) => `${sx(r.step).toFixed(1)},${sy(r.loss).toFixed(1)}`).join(' ');
  if (line) parts.push(`<polyline points="${line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
  for (const e of evals) parts.push(`<circle cx="${sx(e.step).toFixed(1)}" cy="${sy(e.eval_loss).toFixed(1)}" r="3.5" fill="#d62728"/>`);
  parts.push(`<text x="${W - PAD.r - 4}" y="${PAD.t + 14}" text-anchor="end" fill="#1f77b4">train loss</text>`);
  if (evals.length) parts.push(`<text x="${W - PAD.r - 4}" y="${PAD.t + 28}" text-anchor="end" fill="#d62728">eval loss</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

export function writeLossCurve(file: string, records: readonly LogRecord[], title?: string): void {
  writeFileAtomic(file, [lossCurveSvg(records, title)]);
}
