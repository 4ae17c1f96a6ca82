import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError, writeRandomModel } from '../src/index';
import { SafetensorsCheckpoint, TensorToWrite, writeSafetensors } from '../src/model/safetensors';
import {
  DYNAMIC_SIGNED_CODE, FP4_CODE, NF4_CODE, detectQuantFormat, dequantize4bit, dequantizeInt8, entriesReader, int8Entries,
  quant4Entries, quantize4bit, quantizeInt8Rowwise, quantizeModelSync, readInt8State, readQuant4State, recoverAbsmax,
} from '../src/quant/index';
import type { Quant4State } from '../src/quant/index';
import { roundArrayToF16, roundToF16 } from '../src/quant/f16';
import { makeRng } from './helpers/check';
import { f32Bits, halfMaxGap, refInt8, refQuantize4 } from './helpers/quant_ref';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-quant-'));
const LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
const hexOf = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

function sameState(t: import('ava').ExecutionContext, a: Quant4State, b: Quant4State): void {
  t.is(a.quantType, b.quantType);
  t.is(a.blocksize, b.blocksize);
  t.is(a.dtype, b.dtype);
  t.deepEqual(a.shape, b.shape);
  t.is(hexOf(a.packed), hexOf(b.packed));
  t.is(a.absmax.constructor, b.absmax.constructor);
  t.is(hexOf(a.absmax), hexOf(b.absmax));
  t.is(a.nested === null, b.nested === null);
  if (a.nested && b.nested) {
    t.is(hexOf(a.nested.absmax), hexOf(b.nested.absmax));
    t.is(a.nested.offset, b.nested.offset);
    t.is(a.nested.blocksize, b.nested.blocksize);
  }
}

test('4-bit layout: names, dtypes, shapes and quant state JSON as bitsandbytes saves them; file round trip is exact', (t) => {
  const rng = makeRng(t);
  const dir = tmp();
  const w = Float32Array.from({ length: 24 * 41 }, () => rng.normal() * 0.05);
  for (const [quantType, doubleQuant] of [['nf4', true], ['fp4', false]] as const) {
    const s = quantize4bit(w, { quantType, doubleQuant, blocksize: 64, shape: [24, 41], dtype: 'bfloat16' });
    const p = 'model.layers.3.self_attn.q_proj';
    const e = quant4Entries(p, s);
    const want: Record<string, [string, number[]]> = {
      [`${p}.weight`]: ['U8', [492, 1]],
      [`${p}.weight.absmax`]: [doubleQuant ? 'U8' : 'F32', [16]],
      [`${p}.weight.quant_map`]: ['F32', [16]],
      ...(doubleQuant ? { [`${p}.weight.nested_absmax`]: ['F32', [1]], [`${p}.weight.nested_quant_map`]: ['F32', [256]] } : {}),
    };
    const stateKey = `${p}.weight.quant_state.bitsandbytes__${quantType}`;
    t.deepEqual(Object.keys(e).sort(), [...Object.keys(want), stateKey].sort());
    for (const [k, [dtype, shape]] of Object.entries(want)) t.deepEqual([e[k].dtype, [...e[k].shape]], [dtype, shape], k);
    // bitsandbytes' fp4 table comes from a Python list whose -0 is the integer 0: +0.0 at code 8.
    const bnbFp4 = Float32Array.from(FP4_CODE, (v, i) => (i === 8 ? 0 : v));
    t.is(hexOf(e[`${p}.weight.quant_map`].data), hexOf(quantType === 'nf4' ? NF4_CODE : bnbFp4));
    if (doubleQuant) t.is(hexOf(e[`${p}.weight.nested_quant_map`].data), hexOf(DYNAMIC_SIGNED_CODE));
    const text = Buffer.from(e[stateKey].data as Uint8Array).toString('utf8');
    t.deepEqual([e[stateKey].dtype, [...e[stateKey].shape]], ['U8', [Buffer.byteLength(text)]]);
    const head = `{"quant_type": "${quantType}", "blocksize": 64, "dtype": "bfloat16", "shape": [24, 41]`;
    if (doubleQuant) {
      t.true(text.startsWith(`${head}, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": `), text);
      t.is(JSON.parse(text).nested_offset, s.nested!.offset);
    } else {
      t.is(text, `${head}}`);
    }
    // through a real safetensors file and back
    const file = path.join(dir, 'model.safetensors');
    writeSafetensors(file, e);
    const ck = new SafetensorsCheckpoint(dir);
    t.is(detectQuantFormat(ck, p), quantType);
    t.is(detectQuantFormat(ck, 'model.layers.3.self_attn.k_proj'), null);
    const back = readQuant4State(ck, p);
    sameState(t, back, s);
    t.deepEqual(f32Bits(dequantize4bit(back).toFloat32Array()), f32Bits(dequantize4bit(s).toFloat32Array()));
  }
});

