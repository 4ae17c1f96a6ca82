/**
 * lrAt against transformers' definitions (optimization.py: get_constant_schedule_with_warmup,
 * get_linear_schedule_with_warmup, get_cosine_schedule_with_warmup with num_cycles 0.5), values
 * worked out by hand: lr 1, warmup 2, 10 total steps.
 */
import test from 'ava';
import { lrAt, ScheduleName } from '../src/train/schedule';

const EXPECTED: Record<ScheduleName, number[]> = {
  // step:      0  1    2  3  4  5  6  7  8  9  10
  constant: [0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1],
  // (10 - k) / 8 after warmup
  linear: [0, 0.5, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0],
  // 0.5 (1 + cos(pi (k - 2) / 8)) after warmup
  cosine: [0, 0.5, 1, 0.9619397662556434, 0.8535533905932737, 0.6913417161825449, 0.5, 0.3086582838174551, 0.14644660940672627, 0.038060233744356624, 0],
};

for (const schedule of Object.keys(EXPECTED) as ScheduleName[]) {
  test(`${schedule} with warmup follows transformers' schedule, step by step`, (t) => {
    EXPECTED[schedule].forEach((want, k) => {
      const got = lrAt(k, { schedule, lr: 1, warmupSteps: 2, totalSteps: 10 });
      t.true(Math.abs(got - want) <= 1e-12, `step ${k}: ${got} vs ${want}`);
    });
  });
}

test('the peak lr scales every value; no warmup starts at the peak; past the end decay stays at 0', (t) => {
  t.is(lrAt(0, { schedule: 'cosine', lr: 3e-4, totalSteps: 10 }), 3e-4);
  t.is(lrAt(0, { schedule: 'linear', lr: 3e-4, totalSteps: 10 }), 3e-4);
  t.true(Math.abs(lrAt(6, { schedule: 'linear', lr: 2e-4, warmupSteps: 2, totalSteps: 10 }) - 1e-4) <= 1e-18);
  t.is(lrAt(12, { schedule: 'linear', lr: 1, warmupSteps: 2, totalSteps: 10 }), 0);
  t.true(lrAt(12, { schedule: 'cosine', lr: 1, warmupSteps: 2, totalSteps: 10 }) >= 0);
  // warmup as long as the run: every step still warming up
  t.deepEqual([0, 1, 2].map((k) => lrAt(k, { schedule: 'cosine', lr: 1, warmupSteps: 3, totalSteps: 3 })), [0, 1 / 3, 2 / 3]);
});
