/**
 * `--device` through the real bin: `auto` states the device it chose and why; `cuda` where it
 * cannot work is one line (E_DEVICE), never a silent fallback to the cpu.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceChoice, runtimeInfo } from '../src/index';
import { writeRandomModel } from '../src/model/random_model';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
// PEFTKIT_ADDON as the test runner has it: the bin loads the same addon as this process.
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

function task(): { model: string; data: string; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-device-'));
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 2, numLayers: 1, seed: 9 });
  const data = path.join(dir, 'd.jsonl');
  fs.writeFileSync(data, Array.from({ length: 4 }, (_, i) => JSON.stringify({ text: `row ${i} says hello` })).join('\n'));
  return { model, data, dir };
}

const info = runtimeInfo();
const here = info.cudaAvailable ? 'cuda' : 'cpu';
const why = !info.cudaBuild ? /this build of peftkit has no CUDA support/ : info.cudaAvailable ? /the CUDA build is loaded and a GPU is visible/ : /no CUDA device is visible/;

test(`deviceChoice: 'auto' is ${here} here, with the reason; 'cpu' stays cpu; anything else is E_DEVICE`, (t) => {
  const auto = deviceChoice('auto');
  t.is(auto.device, here);
  t.regex(auto.reason, why);
  t.deepEqual(deviceChoice('cpu'), { device: 'cpu', reason: "device 'cpu'" });
  t.deepEqual(deviceChoice(), { device: 'cpu', reason: "device 'cpu'" });
  t.throws(() => deviceChoice('tpu' as never), { code: 'E_DEVICE', message: /unknown device 'tpu'/ });
  if (info.cudaAvailable) t.is(deviceChoice('cuda').device, 'cuda');
  else t.throws(() => deviceChoice('cuda'), { code: 'E_DEVICE', message: /^device 'cuda' requested but / });
});

test(`peftkit train --device auto runs on ${here} and says why`, (t) => {
  const { model, data, dir } = task();
  const r = run(['train', '--model', model, '--data', data, '--out', path.join(dir, 'out'), '--steps', '2', '--batch-size', '2', '--r', '2', '--device', 'auto']);
  t.is(r.status, 0, r.stderr);
  const line = r.stderr.split('\n').find((l) => /adapter parameters on/.test(l)) ?? '';
  t.regex(line, new RegExp(`^training [\\d,]+ adapter parameters on ${here} \\(--device auto: ${why.source}`), r.stderr);
  t.regex(r.stdout, /adapter written to .*: 2 steps/);
  fs.rmSync(dir, { recursive: true, force: true });
});

(info.cudaAvailable ? test.skip : test)(`peftkit train --device cuda without CUDA fails with one line (E_DEVICE), never on the cpu${info.cudaAvailable ? ': a GPU is visible here' : ''}`, (t) => {
  const { model, data, dir } = task();
  const out = path.join(dir, 'out');
  const r = run(['train', '--model', model, '--data', data, '--out', out, '--steps', '2', '--batch-size', '2', '--r', '2', '--device', 'cuda']);
  t.is(r.status, 1);
  t.regex(r.stderr, /^peftkit: device 'cuda' requested but (this build of peftkit has no CUDA support \(run `npm run build:cuda`\)|no CUDA device is visible)\n$/);
  t.false(fs.existsSync(path.join(out, 'adapter_model.safetensors')), 'nothing trained');
  fs.rmSync(dir, { recursive: true, force: true });
});
