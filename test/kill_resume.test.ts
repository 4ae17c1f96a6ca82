/**
 * A run killed with SIGKILL (no chance to write anything on the way out) resumes from its last
 * complete checkpoint to the same adapter as a run that was never interrupted, wherever the kill
 * lands: between steps, inside a checkpoint's write, inside the log's append.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { readLog } from '../src/train/log';
import { train } from '../src/train/train';
import type { Device } from '../src/index';
import { ALL_DEVICES } from './helpers/check';
import { deviceTest } from './helpers/device_test';
import { spawnChild } from './helpers/spawn';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-kill-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// 5-30 ms a step with its checkpoint here: the kill (≤ 4 checkpoints + 60 ms in) lands mid-run,
// with room for a machine several times faster.
const STEPS = 80;
const hyper = { r: 4, alpha: 8, dropout: 0.1, targets: 'all-linear' as const, batchSize: 2, lr: 5e-3, maxLength: 48, seed: 7 };
const cliHyper = [
  '--r', '4', '--alpha', '8', '--dropout', '0.1', '--targets', 'all-linear', '--batch-size', '2', '--lr', '5e-3',
  '--max-length', '48', '--seed', '7', '--steps', String(STEPS), '--save-every', '1',
];

function fixture(): { model: string; data: string } {
  const dir = tmp();
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 21 });
  const rows = Array.from({ length: 16 }, (_, i) => JSON.stringify({ prompt: `item ${i} is`, completion: ` number ${i * 3}` }));
  const data = path.join(dir, 'train.jsonl');
  fs.writeFileSync(data, rows.join('\n') + '\n');
  return { model, data };
}

/** Starts the CLI run and SIGKILLs it at a random moment after checkpoint `afterStep` exists. */
async function killedRun(model: string, data: string, out: string, device: Device, afterStep: number, delayMs: number): Promise<NodeJS.Signals | null> {
  // spawnChild: a spawn that fails on a loaded machine is retried, or rejects, never an uncaught exception.
  const args = [BIN, 'train', '--model', model, '--data', data, '--out', out, '--device', device, ...cliHyper];
  const { child } = await spawnChild(process.execPath, args, { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  const marker = path.join(out, 'checkpoints', `step-${afterStep}`, 'trainer_state.json');
  const deadline = Date.now() + 120_000;
  let finished = false;
  void exited.then(() => (finished = true));
  while (!fs.existsSync(marker) && !finished && Date.now() < deadline) await sleep(5);
  await sleep(delayMs);
  child.kill('SIGKILL');
  return exited;
}

for (const device of ALL_DEVICES) deviceTest(device, 'a run killed with SIGKILL at a random moment resumes to the uninterrupted adapter', async (t) => {
  const { model, data } = fixture();
  const straight = path.join(tmp(), 'straight');
  await train({ ...hyper, device, model, data, out: straight, steps: STEPS });
  const m = LlamaModel.load(model);
  const expected = LoraAdapter.load(straight, m.linearModules).stateDict();

  // Two kills at fresh random points each run; the seed-free randomness is the point (any
  // moment must be safe), and the message names the moment so a failure can be replayed.
  for (let round = 0; round < 2; round++) {
    const out = path.join(tmp(), 'out');
    const afterStep = 1 + Math.floor(Math.random() * 4);
    const delayMs = Math.floor(Math.random() * 60);
    const moment = `killed ${delayMs} ms after checkpoint ${afterStep}`;
    t.is(await killedRun(model, data, out, device, afterStep, delayMs), 'SIGKILL', `the run was still going when ${moment}`);
    t.false(fs.existsSync(path.join(out, 'adapter_model.safetensors')), `no final adapter before the resume, ${moment}`);
    const result = await train({ ...hyper, device, model, data, out, steps: STEPS, resume: out });
    t.is(result.steps, STEPS, moment);
    const got = LoraAdapter.load(out, m.linearModules).stateDict();
    for (const [k, v] of expected) t.deepEqual(got.get(k), v, `${k}, ${moment}`);
    const steps = readLog(result.logFile).filter((r) => 'loss' in r).map((r) => r.step);
    t.deepEqual(steps, Array.from({ length: STEPS }, (_, i) => i + 1), `the log has each step once, ${moment}`);
    const leftovers = [out, path.join(out, 'checkpoints')].flatMap((d) => fs.readdirSync(d).filter((n) => n.startsWith('.')));
    t.deepEqual(leftovers, [], `no temporaries left behind, ${moment}`);
  }
  m.dispose();
});
