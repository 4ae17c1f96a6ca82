/**
 * Learning-rate schedules, as transformers' get_*_schedule_with_warmup define them: the lr used
 * by optimizer step k (0-based) is `lr · factor(k)`. So with warmup the first step runs at lr 0,
 * exactly as in a Hugging Face Trainer run.
 */
export type ScheduleName = 'constant' | 'linear' | 'cosine';

export interface ScheduleOptions {
  schedule: ScheduleName;
  /** Peak learning rate. */
  lr: number;
  /** Steps of linear warmup from 0 to lr. Defaults to `0`. */
  warmupSteps?: number;
  /** Total optimizer steps (needed by linear and cosine decay). */
  totalSteps: number;
}

export function lrAt(step: number, o: ScheduleOptions): number {
  const warmup = o.warmupSteps ?? 0;
  if (step < warmup) return (o.lr * step) / Math.max(1, warmup);
  if (o.schedule === 'constant') return o.lr;
  const progress = (step - warmup) / Math.max(1, o.totalSteps - warmup);
  if (o.schedule === 'linear') return o.lr * Math.max(0, (o.totalSteps - step) / Math.max(1, o.totalSteps - warmup));
  // cosine with half a cycle: from lr down to 0 at totalSteps
  return o.lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
