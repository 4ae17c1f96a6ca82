/**
 * `peftkit demo` (and `peftkit train` with no arguments): a one-minute tour. It writes a tiny
 * random Llama (deterministic, made by writeRandomModel) with a byte-level tokenizer, fine-tunes
 * a LoRA on the bundled demo/data.jsonl, and prints a generation before and after. Its files go
 * to a temporary folder removed at the end, or to `out` when given.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync } from '../inference/model';
import { writeRandomModel } from '../model/random_model';
import { train } from '../train/train';
import { Progress } from './progress';

const DATA = path.join(__dirname, '..', '..', '..', 'demo', 'data.jsonl');
const PROMPT = 'What does Ada keep?';

export interface DemoOptions {
  /** Optimizer steps. Defaults to 150. */
  steps?: number;
  /** Peak learning rate. Defaults to 1e-2. */
  lr?: number;
  /** Keep the model and adapter in this folder. Defaults to a temporary folder, removed at the end. */
  out?: string;
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const keep = o.out !== undefined;
  const work = keep ? path.resolve(o.out!) : fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-demo-'));
  const modelDir = path.join(work, 'tiny-llama');
  const out = path.join(work, 'adapter');
  const steps = o.steps ?? 150;
  const say = (s: string) => process.stdout.write(s + '\n');
  const ctrl = new AbortController();
  const onSigint = () => ctrl.abort();
  process.once('SIGINT', onSigint);
  const progress = new Progress();
  try {
    say('peftkit demo (no --model/--data given): LoRA on a tiny random Llama, bundled data');
    writeRandomModel(modelDir, { hiddenSize: 64, intermediateSize: 176, numLayers: 2, numHeads: 4, numKvHeads: 2, seed: 1 });
    say(`  model: ${modelDir} (random init, HF layout)${keep ? '' : ', removed at the end'}`);
    say(`  data:  ${DATA}`);
    const before = loadModelSync(modelDir);
    try {
      const greedy = { maxNewTokens: 24, temperature: 0 };
      say(`\nbefore: ${JSON.stringify(PROMPT)} -> ${JSON.stringify(before.generate(PROMPT, greedy).text)}`);
      const run = train({
        model: modelDir, data: DATA, out, steps, r: 16, alpha: 32, dropout: 0, targets: 'all-linear',
        lr: o.lr ?? 1e-2, batchSize: 8, schedule: 'cosine', warmupSteps: Math.min(10, Math.floor(steps / 10)), maskPrompt: true, seed: 0,
        overwrite: true, signal: ctrl.signal,
      });
      run.on('start', (e) => progress.start(e.totalSteps, e.startStep));
      const every = Math.max(1, Math.round(steps / 10));
      run.on('step', (e) => {
        if (progress.isBar) progress.step(e);
        else if (e.step === 1 || e.step % every === 0 || e.step === e.totalSteps) say(`  step ${String(e.step).padStart(3)}/${e.totalSteps}  loss ${e.loss.toFixed(4)}  ${e.tokensPerS.toFixed(0)} tokens/s`);
      });
      const r = await run;
      progress.stop();
      say(`\nafter:  ${JSON.stringify(PROMPT)} -> ${JSON.stringify(before.generate(PROMPT, { ...greedy, adapter: r.adapterDir }).text)}`);
      say(`\n${r.steps} steps in ${r.elapsedS.toFixed(1)} s`);
      if (keep) {
        say(`adapter (PEFT format): ${r.adapterDir}`);
        say(`try: peftkit generate --model ${modelDir} --adapter ${r.adapterDir} --prompt "What does Bo keep?" --temperature 0`);
      } else {
        say('try: peftkit demo --out DIR to keep the model and adapter, then peftkit generate --model DIR/tiny-llama --adapter DIR/adapter --prompt "What does Bo keep?"');
      }
    } finally {
      before.dispose();
    }
    return 0;
  } finally {
    progress.stop();
    process.off('SIGINT', onSigint);
    if (!keep) fs.rmSync(work, { recursive: true, force: true });
  }
}
