/**
 * The bad inputs the fuzz tests (fuzz_*.test.ts) found slipping through, each pinned down: what
 * used to crash, run on with NaN, hang or fail without naming the file now gives a PeftkitError
 * with the right code whose message names the file and the field.
 */
import test, { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModelSync, mergeAdapterSync, PeftkitError, quantizeModelSync } from '../src/index';
import { readModelConfig } from '../src/model/config';
import { SafetensorsCheckpoint, SafetensorsFile } from '../src/model/safetensors';
import { linearModules } from '../src/model/weights';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { runTraining } from '../src/train/run';
import { readSafetensorsParts, writeSafetensorsParts } from './helpers/fuzz';
import { editTensors } from './helpers/fuzz_bnb_cases';
import { writeTinyModel } from './helpers/fuzz_model_cases';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bad-'));

function fails(t: ExecutionContext, fn: () => unknown, code: string, re: RegExp): void {
  const e = t.throws(fn, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  t.regex(e?.message ?? '', re);
}

function model(o: { tokenizer?: boolean } = {}): string {
  const dir = path.join(tmp(), 'model');
  writeTinyModel(dir, o);
  return dir;
}

const editJson = (file: string, edit: (j: Record<string, unknown>) => void) => {
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  edit(j);
  fs.writeFileSync(file, JSON.stringify(j));
};

test('safetensors: __metadata__ must be strings (null is none); overlapping data_offsets are refused', (t) => {
  const file = path.join(model(), 'model.safetensors');
  const p = readSafetensorsParts(file);
  p.header.__metadata__ = null;
  writeSafetensorsParts(file, p);
  t.deepEqual(new SafetensorsFile(file).metadata, {});
  p.header.__metadata__ = { format: 7 };
  writeSafetensorsParts(file, p);
  fails(t, () => new SafetensorsFile(file), 'E_FORMAT', /model\.safetensors: __metadata__\.format is 7, expected a string/);
  p.header.__metadata__ = { format: 'pt' };
  (p.header['model.norm.weight'] as { data_offsets: number[] }).data_offsets = [...(p.header['model.layers.0.input_layernorm.weight'] as { data_offsets: number[] }).data_offsets];
  writeSafetensorsParts(file, p);
  fails(t, () => new SafetensorsFile(file), 'E_FORMAT', /model\.safetensors: tensor '.*' \(bytes \d+\.\.\d+ of the file\) overlaps tensor '.*'/);
});

test('sharded checkpoints: the index is validated and a missing shard is named from it', (t) => {
  const dir = model();
  const ck = new SafetensorsCheckpoint(dir);
  fs.renameSync(path.join(dir, 'model.safetensors'), path.join(dir, 'model-00001-of-00001.safetensors'));
  const index = path.join(dir, 'model.safetensors.index.json');
  const map = Object.fromEntries([...ck.tensors.keys()].map((n) => [n, 'model-00001-of-00001.safetensors']));
  fs.writeFileSync(index, JSON.stringify({ weight_map: 'model-00001-of-00001.safetensors' }));
  fails(t, () => new SafetensorsCheckpoint(dir), 'E_FORMAT', /index\.json: expected a JSON object with a "weight_map" object/);
  fs.writeFileSync(index, JSON.stringify({ weight_map: { ...map, 'lm_head.weight': '../model-00001-of-00001.safetensors' } }));
  fails(t, () => new SafetensorsCheckpoint(dir), 'E_FORMAT', /index\.json: weight_map\['lm_head\.weight'\] is "\.\.\/model-00001-of-00001\.safetensors", expected the file name/);
  fs.writeFileSync(index, JSON.stringify({ weight_map: { ...map, 'lm_head.weight': 'model-00002-of-00002.safetensors' } }));
  fails(t, () => new SafetensorsCheckpoint(dir), 'E_IO', /index\.json: weight_map lists shard model-00002-of-00002\.safetensors \(for 'lm_head\.weight'\), but .* does not exist/);
  const { 'model.norm.weight': _n, ...withoutNorm } = map;
  fs.writeFileSync(index, JSON.stringify({ weight_map: withoutNorm }));
  fails(t, () => loadModelSync(dir), 'E_MISSING', /index\.json: checkpoint has no tensor 'model\.norm\.weight'/);
});

test('config.json: values the kernels would refuse or turn into NaN are refused at parse, naming the field', (t) => {
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ rms_norm_eps: -1 }, 'E_CONFIG', /field "rms_norm_eps" is -1, expected a finite number >= 0/],
    [{ rope_theta: 1e300 }, 'E_CONFIG', /field "rope_theta" is 1e\+300, expected a finite number > 0/],
    [{ rope_scaling: 5 }, 'E_CONFIG', /field "rope_scaling" is 5, expected an object/],
    [{ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 4 } }, 'E_CONFIG', /"rope_scaling\.low_freq_factor" is 4, expected it below "rope_scaling\.high_freq_factor" \(4\)/],
    [{ rope_scaling: { rope_type: 'llama3', factor: 0 } }, 'E_CONFIG', /field "rope_scaling\.factor" is 0, expected a finite number > 0/],
    [{ quantization_config: { quant_method: 'gptq', bits: 4 } }, 'E_UNSUPPORTED', /quantization_config\.quant_method "gptq" is not supported/],
    [{ quantization_config: 5 }, 'E_CONFIG', /field "quantization_config" is 5, expected an object/],
    // A corrupt layer count is checked against the checkpoint before anything walks the layers.
    [{ num_hidden_layers: 1e9 }, 'E_MISSING', /config\.json: num_hidden_layers is 1000000000, but .*model\.safetensors has no layer 999999999/],
  ];
  const dir = model();
  const file = path.join(dir, 'config.json');
  const good = fs.readFileSync(file, 'utf8');
  for (const [change, code, re] of cases) {
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(good), ...change }));
    fails(t, () => loadModelSync(dir), code, re);
  }
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(good), num_hidden_layers: 1e9 }));
  const out = path.join(path.dirname(dir), 'q');
  fails(t, () => quantizeModelSync({ model: dir, out, format: 'nf4' }), 'E_MISSING', /num_hidden_layers is 1000000000/);
  t.false(fs.existsSync(out));
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(good), vocab_size: 41 }));
  fails(t, () => loadModelSync(dir), 'E_SHAPE', /model\.safetensors: tensor 'model\.embed_tokens\.weight' has shape \[40, 16\], expected \[41, 16\] \(the expected shape comes from .*config\.json\)/);
});

