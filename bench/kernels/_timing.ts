/** Timing shared by the kernel benchmarks (the runner skips files starting with '_'). */
/** Peers get the same rule (their scripts take these two numbers). */
export const MIN_REPS = 3;
export const MIN_SECONDS = 2;

/** Median wall time of `step` in ms after one warm-up call: at least MIN_REPS calls, more while under MIN_SECONDS (50 at most). */
export function medianMs(step: () => void): number {
  step();
  const times: number[] = [];
  const start = performance.now();
  while (times.length < MIN_REPS || (performance.now() - start < MIN_SECONDS * 1e3 && times.length < 50)) {
    const t0 = performance.now();
    step();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const mid = times.length >> 1;
  return times.length % 2 ? times[mid] : (times[mid - 1] + times[mid]) / 2;
}
