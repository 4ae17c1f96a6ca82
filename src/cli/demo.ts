/**
 * `peftkit train` with no model and no data: a one-minute tour. It writes a tiny random Llama
 * (deterministic, made by writeRandomModel) with a byte-level tokenizer, fine-tunes a LoRA on
 * the bundled demo/data.jsonl, and prints a generation before and after.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel } from '../inference/model';
import { writeRandomModel } from '../model/random_model';
import { train } from '../train/train';

const DATA = path.join(__dirname, '..', '..', '..', 'demo', 'data.jsonl');
const PROMPT = 'What does Ada keep?';

export async function runDemo(outArg?: string): Promise<number> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-demo-'));
  const modelDir = path.join(work, 'tiny-llama');
  const out = outArg ?? path.join(work, 'adapter');
  const say = (s: string) => process.stdout.write(s + '\n');
  say('peftkit demo (no --model/--data given): LoRA on a tiny random Llama, bundled data');
  writeRandomModel(modelDir, { hiddenSize: 64, intermediateSize: 176, numLayers: 2, numHeads: 4, numKvHeads: 2, seed: 1 });
  say(`  model: ${modelDir} (random init, HF layout)`);
  say(`  data:  ${DATA}`);
  const before = loadModel(modelDir);
  const greedy = { maxNewTokens: 24, temperature: 0 };
  say(`\nbefore: ${JSON.stringify(PROMPT)} -> ${JSON.stringify(before.generate(PROMPT, greedy).text)}`);
  const run = train({
    model: modelDir, data: DATA, out, steps: 150, r: 16, alpha: 32, dropout: 0, targets: 'all-linear',
    lr: 1e-2, batchSize: 8, schedule: 'cosine', warmupSteps: 10, maskPrompt: true, seed: 0,
  });
  run.on('step', (e) => {
    if (e.step === 1 || e.step % 15 === 0) say(`  step ${String(e.step).padStart(3)}/${e.totalSteps}  loss ${e.loss.toFixed(4)}  ${e.tokensPerS.toFixed(0)} tokens/s`);
  });
  const r = await run;
  say(`\nafter:  ${JSON.stringify(PROMPT)} -> ${JSON.stringify(before.generate(PROMPT, { ...greedy, adapter: r.adapterDir }).text)}`);
  say(`\nadapter (PEFT format): ${r.adapterDir}  (${r.elapsedS.toFixed(1)} s)`);
  say(`try: peftkit generate --model ${modelDir} --adapter ${r.adapterDir} --prompt "What does Bo keep?" --temperature 0`);
  before.dispose();
  return 0;
}
