/** Fuzz cases of a model folder: model.safetensors, sharded checkpoints, config.json (see fuzz.ts). */
import * as fs from 'fs';
import * as path from 'path';
import { loadModelSync, quantizeModelSync, writeRandomModel } from '../../src/index';
import { SafetensorsCheckpoint, TensorToWrite, writeSafetensors } from '../../src/model/safetensors';
import {
  damageJsonFile, damageSafetensors, expectNoOutput, FuzzRng, FuzzViolation, mutateJson, oddValue, oddValueFor, outcome, readSafetensorsParts, writeSafetensorsParts,
} from './fuzz';
import { FuzzCase, generateSome } from './fuzz_case';

/** A tiny untied Llama: every tensor kind a loader reads, small enough to load in milliseconds. */
export function writeTinyModel(dir: string, o: { tokenizer?: boolean; architecture?: 'LlamaForCausalLM' | 'Qwen2ForCausalLM' } = {}): void {
  writeRandomModel(dir, {
    hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKvHeads: 2, vocabSize: o.tokenizer ? undefined : 40,
    tieWordEmbeddings: false, tokenizer: o.tokenizer ?? false, architecture: o.architecture, seed: 3,
  });
}

/** Loads the model and generates a few tokens: success, or an error naming one of `files`. */
function loadAndGenerate(dir: string, files: string[]): string {
  return outcome(files, () => {
    const m = loadModelSync(dir);
    try {
      generateSome(m);
    } finally {
      m.dispose();
    }
  });
}

/** A NaN or an infinity written into the data of one weight (the header stays valid). */
function poisonWeight(file: string, rng: FuzzRng): string {
  const p = readSafetensorsParts(file);
  const name = rng.pick(Object.keys(p.header).filter((k) => k !== '__metadata__'));
  const [begin, end] = (p.header[name] as { data_offsets: [number, number] }).data_offsets;
  const i = rng.int(0, (end - begin) / 4);
  const v = rng.pick([NaN, Infinity, -Infinity, 3e38]);
  p.data.writeFloatLE(v, begin + 4 * i);
  writeSafetensorsParts(file, p);
  return `'${name}'[${i}] = ${v}`;
}

const safetensors: FuzzCase = {
  setup: (dir) => writeTinyModel(path.join(dir, 'model')),
  run(rng, dir, log) {
    const model = path.join(dir, 'model');
    const file = path.join(model, 'model.safetensors');
    if (rng.chance(0.1)) log(poisonWeight(file, rng));
    else log(damageSafetensors(file, rng));
    return loadAndGenerate(model, ['model.safetensors']);
  },
};

/** The fixture's model.safetensors split in two shards with an index, as transformers writes big checkpoints. */
function shard(model: string): void {
  const ck = new SafetensorsCheckpoint(model);
  const names = [...ck.tensors.keys()].sort();
  const parts: Array<Record<string, TensorToWrite>> = [{}, {}];
  const weightMap: Record<string, string> = {};
  names.forEach((n, i) => {
    const k = i < names.length / 2 ? 0 : 1;
    const info = ck.info(n);
    parts[k][n] = { dtype: info.dtype, shape: info.shape, data: ck.readBytes(n) };
    weightMap[n] = `model-0000${k + 1}-of-00002.safetensors`;
  });
  parts.forEach((p, k) => writeSafetensors(path.join(model, `model-0000${k + 1}-of-00002.safetensors`), p));
  fs.rmSync(path.join(model, 'model.safetensors'));
  fs.writeFileSync(path.join(model, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }, null, 2));
}

const sharded: FuzzCase = {
  setup(dir) {
    writeTinyModel(path.join(dir, 'model'));
    shard(path.join(dir, 'model'));
  },
  run(rng, dir, log) {
    const model = path.join(dir, 'model');
    const index = path.join(model, 'model.safetensors.index.json');
    const shards = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
    const kind = rng.int(0, 10);
    if (kind < 3) {
      log(damageJsonFile(index, rng));
    } else if (kind < 6) {
      const doc = JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, unknown> };
      const names = Object.keys(doc.weight_map);
      const n = rng.pick(names);
      const r = rng.int(0, 5);
      if (r === 0) doc.weight_map[n] = shards[doc.weight_map[n] === shards[0] ? 1 : 0];
      else if (r === 1) delete doc.weight_map[n];
      else if (r === 2) doc.weight_map[n] = rng.pick(['model-00003-of-00002.safetensors', '../model-00001-of-00002.safetensors', '', '/etc/passwd', '.', 'config.json']);
      else if (r === 3) doc.weight_map = rng.pick<unknown>([null, [], 'model-00001-of-00002.safetensors', { [n]: 5 }]) as Record<string, unknown>;
      else doc.weight_map[`${n}.extra`] = doc.weight_map[n];
      fs.writeFileSync(index, JSON.stringify(doc));
      log(`index: weight_map['${n}'] damaged (kind ${r})`);
    } else if (kind < 7) {
      const s = rng.pick(shards);
      fs.rmSync(path.join(model, s));
      log(`deleted ${s}`);
    } else {
      const s = rng.pick(shards);
      log(`${s}: ${damageSafetensors(path.join(model, s), rng)}`);
    }
    return loadAndGenerate(model, ['model.safetensors.index.json', ...shards]);
  },
};

