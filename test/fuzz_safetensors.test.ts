/**
 * Damaged safetensors files (header length, header JSON: dtype, shape, data_offsets out of range or
 * overlapping, __metadata__; truncation; NaN weights) and sharded checkpoints (index JSON, missing
 * or wrong shards)
 * get a PeftkitError naming the file, or work with finite outputs: seeded mutation fuzzing, each
 * iteration in a child process (see helpers/fuzz.ts; FUZZ_ITERS=n runs more, FUZZ_SEED=s replays one).
 */
import test from 'ava';
import { runFuzz } from './helpers/fuzz';

for (const [name, iterations] of [['safetensors', 120], ['sharded', 80]] as const) {
  test(`fuzz ${name}: damaged input succeeds or fails with a PeftkitError naming the file`, async (t) => {
    const counts = await runFuzz(t, name, iterations);
    // The damage must bite: some iterations are refused, and each refusal was checked above.
    t.true(Object.keys(counts).some((k) => k !== 'ok'), JSON.stringify(counts));
  });
}
