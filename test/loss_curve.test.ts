/** loss_curve.svg: a labelled y-axis with round ticks, a log scale past a decade, the eval loss visible. */
import test from 'ava';
import { linearAxis, logAxis, lossCurveSvg } from '../src/train/loss_curve';
import type { LogRecord } from '../src/train/log';

const train = (losses: number[]): LogRecord[] =>
  losses.map((loss, i) => ({ step: i + 1, loss, lr: 1e-4, grad_norm: 1, tokens_per_s: 1, elapsed_s: i, tokens: i }));
const yTicks = (svg: string) => [...svg.matchAll(/<text x="\d+" y="[\d.]+" text-anchor="end">([^<]+)<\/text>/g)].map((m) => m[1]);
const circles = (svg: string) => [...svg.matchAll(/<circle class="eval" cx="([\d.]+)" cy="([\d.]+)"/g)].map((m) => [Number(m[1]), Number(m[2])]);

test('axes start and end on round numbers', (t) => {
  t.deepEqual(linearAxis(1.93, 2.31), { lo: 1.9, hi: 2.4, ticks: [1.9, 2, 2.1, 2.2, 2.3, 2.4] });
  t.deepEqual(linearAxis(0, 12), { lo: 0, hi: 15, ticks: [0, 5, 10, 15] });
  t.deepEqual(logAxis(0.07, 10.4), { lo: 0.05, hi: 20, ticks: [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20] });
});

test('a loss spanning more than a decade is drawn on a log scale; the eval loss is a visible line of dots', (t) => {
  const losses = Array.from({ length: 200 }, (_, i) => 10 * Math.exp(-i / 30) + 0.05);
  const records: LogRecord[] = [...train(losses), ...[50, 100, 150, 200].map((step) => ({ step, eval_loss: 0.1 + 20 / step, eval_perplexity: 1, elapsed_s: step }))];
  const svg = lossCurveSvg(records);
  t.regex(svg, /training loss \(log scale\)/);
  t.regex(svg, /transform="rotate\(-90[^"]*"[^>]*>loss \(log\)<\/text>/, 'a y-axis label');
  const ticks = yTicks(svg);
  for (const v of ['0.1', '1', '10']) t.true(ticks.includes(v), `tick ${v} in ${ticks.join(' ')}`);
  const dots = circles(svg);
  t.is(dots.length, 4);
  // Visible: spread over the plot's height, not squashed into its bottom rows as on a linear scale.
  const ys = dots.map((d) => d[1]);
  t.true(Math.max(...ys) - Math.min(...ys) > 40, `eval dots spread ${ys.join(' ')}`);
  t.regex(svg, /<polyline class="eval"/);
  t.regex(svg, />eval loss</);
});

test('a loss within a decade stays linear, with round ticks and a labelled axis', (t) => {
  const svg = lossCurveSvg(train([2.31, 2.2, 2.05, 1.93]));
  t.notRegex(svg, /log scale/);
  t.deepEqual(yTicks(svg), ['1.9', '2', '2.1', '2.2', '2.3', '2.4']);
  t.regex(svg, />loss<\/text>/);
  t.notRegex(svg, /NaN|undefined/);
  t.notRegex(lossCurveSvg([]), /NaN|undefined/);
});
