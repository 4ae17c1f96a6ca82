/**
 * Damaged model folders (model.safetensors, sharded checkpoints, config.json) get a clear
 * PeftkitError naming the file, or load and generate: seeded mutation fuzzing (see helpers/fuzz.ts).
 */
import test from 'ava';
import { runFuzz } from './helpers/fuzz';

for (const [name, iters] of [['safetensors', 150], ['sharded', 100], ['config', 150]] as const) {
  test(`fuzz ${name}: damaged files load, or fail with a PeftkitError naming the file`, async (t) => {
    const counts = await runFuzz(t, name, iters);
    // The damage must bite: some iterations are refused.
    t.true(Object.keys(counts).some((k) => k !== 'ok'), JSON.stringify(counts));
  });
}