test('int8 layout: weight I8, SCB F32 [out], weight_format U8 scalar 0; round trip is exact', (t) => {
  const rng = makeRng(t);
  const w = Float32Array.from({ length: 6 * 11 }, () => rng.normal());
  const s = quantizeInt8Rowwise(w, { shape: [6, 11] });
  const e = int8Entries('model.layers.0.mlp.down_proj', s);
  const p = 'model.layers.0.mlp.down_proj';
  t.deepEqual(Object.fromEntries(Object.entries(e).map(([k, v]) => [k, [v.dtype, [...v.shape]]])), {
    [`${p}.weight`]: ['I8', [6, 11]],
    [`${p}.SCB`]: ['F32', [6]],
    [`${p}.weight_format`]: ['U8', []],
  });
  t.deepEqual([...(e[`${p}.weight_format`].data as Uint8Array)], [0]);
  const dir = tmp();
  writeSafetensors(path.join(dir, 'model.safetensors'), e);
  const ck = new SafetensorsCheckpoint(dir);
  t.is(detectQuantFormat(ck, p), 'int8');
  const back = readInt8State(ck, p);
  t.deepEqual(back.shape, [6, 11]);
  t.is(hexOf(back.cb), hexOf(s.cb));
  t.is(hexOf(back.scb), hexOf(s.scb));
  t.deepEqual(dequantizeInt8(back).toFloat32Array(), dequantizeInt8(s).toFloat32Array());
});

