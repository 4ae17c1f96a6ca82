/** The progress bar (src/cli/progress.ts) on a fake 70-column terminal, and its smoothed tokens/s. */
import test from 'ava';
import { fmtTime, Progress, TokenRate } from '../src/cli/progress';

function terminal(columns: number) {
  const chunks: string[] = [];
  return { isTTY: true, columns, write: (s: string) => (chunks.push(s), true), chunks };
}

/** What the terminal shows: each \r starts the line again, \x1b[K clears its rest. */
function screen(chunks: string[]): string[] {
  const lines = [''];
  for (const ch of chunks.join('').replace(/\x1b\[K/g, '').split(/(\r|\n)/)) {
    if (ch === '\r') lines[lines.length - 1] = '';
    else if (ch === '\n') lines.push('');
    else lines[lines.length - 1] += ch;
  }
  return lines.filter((l) => l !== '');
}

const step = (i: number, total: number, etaS: number) => ({
  type: 'step' as const, step: i, totalSteps: total, loss: 2 / i, lr: 1e-4, gradNorm: 1, tokensPerS: 1000 + (i % 2) * 800, elapsedS: i * 0.5, etaS,
});

test('no raw template after eval/checkpoint lines, at the last step or when stopped; the ETA shows in 70 columns', (t) => {
  let now = 0;
  const term = terminal(70);
  const p = new Progress(term, () => (now += 200));
  p.start(1000, 0);
  for (let i = 1; i <= 3; i++) p.step(step(i, 1000, 3725));
  p.line('eval at step 3: loss 1.2345, perplexity 3.44');
  p.line('checkpoint: out/checkpoints/step-3');
  p.step(step(4, 1000, 3700));
  p.line('stopping after this step');
  p.stop(); // Ctrl-C: the run stops mid-way
  const shown = screen(term.chunks);
  t.false(shown.some((l) => /[{}]/.test(l)), shown.join('\n'));
  t.is(shown.filter((l) => l.startsWith('train |')).length, 1, 'one bar left on screen, under the lines');
  // Every frame drawn, including those overdrawn later.
  const bars = term.chunks.join('').replace(/\x1b\[K/g, '').split(/\r|\n/).filter((l) => l.startsWith('train |'));
  t.true(bars.length >= 4, String(bars.length));
  t.false(bars.some((l) => /[{}]/.test(l)), bars.join('\n'));
  for (const b of bars) t.true(b.length <= 69, `fits 70 columns: ${b} (${b.length})`);
  t.regex(bars[bars.length - 1], /4\/1000 \| loss 0\.5000 \| \d+ tok\/s \| ETA 1h01m$/);
  t.true(shown.includes('eval at step 3: loss 1.2345, perplexity 3.44'));
  // The last step, in a narrow terminal: the ETA still shows.
  const narrow = terminal(40);
  const q = new Progress(narrow);
  q.start(5, 0);
  for (let i = 1; i <= 5; i++) q.step(step(i, 5, 0));
  q.stop();
  const last = screen(narrow.chunks).pop()!;
  t.true(last.length <= 39, last);
  t.regex(last, /5\/5 .*ETA 0s$/);
});

test('plain lines when not a terminal', (t) => {
  const chunks: string[] = [];
  const p = new Progress({ isTTY: false, write: (s: string) => (chunks.push(s), true) });
  p.start(2, 0);
  p.step(step(1, 2, 1));
  p.line('eval');
  p.stop();
  t.deepEqual(chunks.join('').split('\n').filter(Boolean).map((l) => l.replace(/tok\/s \d+/, 'tok/s N')), ['step 1/2 loss 2.0000 lr 1.00e-4 grad_norm 1.000 tok/s N eta 1s', 'eval']);
});

test('tokens/s is an EMA of tokens over time, not one step\'s timing', (t) => {
  const r = new TokenRate(0.1);
  t.is(r.add(1000, 1), 1000);
  // Alternating fast and slow steps of equal duration: the EMA stays between them, near the mean.
  let v = 0;
  for (let i = 2; i < 60; i++) v = r.add(i % 2 ? 3000 : 1000, i);
  t.true(v > 1800 && v < 2200, String(v));
  t.is(fmtTime(42), '42s');
  t.is(fmtTime(187), '3m07s');
  t.is(fmtTime(3725), '1h02m');
});