test('bitsandbytes folders: errors name the file; NaN, infinite or negative block and row maxima are refused', (t) => {
  const src = model();
  for (const [format, scale] of [['nf4', 'weight.nested_absmax'], ['fp4', 'weight.absmax'], ['int8', 'SCB']] as const) {
    const q = path.join(path.dirname(src), format);
    quantizeModelSync({ model: src, out: q, format, doubleQuant: format === 'nf4' });
    const file = path.join(q, 'model.safetensors');
    const name = `model.layers.1.self_attn.v_proj.${scale}`;
    for (const v of [NaN, -Infinity, -0.5]) {
      editTensors(file, (ts) => {
        const f = new Float32Array((ts[name].data as Uint8Array).slice().buffer);
        f[0] = v;
        ts[name] = { ...ts[name], data: f };
        return '';
      });
      fails(t, () => loadModelSync(q), 'E_FORMAT', new RegExp(`${format}/model\\.safetensors: ${name.replace(/\./g, '\\.')}: element 0 is ${v}, expected finite absolute maxima`));
    }
    editTensors(file, (ts) => {
      delete ts[name];
      return '';
    });
    // Without its row scales an int8 weight is just I8 codes: the loader says what is missing.
    const missing = format === 'int8' ? /int8\/model\.safetensors: tensor 'model\.layers\.1\.self_attn\.v_proj\.weight' holds I8 codes but no quantization state: expected '.*\.SCB'/
      : new RegExp(`${format}/model\\.safetensors: ${name.replace(/\./g, '\\.')}: tensor is missing`);
    fails(t, () => loadModelSync(q), 'E_MISSING', missing);
  }
});

test('generate stops on non-finite logits instead of sampling garbage', (t) => {
  const dir = model();
  const file = path.join(dir, 'model.safetensors');
  const p = readSafetensorsParts(file);
  const [begin] = (p.header['model.norm.weight'] as { data_offsets: number[] }).data_offsets;
  p.data.writeFloatLE(NaN, begin);
  writeSafetensorsParts(file, p);
  const m = loadModelSync(dir);
  try {
    fails(t, () => m.generate([1, 2], { maxNewTokens: 2 }), 'E_NAN', /generate: logit 0 is NaN after 0 generated token\(s\): a weight in .*model\.safetensors holds NaN or Infinity/);
  } finally {
    m.dispose();
  }
});

test('adapters: NaN weights, an orphan lora_B and an f32-overflowing lora_alpha are refused; an overflowing merge writes nothing', (t) => {
  const dir = model();
  const adapterDir = path.join(path.dirname(dir), 'adapter');
  const modules = linearModules(readModelConfig(dir));
  const a = LoraAdapter.create(modules, defaultLoraConfig({ r: 2, target_modules: ['q_proj'], init_lora_weights: false }), { seed: 1 });
  a.save(adapterDir);
  a.dispose();
  const weights = path.join(adapterDir, 'adapter_model.safetensors');
  const good = fs.readFileSync(weights);
  const bName = 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight';
  const setB = (v: number) => editTensors(weights, (ts) => {
    const f = new Float32Array((ts[bName].data as Uint8Array).slice().buffer);
    f[3] = v;
    ts[bName] = { ...ts[bName], data: f };
    return '';
  });
  setB(Infinity);
  fails(t, () => LoraAdapter.load(adapterDir, modules), 'E_FORMAT', /adapter_model\.safetensors: tensor '.*lora_B\.weight' element 3 is Infinity, expected finite values/);
  fs.writeFileSync(weights, good);
  editTensors(weights, (ts) => {
    delete ts[bName.replace('lora_B', 'lora_A')];
    return '';
  });
  fails(t, () => LoraAdapter.load(adapterDir, modules), 'E_MISSING', /adapter_model\.safetensors: '.*layers\.0\.self_attn\.q_proj\.lora_B\.weight' has no matching '.*lora_A\.weight'/);
  fs.writeFileSync(weights, good);
  editJson(path.join(adapterDir, 'adapter_config.json'), (j) => (j.lora_alpha = 1e300));
  fails(t, () => LoraAdapter.load(adapterDir, modules), 'E_CONFIG', /adapter_config\.json: "lora_alpha" is 1e\+300, expected a finite number/);
  editJson(path.join(adapterDir, 'adapter_config.json'), (j) => (j.lora_alpha = 3e38));
  setB(3e38);
  const out = path.join(path.dirname(dir), 'merged');
  fails(t, () => mergeAdapterSync({ model: dir, adapter: adapterDir, out }), 'E_NAN', /adapter_model\.safetensors: merging into 'model\.layers\.\d\.self_attn\.q_proj\.weight' gives -?Infinity/);
  t.false(fs.existsSync(out));
});