test('layout reader: every inconsistency is an error naming the tensor and the field', (t) => {
  const p = 'm.q_proj';
  const w = `${p}.weight`;
  const key = `${w}.quant_state.bitsandbytes__nf4`;
  const good = quant4Entries(p, quantize4bit(new Float32Array(700).map((_, i) => Math.sin(i)), { blocksize: 64, shape: [7, 100] }));
  const withJson = (obj: Record<string, unknown>) => {
    const json = new Uint8Array(Buffer.from(JSON.stringify(obj)));
    return { ...good, [key]: { dtype: 'U8', shape: [json.length], data: json } as TensorToWrite };
  };
  const state = JSON.parse(Buffer.from(good[key].data as Uint8Array).toString()) as Record<string, unknown>;
  const fails = (entries: Record<string, TensorToWrite>, code: string, re: RegExp) => {
    const e = t.throws(() => readQuant4State(entriesReader(entries), p), { instanceOf: PeftkitError });
    t.is(e?.code, code, e?.message);
    t.regex(e!.message, re);
  };
  t.notThrows(() => readQuant4State(entriesReader(withJson(state)), p));
  fails(withJson({ ...state, blocksize: 48 }), 'E_FORMAT', /bitsandbytes__nf4: field "blocksize": expected one of 32, 64/);
  fails(withJson({ ...state, quant_type: 'fp4' }), 'E_FORMAT', /field "quant_type" is 'fp4' but the tensor name says 'nf4'/);
  fails(withJson({ ...state, dtype: 'int8' }), 'E_FORMAT', /field "dtype": expected 'float32', 'bfloat16' or 'float16'/);
  fails(withJson({ ...state, shape: [7, 101] }), 'E_FORMAT', /m\.q_proj\.weight: expected 354 bytes of packed 4-bit codes .*, got U8 \[350, 1\]/);
  fails(withJson({ ...state, shape: 'big' }), 'E_FORMAT', /field "shape": expected a list of positive integers/);
  const { blocksize: _b, ...noBlocksize } = state;
  fails(withJson(noBlocksize), 'E_FORMAT', /field "blocksize" is missing/);
  const { nested_offset: _o, ...partial } = state;
  fails(withJson(partial), 'E_FORMAT', /must all be present \(double quantization\) or all absent/);
  fails(withJson({ ...state, nested_offset: 'x' }), 'E_FORMAT', /field "nested_offset": expected a finite number/);
  fails({ ...good, [key]: { dtype: 'U8', shape: [3], data: new Uint8Array([123, 34, 120]) } }, 'E_FORMAT', /bitsandbytes__nf4: not valid JSON/);
  const { [`${w}.nested_absmax`]: _n, ...noNested } = good;
  fails(noNested, 'E_MISSING', /m\.q_proj\.weight\.nested_absmax: tensor is missing/);
  fails({ ...good, [`${w}.absmax`]: { dtype: 'F32', shape: [11], data: new Float32Array(11) } }, 'E_FORMAT', /weight\.absmax: expected U8 \[11\], got F32 \[11\]/);
  const otherMap = Float32Array.from(NF4_CODE);
  otherMap[3] += 1e-3;
  fails({ ...good, [`${w}.quant_map`]: { dtype: 'F32', shape: [16], data: otherMap } }, 'E_UNSUPPORTED', /weight\.quant_map: this code book differs/);
  const oldNestedMap = Float32Array.from(DYNAMIC_SIGNED_CODE);
  oldNestedMap[0] = -1;
  fails({ ...good, [`${w}.nested_quant_map`]: { dtype: 'F32', shape: [256], data: oldNestedMap } }, 'E_UNSUPPORTED', /nested_quant_map: this code book differs/);
  // fp4's code 8 is +0.0 in bitsandbytes' checkpoints and -0.0 in the published table: both are the fp4 code book.
  const fp4 = quant4Entries(p, quantize4bit(new Float32Array(700).map((_, i) => Math.sin(i)), { quantType: 'fp4', blocksize: 64, shape: [7, 100] }));
  for (const zero of [0, -0]) {
    const map = Float32Array.from(FP4_CODE, (v, i) => (i === 8 ? zero : v));
    t.notThrows(() => readQuant4State(entriesReader({ ...fp4, [`${w}.quant_map`]: { dtype: 'F32', shape: [16], data: map } }), p), `fp4 code 8 = ${Object.is(zero, -0) ? '-0' : '+0'}`);
  }
  const { [key]: _s, ...noState } = good;
  fails(noState, 'E_MISSING', /bitsandbytes__nf4 \(or __fp4\): tensor is missing/);

  const i8 = int8Entries(p, quantizeInt8Rowwise(new Float32Array(6).fill(1), { shape: [2, 3] }));
  const i8fails = (entries: Record<string, TensorToWrite>, code: string, re: RegExp) => {
    const e = t.throws(() => readInt8State(entriesReader(entries), p), { instanceOf: PeftkitError });
    t.is(e?.code, code, e?.message);
    t.regex(e!.message, re);
  };
  i8fails({ ...i8, [`${p}.weight_format`]: { dtype: 'U8', shape: [], data: new Uint8Array([1]) } }, 'E_UNSUPPORTED', /weight_format: value 1/);
  i8fails({ ...i8, [`${p}.SCB`]: { dtype: 'F32', shape: [3], data: new Float32Array(3) } }, 'E_FORMAT', /m\.q_proj\.SCB: expected F32 \[2\], got F32 \[3\]/);
  i8fails({ ...i8, [w]: { dtype: 'U8', shape: [2, 3], data: new Uint8Array(6) } }, 'E_FORMAT', /m\.q_proj\.weight: expected I8 \[out, in\]/);
  const { [`${p}.weight_format`]: _f, ...noFormat } = i8;
  t.notThrows(() => readInt8State(entriesReader(noFormat), p), 'an absent weight_format means rows');
});

