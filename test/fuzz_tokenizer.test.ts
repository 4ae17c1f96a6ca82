/**
 * Damaged tokenizer files (tokenizer.json; tokenizer_config.json special tokens and chat template)
 * get a PeftkitError naming the file, or work: seeded mutation fuzzing, each iteration in a child
 * process (see helpers/fuzz.ts; FUZZ_ITERS=n runs more, FUZZ_SEED=s replays one).
 */
import test from 'ava';
import { runFuzz } from './helpers/fuzz';

test('fuzz tokenizer: damaged input succeeds or fails with a PeftkitError naming the file', async (t) => {
  const counts = await runFuzz(t, 'tokenizer', 100);
  // The damage must bite: some iterations are refused, and each refusal was checked above.
  t.true(Object.keys(counts).some((k) => k !== 'ok'), JSON.stringify(counts));
});