test('training data: a label outside the vocabulary is refused naming its row; a failed run leaves no output folder', (t) => {
  const dir = model();
  const data = path.join(path.dirname(dir), 'data.jsonl');
  fs.writeFileSync(data, '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5, 6], "labels": [4, 5, 4000]}\n');
  const out = path.join(path.dirname(dir), 'out');
  fails(t, () => runTraining({ model: dir, data, out, steps: 1 }), 'E_DATA', /data\.jsonl:2: label 4000 is outside the model's vocabulary \[0, 40\)/);
  t.false(fs.existsSync(out));
  fs.writeFileSync(data, '{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}\n');
  fails(t, () => runTraining({ model: dir, data, out, steps: 1 }), 'E_DATA', /data\.jsonl: no training row has a label token: .*: .*data\.jsonl:1$/);
  fails(t, () => runTraining({ model: dir, data, out, steps: 1, evalSplit: 0.5 }), 'E_DATA', /data\.jsonl: evalSplit 0\.5 of 1 rows leaves no training rows/);
});

test('resume: trainer_state.json fields are validated; NaN optimizer moments are refused before they reach the adapter', (t) => {
  const dir = model();
  const data = path.join(path.dirname(dir), 'data.jsonl');
  fs.writeFileSync(data, Array.from({ length: 6 }, (_, i) => JSON.stringify({ input_ids: [i + 1, i + 2, i + 3, i + 4] })).join('\n'));
  const run = path.join(path.dirname(dir), 'run');
  const o = { model: dir, data, steps: 2, saveEvery: 1, batchSize: 2, maxLength: 8 };
  runTraining({ ...o, out: run });
  const ckpt = path.join(run, 'checkpoints', 'step-1');
  const state = path.join(ckpt, 'trainer_state.json');
  const good = fs.readFileSync(state, 'utf8');
  const out = path.join(path.dirname(dir), 'resumed');
  for (const [edit, re] of [
    [(j: Record<string, unknown>) => delete j.position, /trainer_state\.json: field "position" is undefined, expected \{"epoch", "index"\}/],
    [(j: Record<string, unknown>) => (j.step = -1), /trainer_state\.json: field "step" is -1, expected an integer >= 0/],
    [(j: Record<string, unknown>) => (j.position = { epoch: 0, index: 99 }), /trainer_state\.json: position\.index is 99, but an epoch has 6 units/],
    // Found by fuzz_resume: the device reached the engine unchecked and its error named no file.
    [(j: Record<string, unknown>) => ((j.fingerprint as Record<string, unknown>).device = 'cp'), /trainer_state\.json: the checkpoint records options that are not valid: device: expected cpu, cuda or auto, got 'cp'/],
  ] as const) {
    fs.writeFileSync(state, good);
    editJson(state, edit);
    const e = t.throws(() => runTraining({ ...o, out, resume: ckpt }), { instanceOf: PeftkitError });
    t.regex(e?.message ?? '', re);
  }
  fs.writeFileSync(state, good);
  const name = 'exp_avg_sq.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';
  editTensors(path.join(ckpt, 'optimizer.safetensors'), (ts) => {
    const f = new Float32Array((ts[name].data as Uint8Array).slice().buffer);
    f[0] = NaN;
    ts[name] = { ...ts[name], data: f };
    return '';
  });
  fails(t, () => runTraining({ ...o, out, resume: ckpt }), 'E_FORMAT', /optimizer\.safetensors: tensor 'exp_avg_sq\..*' element 0 is NaN, expected finite values >= 0/);
  t.false(fs.existsSync(out));
});

test('tokenizer: a damaged tokenizer.json fails naming the file, not with a TypeError from the tokenizer library', (t) => {
  const dir = model({ tokenizer: true });
  editJson(path.join(dir, 'tokenizer.json'), (j) => ((j.post_processor as Record<string, unknown>).single = [1e308]));
  fails(t, () => loadModelSync(dir), 'E_CONFIG', /tokenizer\.json: the tokenizer cannot encode text \(.*\); is the file damaged\?/);
});
