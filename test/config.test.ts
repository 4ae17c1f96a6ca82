import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/index';
import { parseModelConfig } from '../src/model/config';
import { defaultLoraConfig, loraScaling, parseLoraConfig, readLoraConfig, writeLoraConfig } from '../src/peft/lora/config';

const smol = {
  architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 576, intermediate_size: 1536,
  num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, vocab_size: 49152,
  rms_norm_eps: 1e-5, rope_theta: 100000, tie_word_embeddings: true, max_position_embeddings: 8192,
  hidden_act: 'silu', torch_dtype: 'bfloat16',
};

test('SmolLM2-135M config normalizes', (t) => {
  const c = parseModelConfig(smol);
  t.is(c.headDim, 64);
  t.is(c.numKvHeads, 3);
  t.true(c.tieWordEmbeddings);
  t.false(c.qkvBias);
  t.is(c.ropeScaling, null);
});

test('Llama 3.x rope scaling and Qwen2 biases', (t) => {
  const l3 = parseModelConfig({ ...smol, rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } });
  t.deepEqual(l3.ropeScaling, { factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  const q = parseModelConfig({ ...smol, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', use_sliding_window: false, sliding_window: 4096 });
  t.true(q.qkvBias);
  t.false(q.oBias);
  t.is(q.slidingWindow, null);
  const m = parseModelConfig({ ...smol, architectures: ['MistralForCausalLM'], sliding_window: 4096 });
  t.is(m.slidingWindow, 4096);
});

test('transformers 5 configs: rope_theta and rope_type under rope_parameters', (t) => {
  const { rope_theta: _theta, torch_dtype: _dtype, ...v5 } = smol;
  const plain = parseModelConfig({ ...v5, dtype: 'bfloat16', rope_parameters: { rope_theta: 500000, rope_type: 'default' } });
  t.is(plain.ropeTheta, 500000);
  t.is(plain.ropeScaling, null);
  t.is(plain.torchDtype, 'bfloat16');
  const l3 = parseModelConfig({
    ...v5, rope_parameters: { rope_theta: 500000, rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  });
  t.is(l3.ropeTheta, 500000);
  t.deepEqual(l3.ropeScaling, { factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
  t.is(parseModelConfig({ ...smol, rope_parameters: { rope_type: 'default' } }).ropeTheta, 100000, 'a theta only at the top level still counts');
  t.regex(t.throws(() => parseModelConfig({ ...v5, rope_parameters: { rope_theta: 1e4, rope_type: 'yarn', factor: 4 } }))!.message, /rope_parameters type "yarn" is not supported/);
  t.regex(t.throws(() => parseModelConfig({ ...v5, rope_parameters: { rope_theta: 1e4, partial_rotary_factor: 0.5 } }))!.message, /partial_rotary_factor/);
  t.regex(t.throws(() => parseModelConfig({ ...v5, rope_parameters: { full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } } }))!.message, /per layer type/);
  t.regex(t.throws(() => parseModelConfig({ ...v5, rope_parameters: { rope_theta: -1 } }))!.message, /"rope_parameters\.rope_theta" is -1/);
});

test('unsupported or broken configs name the field', (t) => {
  const e1 = t.throws(() => parseModelConfig({ ...smol, architectures: ['GPT2LMHeadModel'] }), { instanceOf: PeftkitError });
  t.is(e1?.code, 'E_UNSUPPORTED');
  t.regex(e1!.message, /GPT2LMHeadModel.*LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM/);
  t.regex(t.throws(() => parseModelConfig({ ...smol, hidden_size: 'big' }))!.message, /"hidden_size" is "big", expected a positive integer/);
  t.regex(t.throws(() => parseModelConfig({ ...smol, num_key_value_heads: 4 }))!.message, /not a multiple of num_key_value_heads/);
  t.regex(t.throws(() => parseModelConfig({ ...smol, rope_scaling: { type: 'yarn', factor: 4 } }))!.message, /"yarn" is not supported/);
  const { vocab_size: _v, ...noVocab } = smol;
  t.regex(t.throws(() => parseModelConfig(noVocab), { instanceOf: PeftkitError })!.message, /"vocab_size" is missing/);
});

test('adapter_config.json round trip: sorted keys, indent 2, inference_mode true', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cfg-'));
  const c = defaultLoraConfig({ r: 16, lora_alpha: 32, lora_dropout: 0.05, target_modules: 'all-linear', use_rslora: true });
  writeLoraConfig(dir, c);
  const text = fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8');
  const keys = Object.keys(JSON.parse(text));
  t.deepEqual(keys, [...keys].sort());
  t.regex(text, /^{\n  "alpha_pattern"/);
  t.false('exclude_modules' in JSON.parse(text), 'null exclude_modules is left out for older PEFT readers');
  const back = readLoraConfig(dir);
  t.deepEqual(back, { ...c, inference_mode: true });
  t.is(loraScaling(back), 32 / 4);
  t.is(loraScaling({ r: 16, lora_alpha: 32, use_rslora: false }), 2);
});

test('adapter configs from PEFT load; unsupported features are refused by name', (t) => {
  const peftWritten = {
    alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: 'HuggingFaceTB/SmolLM2-135M', bias: 'none',
    fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, layer_replication: null,
    layers_pattern: null, layers_to_transform: null, loftq_config: {}, lora_alpha: 16, lora_dropout: 0.05,
    megatron_config: null, megatron_core: 'megatron.core', modules_to_save: null, peft_type: 'LORA', r: 8,
    rank_pattern: {}, revision: null, target_modules: ['v_proj', 'q_proj'], task_type: 'CAUSAL_LM',
    use_dora: false, use_rslora: false,
  };
  const c = parseLoraConfig(peftWritten);
  t.deepEqual(c.target_modules, ['v_proj', 'q_proj']);
  t.is(c.base_model_name_or_path, 'HuggingFaceTB/SmolLM2-135M');
  // DoRA, per-module ranks, trained biases and modules_to_save are PEFT configs peftkit trains.
  t.true(parseLoraConfig({ ...peftWritten, use_dora: true }).use_dora);
  const patterned = parseLoraConfig({ ...peftWritten, rank_pattern: { down_proj: 2 }, alpha_pattern: { v_proj: 4 }, bias: 'lora_only', modules_to_save: ['lm_head'] });
  t.deepEqual([patterned.rank_pattern, patterned.alpha_pattern, patterned.bias, patterned.modules_to_save], [{ down_proj: 2 }, { v_proj: 4 }, 'lora_only', ['lm_head']]);
  const e = t.throws(() => parseLoraConfig({ ...peftWritten, fan_in_fan_out: true }), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_UNSUPPORTED');
  t.regex(e!.message, /"fan_in_fan_out"/);
  t.regex(t.throws(() => parseLoraConfig({ ...peftWritten, modules_to_save: ['classifier'] }))!.message, /"modules_to_save".*only embed_tokens and lm_head/);
  t.regex(t.throws(() => parseLoraConfig({ ...peftWritten, rank_pattern: { down_proj: 0 } }))!.message, /"rank_pattern.down_proj" is 0, expected a positive integer/);
  t.regex(t.throws(() => parseLoraConfig({ ...peftWritten, r: 0 }))!.message, /"r" is 0, expected a positive integer/);
  t.regex(t.throws(() => parseLoraConfig({ ...peftWritten, target_modules: [] }))!.message, /"target_modules"/);
  t.is(parseLoraConfig({ ...peftWritten, target_modules: '.*\\.(q_proj|v_proj)', exclude_modules: '.*layers\\.0\\..*' }).target_modules, '.*\\.(q_proj|v_proj)');
  t.regex(t.throws(() => parseLoraConfig({ ...peftWritten, peft_type: 'IA3' }))!.message, /"peft_type" = "IA3" is not supported/);
});