/** config.json fields a loader reads, each damaged on its own more often than a random field is. */
const CONFIG_FIELDS = [
  'architectures', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim',
  'vocab_size', 'rms_norm_eps', 'rope_theta', 'rope_scaling', 'tie_word_embeddings', 'torch_dtype', 'quantization_config',
  'max_position_embeddings', 'hidden_act', 'attention_bias', 'mlp_bias', 'bos_token_id', 'eos_token_id', 'sliding_window', 'use_sliding_window',
];

/** One damage to a parsed config.json. */
export function damageConfig(cfg: Record<string, unknown>, rng: FuzzRng): string {
  const k = rng.int(0, 10);
  if (k < 2) return mutateJson(cfg, rng);
  if (k < 4) {
    cfg.rope_scaling = {
      rope_type: rng.pick(['llama3', 'llama3', 'default', 'linear', 'dynamic', 'yarn', 5, null]),
      factor: rng.pick([8, 1, 0, -1, 0.5, 1e300, 'x', null]),
      low_freq_factor: rng.pick([1, 4, 0, -1, 1e300, 'x', undefined]),
      high_freq_factor: rng.pick([4, 1, 0, -4, 1e300, undefined]),
      original_max_position_embeddings: rng.pick([8192, 16, 0, -1, 2.5, 1e300, undefined]),
    };
    if (rng.chance(0.2)) cfg.rope_scaling = oddValue(rng);
    return `rope_scaling = ${JSON.stringify(cfg.rope_scaling)}`;
  }
  const key = rng.pick(CONFIG_FIELDS);
  if (rng.chance(0.2)) {
    delete cfg[key];
    return `deleted ${key}`;
  }
  if (key === 'quantization_config') {
    cfg[key] = rng.pick<unknown>([{ quant_method: 'bitsandbytes', load_in_4bit: true }, { quant_method: 'gptq', bits: 4 }, 'x', 5, [], null]);
  } else {
    cfg[key] = oddValueFor(cfg[key], rng);
  }
  return `${key} = ${JSON.stringify(cfg[key])}`;
}

const config: FuzzCase = {
  setup: (dir) => writeTinyModel(path.join(dir, 'model')),
  run(rng, dir, log) {
    const model = path.join(dir, 'model');
    const file = path.join(model, 'config.json');
    if (rng.chance(0.15)) {
      log(damageJsonFile(file, rng));
    } else {
      const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      log(damageConfig(cfg, rng));
      fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
    }
    // Shapes in the checkpoint that disagree with config.json may be named from either file.
    const files = ['config.json', 'model.safetensors'];
    if (rng.chance(0.25)) {
      const out = path.join(dir, 'quantized');
      const got = outcome(files, () => {
        quantizeModelSync({ model, out, format: rng.pick(['nf4', 'int8'] as const) });
      });
      if (got !== 'ok') expectNoOutput(out);
      return got;
    }
    return loadAndGenerate(model, files);
  },
};

/** tokenizer.json and tokenizer_config.json (special tokens, chat template) of a model folder. */
const tokenizer: FuzzCase = {
  setup: (dir) => writeTinyModel(path.join(dir, 'model'), { tokenizer: true }),
  run(rng, dir, log) {
    const model = path.join(dir, 'model');
    const name = rng.pick(['tokenizer.json', 'tokenizer_config.json']);
    const file = path.join(model, name);
    if (name === 'tokenizer_config.json' && rng.chance(0.5)) {
      const cfg = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      const key = rng.pick(['bos_token', 'eos_token', 'pad_token', 'unk_token', 'chat_template', 'added_tokens_decoder', 'add_bos_token']);
      cfg[key] = key === 'chat_template' ? rng.pick<unknown>(['{{', '{% for m in messages %}{{ m.content }}', '{{ raise_exception("no") }}', '{{ messages[99].content }}', [], [{ name: 'default' }], 5]) : oddValueFor(cfg[key], rng);
      fs.writeFileSync(file, JSON.stringify(cfg));
      log(`${name}: ${key} = ${JSON.stringify(cfg[key])}`);
    } else {
      log(damageJsonFile(file, rng));
    }
    return outcome(['tokenizer.json', 'tokenizer_config.json'], () => {
      const m = loadModelSync(model);
      try {
        const g = m.generate(rng.pick(['hello', 'Ünïcödé 🙂']), { maxNewTokens: 3, temperature: 0, chat: rng.chance(0.5) });
        if (typeof g.text !== 'string') throw new FuzzViolation(`generate returned text ${String(g.text)}`);
      } finally {
        m.dispose();
      }
    });
  },
};

export const MODEL_CASES: Record<string, FuzzCase> = { safetensors, sharded, config, tokenizer };
