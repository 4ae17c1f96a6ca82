/** bitsandbytes-layout checkpoints (written by `peftkit quantize`) load quantized and train. */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ops, Tensor } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import { writeRandomModel } from '../src/model/random_model';
import { SafetensorsCheckpoint } from '../src/model/safetensors';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { dequantize4bit, dequantizeInt8, quantize4bit, quantizeInt8Rowwise } from '../src/quant';
import { Trainer } from '../src/train/trainer';
import { ALL_DEVICES } from './helpers/check';
import { deviceTest } from './helpers/device_test';

const BIN = path.join(__dirname, '..', '..', 'bin', 'peftkit.js');

for (const format of ['nf4', 'fp4', 'int8'] as const) {
  for (const device of ALL_DEVICES) deviceTest(device, `${format}: peftkit quantize writes a folder that loads kept quantized, to the same dequantized weights, and LoRA trains on it`, (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-q-'));
    const src = path.join(dir, 'model');
    writeRandomModel(src, { hiddenSize: 64, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 9 });
    const out = path.join(dir, format);
    const r = spawnSync(process.execPath, [BIN, 'quantize', '--model', src, '--out', out, '--format', format], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout, /14 Linear weights quantized/);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    t.is(cfg.quantization_config.quant_method, 'bitsandbytes');
    const name = 'model.layers.1.mlp.down_proj.weight';
    const orig = new SafetensorsCheckpoint(src).readFloat32(name);
    const shape = [64, 192] as [number, number];
    const expected = format === 'int8'
      ? dequantizeInt8(quantizeInt8Rowwise(orig, { shape })).toFloat32Array()
      : dequantize4bit(quantize4bit(orig, { quantType: format, shape })).toFloat32Array();
    const model = LlamaModel.load(out, { device });
    const lw = model.linear(name);
    if (!('q' in lw)) return t.fail(`${name} was loaded as an f32 tensor, not kept quantized`);
    t.is(lw.q.format, format);
    t.true(model.isQuantized);
    t.is(model.weight('model.embed_tokens.weight').dtype, 'f32');
    const q = lw.q;
    const deq = Tensor.empty(q.shape, { device });
    if (q.format === 'int8') ops.dequantizeInt8Rowwise(deq, q.cb, q.scb);
    else ops.dequantize4bit(deq, q.packed, q.absmax, q.blocksize, q.format);
    const loaded = deq.toFloat32Array();
    deq.dispose();
    if (format === 'int8') {
      // quantizeModelSync rounds through float16 first, as bitsandbytes' Int8Params does: compare loosely.
      let worst = 0;
      for (let i = 0; i < loaded.length; i++) worst = Math.max(worst, Math.abs(loaded[i] - expected[i]));
      t.true(worst < 0.02, `int8 worst abs difference ${worst}`);
    } else {
      t.deepEqual(loaded, expected);
    }
    const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' }), { device });
    const trainer = new Trainer(model, adapter, { maxRows: 16, maxT: 8, dropout: 0 });
    const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 37) % 200);
    const batch = { inputIds: ids, labels: ids, B: 2, T: 8 };
    const l0 = trainer.step([batch], 1e-2).loss;
    let l = l0;
    for (let i = 0; i < 5; i++) l = trainer.step([batch], 1e-2).loss;
    t.true(Number.isFinite(l0) && l < l0, `${l0} -> ${l}`);
    trainer.dispose();
    adapter.dispose();
    model.dispose();
  });
}
