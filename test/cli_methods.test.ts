/** Every method from the command line, through the real bin: train, generate with the result, merge where a merge exists. */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomModel } from '../src/model/random_model';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');
const run = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

function fixture(): { dir: string; model: string; data: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-methods-'));
  const model = path.join(dir, 'model');
  writeRandomModel(model, { hiddenSize: 32, numHeads: 2, numKvHeads: 1, numLayers: 2, seed: 7 });
  const data = path.join(dir, 'd.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i} says hello` })).join('\n'));
  return { dir, model, data };
}

const CASES: Array<{ method: string; flags: string[]; files: string[]; peftType?: string; config?: Record<string, unknown>; merges: boolean }> = [
  { method: 'dora', flags: ['--targets', 'q_proj,v_proj', '--r', '2'], files: ['adapter_config.json'], peftType: 'LORA', merges: true },
  { method: 'ia3', flags: [], files: ['adapter_config.json'], peftType: 'IA3', merges: true },
  { method: 'ln', flags: [], files: ['adapter_config.json'], peftType: 'LN_TUNING', merges: true },
  { method: 'bitfit', flags: ['--targets', 'q_proj,k_proj,v_proj'], files: ['adapter_config.json'], peftType: 'BITFIT', merges: true },
  { method: 'diff', flags: ['--diff-density', '0.05', '--diff-prune-step', '1'], files: ['adapter_config.json'], peftType: 'DIFF', merges: true },
  { method: 'adapter', flags: ['--adapter-type', 'pfeiffer', '--adapter-reduction', '4'], files: ['adapter_config.json'], peftType: 'BOTTLENECK', merges: false },
  { method: 'prefix', flags: ['--num-virtual-tokens', '3'], files: ['adapter_config.json'], peftType: 'PREFIX_TUNING', merges: false },
  { method: 'prompt', flags: ['--num-virtual-tokens', '3', '--prompt-init', 'text', '--prompt-init-text', 'say hello'], files: ['adapter_config.json'], peftType: 'PROMPT_TUNING', merges: false },
  { method: 'p-tuning', flags: ['--num-virtual-tokens', '2', '--encoder-hidden-size', '8'], files: ['adapter_config.json', 'prompt_encoder.safetensors'], peftType: 'P_TUNING', merges: false },
  {
    method: 'p-tuning', flags: ['--num-virtual-tokens', '3', '--encoder', 'lstm', '--encoder-hidden-size', '5'], files: ['adapter_config.json', 'prompt_encoder.safetensors'], peftType: 'P_TUNING',
    config: { encoder_reparameterization_type: 'LSTM', encoder_hidden_size: 5, encoder_num_layers: 2 }, merges: false,
  },
  { method: 'full', flags: ['--trainable', 'layers\\.1\\.'], files: ['config.json', 'model.safetensors', 'tokenizer.json'], merges: false },
];

for (const c of CASES) {
  test(`peftkit train --method ${c.method}${c.flags.includes('--encoder') ? ' --encoder lstm' : ''}, then generate${c.merges ? ' and merge' : ''}`, (t) => {
    const { dir, model, data } = fixture();
    const out = path.join(dir, 'out');
    const tr = run(['train', '--model', model, '--data', data, '--out', out, '--method', c.method, '--steps', '3', '--batch-size', '2', '--lr', '1e-2', ...c.flags]);
    t.is(tr.status, 0, tr.stderr);
    for (const f of c.files) t.true(fs.existsSync(path.join(out, f)), f);
    if (c.peftType) t.is(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')).peft_type, c.peftType);
    if (c.config) t.like(JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8')), c.config);
    // A full fine-tune is a model: generate from it; an adapter is applied to the base.
    const gen = run(['generate', '--model', c.peftType ? model : out, ...(c.peftType ? ['--adapter', out] : []), '--prompt', 'row 1', '--max-new-tokens', '3', '--temperature', '0']);
    t.is(gen.status, 0, gen.stderr);
    if (c.merges) {
      const mg = run(['merge', '--model', model, '--adapter', out, '--out', path.join(dir, 'merged')]);
      t.is(mg.status, 0, mg.stderr);
      t.true(fs.existsSync(path.join(dir, 'merged', 'model.safetensors')));
    }
    // Continuing with another method is refused: the folder's method wins.
    if (c.peftType && c.method !== 'ia3') {
      const wrong = run(['train', '--model', model, '--data', data, '--out', path.join(dir, 'again'), '--adapter', out, '--method', 'ia3', '--steps', '1']);
      t.not(wrong.status, 0);
      t.regex(wrong.stderr, /holds a .* adapter \(its config wins: leave (method|--method) out\)/);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
}

test('--method qlora on a folder bitsandbytes quantized to int8 (and int8-lora on an NF4 one) is refused, naming the folder and its format', (t) => {
  const { dir, model, data } = fixture();
  for (const [format, method, other] of [['int8', 'qlora', 'int8-lora'], ['nf4', 'int8-lora', 'qlora']] as const) {
    const q = path.join(dir, format);
    const qr = run(['quantize', '--model', model, '--out', q, '--format', format]);
    t.is(qr.status, 0, qr.stderr);
    const r = run(['train', '--model', q, '--data', data, '--out', path.join(dir, `out-${method}`), '--method', method, '--steps', '1']);
    t.is(r.status, 2, r.stderr);
    t.regex(r.stderr, new RegExp(`^peftkit: --method: '${method}' asks for a \\w+ base, but .*${format} is already quantized, to ${format} \\(bitsandbytes\\), and is used as stored: use ${other}, or leave --quantize out`));
    t.false(fs.existsSync(path.join(dir, `out-${method}`, 'adapter_model.safetensors')));
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