const BNB_4BIT_CONFIG = {
  _load_in_4bit: true,
  _load_in_8bit: false,
  bnb_4bit_compute_dtype: 'float32',
  bnb_4bit_quant_storage: 'uint8',
  bnb_4bit_quant_type: 'nf4',
  bnb_4bit_use_double_quant: true,
  llm_int8_enable_fp32_cpu_offload: false,
  llm_int8_has_fp16_weight: false,
  llm_int8_skip_modules: null,
  llm_int8_threshold: 6.0,
  load_in_4bit: true,
  load_in_8bit: false,
  quant_method: 'bitsandbytes',
};

/** The block absmax of the original weights, for the error bounds. */
function blockAbsmax(w: Float32Array, bs: number): Float32Array {
  const out = new Float32Array(Math.ceil(w.length / bs));
  for (let i = 0; i < w.length; i++) out[Math.floor(i / bs)] = Math.max(out[Math.floor(i / bs)], Math.abs(w[i]));
  return out;
}

test('quantizeModelSync nf4: a complete HF folder in the transformers + bitsandbytes layout, within the expected error', (t) => {
  const src = tmp();
  writeRandomModel(path.join(src, 'm'), { numLayers: 2, hiddenSize: 64, intermediateSize: 96, tieWordEmbeddings: false, seed: 3 });
  const model = path.join(src, 'm');
  fs.writeFileSync(path.join(model, 'generation_config.json'), '{"do_sample": false}\n');
  const out = path.join(src, 'q');
  fs.mkdirSync(out);
  fs.writeFileSync(path.join(out, 'stale.txt'), 'left from before');
  const r = quantizeModelSync({ model, out, format: 'nf4' });
  const modules = [0, 1].flatMap((l) => LINEARS.map((m) => `model.layers.${l}.${m}`));
  t.deepEqual(r.quantized, modules.map((m) => `${m}.weight`).sort());
  t.true(r.copied.includes('lm_head.weight') && r.copied.includes('model.embed_tokens.weight') && r.copied.includes('model.norm.weight'));
  t.true(r.bytesAfter < r.bytesBefore);

  const srcFiles = fs.readdirSync(model).sort();
  t.deepEqual(fs.readdirSync(out).sort(), srcFiles, 'tokenizer, generation and config files, one model.safetensors, nothing stale');
  for (const f of srcFiles.filter((f) => f !== 'config.json' && f !== 'model.safetensors')) {
    t.deepEqual(fs.readFileSync(path.join(out, f)), fs.readFileSync(path.join(model, f)), f);
  }
  const srcCfg = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8'));
  t.deepEqual(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')), { ...srcCfg, quantization_config: BNB_4BIT_CONFIG });

  const ck = new SafetensorsCheckpoint(out);
  const orig = new SafetensorsCheckpoint(model);
  const expected = new Set<string>();
  for (const m of modules) {
    for (const s of ['', '.absmax', '.quant_map', '.nested_absmax', '.nested_quant_map', '.quant_state.bitsandbytes__nf4']) expected.add(`${m}.weight${s}`);
  }
  for (const name of orig.tensors.keys()) if (!r.quantized.includes(name)) expected.add(name);
  t.deepEqual([...ck.tensors.keys()].sort(), [...expected].sort());
  for (const name of r.copied) {
    t.deepEqual([ck.info(name).dtype, ck.info(name).shape], [orig.info(name).dtype, orig.info(name).shape], name);
    t.is(hexOf(ck.readBytes(name)), hexOf(orig.readBytes(name)), name);
  }
  const g4 = halfMaxGap(NF4_CODE), g8 = halfMaxGap(DYNAMIC_SIGNED_CODE);
  for (const m of modules) {
    const s = readQuant4State(ck, m);
    const w = orig.readFloat32(`${m}.weight`);
    t.deepEqual([s.quantType, s.blocksize, s.dtype, s.shape], ['nf4', 64, 'float32', orig.info(`${m}.weight`).shape]);
    const plain = refQuantize4(w, 64, 'nf4');
    t.is(hexOf(s.packed), hexOf(plain.packed), `${m} codes are the published algorithm's`);
    const rec = recoverAbsmax(s), exact = blockAbsmax(w, 64);
    t.is(hexOf(exact), hexOf(plain.absmax));
    const d = dequantize4bit(s).toFloat32Array();
    for (let b = 0; b < rec.length; b++) {
      if (Math.abs(rec[b] - exact[b]) > g8 * s.nested!.absmax[Math.floor(b / 256)] + 1e-7) return t.fail(`${m} block ${b} scale`);
    }
    for (let i = 0; i < w.length; i++) {
      const b = Math.floor(i / 64);
      if (Math.abs(d[i] - w[i]) > g4 * Math.max(rec[b], exact[b]) + Math.abs(rec[b] - exact[b]) + 1e-6 * exact[b]) {
        return t.fail(`${m} element ${i}: ${d[i]} vs ${w[i]}`);
      }
    }
  }
});

test('quantizeModelSync int8 and fp4: layouts, copied biases, and errors', (t) => {
  const src = tmp();
  const model = path.join(src, 'qwen');
  writeRandomModel(model, { architecture: 'Qwen2ForCausalLM', numLayers: 1, hiddenSize: 32, numHeads: 4, numKvHeads: 2, seed: 5 });
  const orig = new SafetensorsCheckpoint(model);
  const p = 'model.layers.0.self_attn.q_proj';

  const r8 = quantizeModelSync({ model, out: path.join(src, 'int8'), format: 'int8' });
  const ck8 = new SafetensorsCheckpoint(path.join(src, 'int8'));
  const cfg8 = JSON.parse(fs.readFileSync(path.join(src, 'int8', 'config.json'), 'utf8')).quantization_config;
  t.deepEqual(cfg8, { ...BNB_4BIT_CONFIG, _load_in_4bit: false, _load_in_8bit: true, load_in_4bit: false, load_in_8bit: true, bnb_4bit_quant_type: 'fp4', bnb_4bit_use_double_quant: false });
  t.true(r8.copied.includes(`${p}.bias`));
  t.is(hexOf(ck8.readBytes(`${p}.bias`)), hexOf(orig.readBytes(`${p}.bias`)));
  for (const m of LINEARS.map((l) => `model.layers.0.${l}`)) {
    const shape = orig.info(`${m}.weight`).shape;
    t.deepEqual([ck8.info(`${m}.weight`).dtype, ck8.info(`${m}.weight`).shape], ['I8', shape]);
    t.deepEqual([ck8.info(`${m}.SCB`).dtype, ck8.info(`${m}.SCB`).shape], ['F32', [shape[0]]]);
    t.deepEqual([ck8.info(`${m}.weight_format`).dtype, ck8.info(`${m}.weight_format`).shape], ['U8', []]);
    const s = readInt8State(ck8, m);
    const w = orig.readFloat32(`${m}.weight`);
    // weights pass through float16 first, as bitsandbytes' Int8Params does
    const want = refInt8(roundArrayToF16(w), shape[0], shape[1]);
    t.is(hexOf(s.cb), hexOf(want.cb), `${m} codes`);
    t.is(hexOf(s.scb), hexOf(want.scb), `${m} SCB`);
    const d = dequantizeInt8(s).toFloat32Array();
    for (let i = 0; i < w.length; i++) {
      const row = Math.floor(i / shape[1]);
      if (Math.abs(d[i] - w[i]) > (s.scb[row] / 254) * (1 + 1e-5) + Math.abs(roundToF16(w[i]) - w[i])) return t.fail(`${m} ${i}`);
    }
  }

  quantizeModelSync({ model, out: path.join(src, 'fp4'), format: 'fp4', blocksize: 128, doubleQuant: false, computeDtype: 'bfloat16' });
  const ck4 = new SafetensorsCheckpoint(path.join(src, 'fp4'));
  const cfg4 = JSON.parse(fs.readFileSync(path.join(src, 'fp4', 'config.json'), 'utf8')).quantization_config;
  t.deepEqual(cfg4, { ...BNB_4BIT_CONFIG, bnb_4bit_quant_type: 'fp4', bnb_4bit_use_double_quant: false, bnb_4bit_compute_dtype: 'bfloat16' });
  t.false(ck4.has(`${p}.weight.nested_absmax`));
  t.is(ck4.info(`${p}.weight.absmax`).dtype, 'F32');
  const s4 = readQuant4State(ck4, p);
  t.deepEqual([s4.quantType, s4.blocksize, s4.nested], ['fp4', 128, null]);

  const err = (fn: () => unknown, code: string, re: RegExp) => {
    const e = t.throws(fn, { instanceOf: PeftkitError });
    t.is(e?.code, code, e?.message);
    t.regex(e!.message, re);
  };
  err(() => quantizeModelSync({ model: path.join(src, 'fp4'), out: path.join(src, 'again'), format: 'nf4' }), 'E_UNSUPPORTED', /already quantized/);
  err(() => quantizeModelSync({ model, out: path.join(src, 'x'), format: 'int4' as never }), 'E_ARG', /format: expected 'nf4', 'fp4' or 'int8'/);
  err(() => quantizeModelSync({ model, out: path.join(src, 'x'), format: 'nf4', blocksize: 100 }), 'E_ARG', /blocksize: expected one of/);
  err(() => quantizeModelSync({ model, out: model, format: 'nf4' }), 'E_ARG', /out: .* is the model folder/);
  err(() => quantizeModelSync({ model, out: path.dirname(model), format: 'nf4' }), 'E_ARG', /out: .* holds the model folder/);
  err(() => quantizeModelSync({ model: path.join(src, 'nothing'), out: path.join(src, 'x'), format: 'nf4' }), 'E_IO', /config\.json: cannot read/);
  t.false(fs.existsSync(path.join(src, 'x')), 'a failed run leaves no output folder');
  // "quantization_config": null (written by some exporters) means not quantized, as when loading.
  const nullQ = path.join(src, 'null-q');
  fs.cpSync(model, nullQ, { recursive: true });
  const plainCfg = JSON.parse(fs.readFileSync(path.join(nullQ, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(nullQ, 'config.json'), JSON.stringify({ ...plainCfg, quantization_config: null }));
  quantizeModelSync({ model: nullQ, out: path.join(src, 'null-q-nf4'), format: 'nf4' });
  t.is(JSON.parse(fs.readFileSync(path.join(src, 'null-q-nf4', 'config.json'), 'utf8')).quantization_config.bnb_4bit_quant_type, 'nf4');
  // a checkpoint missing a Linear weight
  const broken = path.join(src, 'broken');
  fs.cpSync(model, broken, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, info] of orig.tensors) if (name !== `${p}.weight`) tensors[name] = { dtype: info.dtype, shape: info.shape, data: orig.readBytes(name) };
  writeSafetensors(path.join(broken, 'model.safetensors'), tensors);
  err(() => quantizeModelSync({ model: broken, out: path.join(src, 'x'), format: 'nf4' }), 'E_MISSING', /q_proj\.weight/);
});

test('quantizeModelSync from a Hugging Face hub snapshot (every file a symlink to a blob) copies the tokenizer and generation files', (t) => {
  const dir = tmp();
  const blobs = path.join(dir, 'blobs');
  writeRandomModel(blobs, { numLayers: 1, hiddenSize: 32, numHeads: 2, seed: 4 });
  fs.writeFileSync(path.join(blobs, 'generation_config.json'), '{"do_sample": false}\n');
  const snapshot = path.join(dir, 'snapshot');
  fs.mkdirSync(snapshot);
  for (const f of fs.readdirSync(blobs)) fs.symlinkSync(path.join(blobs, f), path.join(snapshot, f));
  const out = path.join(dir, 'q');
  quantizeModelSync({ model: snapshot, out, format: 'nf4' });
  t.deepEqual(fs.readdirSync(out).sort(), fs.readdirSync(blobs).sort());
  for (const f of ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    t.false(fs.lstatSync(path.join(out, f)).isSymbolicLink(), `${f} is a copy, not a link into the cache`);
    t.deepEqual(fs.readFileSync(path.join(out, f)), fs.readFileSync(path.join(blobs, f)), f);
  }
});
