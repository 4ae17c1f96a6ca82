/**
 * Damaged bitsandbytes-layout folders (quant_state JSON, absmax / quant_map / nested_* / SCB /
 * weight_format tensors: missing, retyped, resized, NaN; quantization_config), loaded and merged
 * get a PeftkitError naming the file, or work with finite outputs: seeded mutation fuzzing, each
 * iteration in a child process (see helpers/fuzz.ts; FUZZ_ITERS=n runs more, FUZZ_SEED=s replays one).
 */
import test from 'ava';
import { runFuzz } from './helpers/fuzz';

for (const [name, iterations] of [['bnb', 100]] as const) {
  test(`fuzz ${name}: damaged input succeeds or fails with a PeftkitError naming the file`, async (t) => {
    const counts = await runFuzz(t, name, iterations);
    // The damage must bite: some iterations are refused, and each refusal was checked above.
    t.true(Object.keys(counts).some((k) => k !== 'ok'), JSON.stringify(counts));
  });
}
