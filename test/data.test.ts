import test from 'ava';
import type { ExecutionContext } from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError } from '../src/errors';
import {
  BatchIterator,
  encodeRow,
  epochPermutation,
  evalBatches,
  loadDataset,
  loadTokenizer,
  parseRows,
  readRows,
  splitTail,
  writeByteTokenizer,
} from '../src/data';
import type { Batch, DataRow, Example, Tokenizer } from '../src/data';

// Deliberately not test/helpers/check.ts: it loads the native addon, and the data pipeline must not need it.
function rngFor(t: ExecutionContext): () => number {
  let s = process.env.PEFTKIT_TEST_SEED ? Number(process.env.PEFTKIT_TEST_SEED) : (Math.random() * 2 ** 32) >>> 0;
  t.log(`seed ${s} (replay with PEFTKIT_TEST_SEED=${s})`);
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-data-'));
}

function writeFile(dir: string, name: string, text: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
}

function byteTokenizer(opts: Parameters<typeof writeByteTokenizer>[1] = {}): Tokenizer {
  const dir = tmpDir();
  writeByteTokenizer(dir, opts);
  return loadTokenizer(dir);
}

const tok = byteTokenizer();
const src = { file: 'rows.jsonl', line: 7 };
const ignore = -100;
const utf8 = (s: string) => [...Buffer.from(s, 'utf8')];

function dataError(t: ExecutionContext, fn: () => unknown, pattern: RegExp, code = 'E_DATA'): void {
  const e = t.throws(fn, { instanceOf: PeftkitError });
  t.is(e?.code, code, e?.message);
  t.regex(e?.message ?? '', pattern);
}

/** Random valid UTF-8: ASCII, controls, Latin-1, CJK, combining marks, astral emoji. */
function randomText(rng: () => number, n: number): string {
  const ranges: Array<[number, number]> = [[0x00, 0x7f], [0x20, 0x7e], [0x80, 0x7ff], [0x300, 0x36f], [0x4e00, 0x9fff], [0xe000, 0xfffd], [0x1f300, 0x1faff], [0x10000, 0x10ffff]];
  let s = '';
  for (let i = 0; i < n; i++) {
    const [lo, hi] = ranges[Math.floor(rng() * ranges.length)];
    s += String.fromCodePoint(lo + Math.floor(rng() * (hi - lo + 1)));
  }
  return s;
}

// ---------- tokenizer fixture ----------

test('byte tokenizer: without merges the ids are exactly the UTF-8 bytes, and decode round-trips', (t) => {
  const rng = rngFor(t);
  const bytes = byteTokenizer({ merges: [] });
  t.is(bytes.vocabSize, 256 + 5);
  for (let k = 0; k < 50; k++) {
    const s = randomText(rng, 1 + Math.floor(rng() * 40));
    t.deepEqual(bytes.encode(s, { addSpecialTokens: false }), utf8(s));
    t.is(bytes.decode(bytes.encode(s, { addSpecialTokens: false })), s);
  }
});

test('byte tokenizer: merges apply, BOS comes from the post-processor, special tokens are single ids', (t) => {
  const rng = rngFor(t);
  t.is(tok.vocabSize, 256 + 6 + 5);
  const the = tok.tokenToId('Ġthe')!;
  t.true(the >= 256);
  t.deepEqual(tok.encode(' the', { addSpecialTokens: false }), [the]);
  t.deepEqual(tok.encode('hi'), [tok.bosId!, ...utf8('hi')]);
  t.deepEqual(tok.encode('a<|eos|>', { addSpecialTokens: false }), [97, tok.eosId!]);
  t.is(tok.padId, tok.tokenToId('<|pad|>')!);
  t.is(tok.decode([tok.bosId!, 104, 105], { skipSpecialTokens: true }), 'hi');
  t.is(tok.decode([]), '');
  for (let k = 0; k < 50; k++) {
    const s = randomText(rng, 1 + Math.floor(rng() * 40)) + ' the then in there ';
    const ids = tok.encode(s, { addSpecialTokens: false });
    t.true(ids.length < utf8(s).length, 'merges shorten the encoding');
    t.is(tok.decode(ids), s);
  }
});

// ---------- loadTokenizer ----------

test('loadTokenizer: missing or broken files name the file', (t) => {
  const empty = tmpDir();
  dataError(t, () => loadTokenizer(empty), /tokenizer\.json: cannot read .*ENOENT/, 'E_IO');
  const dir = tmpDir();
  writeByteTokenizer(dir);
  fs.rmSync(path.join(dir, 'tokenizer_config.json'));
  dataError(t, () => loadTokenizer(dir), /tokenizer_config\.json: cannot read/, 'E_IO');
  writeFile(dir, 'tokenizer_config.json', '{"eos_token": ');
  dataError(t, () => loadTokenizer(dir), /tokenizer_config\.json: not valid JSON/, 'E_CONFIG');
  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ eos_token: '</s>' }));
  dataError(t, () => loadTokenizer(dir), /tokenizer_config\.json: eos_token "<\/s>" is not in the vocabulary/, 'E_CONFIG');
  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ eos_token: '<|eos|>', chat_template: '{% for m in messages %}' }));
  dataError(t, () => loadTokenizer(dir), /tokenizer_config\.json: chat_template does not parse/, 'E_CONFIG');
});

test('loadTokenizer: a vocabulary without an unk token loads; text outside it is an error naming the file', (t) => {
  // A DNA-style WordLevel tokenizer: nothing but its four letters, no unk token.
  const dir = tmpDir();
  writeFile(dir, 'tokenizer.json', JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { String: '' }, behavior: 'Isolated', invert: false },
    post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab: { A: 0, C: 1, G: 2, T: 3 }, unk_token: null },
  }));
  writeFile(dir, 'tokenizer_config.json', '{}');
  const tok = loadTokenizer(dir);
  t.deepEqual(tok.encode('GATTACA', { addSpecialTokens: false }), [2, 0, 3, 3, 0, 1, 0]);
  dataError(t, () => tok.encode('GATXACA'), /tokenizer\.json: "GATXACA" has pieces outside the vocabulary, and the tokenizer has no unk token/);
});

test('loadTokenizer: AddedToken objects, pad falls back to EOS, special_tokens_map, template list and chat_template.jinja', (t) => {
  const dir = tmpDir();
  const info = writeByteTokenizer(dir);
  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ bos_token: { content: '<|bos|>', __type: 'AddedToken' }, eos_token: '<|eos|>' }));
  let k = loadTokenizer(dir);
  t.is(k.bosId, info.bosId);
  t.is(k.padToken, null);
  t.is(k.padId, info.eosId);
  t.is(k.chatTemplate, null);
  dataError(t, () => k.applyChatTemplate([{ role: 'user', content: 'x' }]), /no chat_template/, 'E_CONFIG');

  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ eos_token }}' }] }));
  writeFile(dir, 'special_tokens_map.json', JSON.stringify({ eos_token: { content: '<|eos|>' }, pad_token: '<|pad|>' }));
  k = loadTokenizer(dir);
  t.is(k.eosId, info.eosId);
  t.is(k.padId, info.padId);
  t.is(k.bosId, null);
  t.is(k.applyChatTemplate([{ role: 'user', content: 'x' }]), 'D<|eos|>');

  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ chat_template: [{ name: 'tool_use', template: 'T' }] }));
  dataError(t, () => loadTokenizer(dir), /without a "default" entry \(names: "tool_use"\)/, 'E_CONFIG');

  writeFile(dir, 'tokenizer_config.json', JSON.stringify({ eos_token: '<|eos|>' }));
  writeFile(dir, 'chat_template.jinja', '{{ messages[0].content }}!');
  t.is(loadTokenizer(dir).applyChatTemplate([{ role: 'user', content: 'x' }]), 'x!');
});

test('chat template renders ChatML with BOS and the generation prompt', (t) => {
  const msgs = [
    { role: 'system' as const, content: 'Be brief.' },
    { role: 'user' as const, content: 'Hi' },
  ];
  t.is(tok.applyChatTemplate(msgs), '<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n');
  t.is(tok.applyChatTemplate(msgs, { addGenerationPrompt: true }), '<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  const ids = tok.encode(tok.applyChatTemplate(msgs), { addSpecialTokens: false });
  t.is(ids[0], tok.bosId!);
  t.is(ids.filter((i) => i === tok.bosId).length, 1, 'the template writes BOS; encoding adds no second one');
  t.is(ids.filter((i) => i === tok.tokenToId('<|im_start|>')).length, 2);
});

test('raise_exception in a template is an E_DATA error naming the row', (t) => {
  const strict = byteTokenizer({
    chatTemplate: "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}",
  });
  const row: DataRow = { kind: 'messages', messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }], tools: null, source: src };
  dataError(t, () => encodeRow(row, strict), /^rows\.jsonl:7: chat template failed: System role not supported/);
  const plain = byteTokenizer({ chatTemplate: null });
  dataError(t, () => encodeRow(row, plain), /no chat_template.*\(at rows\.jsonl:7\)/, 'E_CONFIG');
});

test('tools and extra message keys reach the template; absent tools are none, as in transformers', (t) => {
  const k = byteTokenizer({
    chatTemplate: "{% if tools is not none %}[{{ tools | length }} tools]{% endif %}{% for m in messages %}{{ m['role'] }}{% if m['name'] %}({{ m['name'] }}){% endif %}:{{ m['content'] }};{% endfor %}",
  });
  const [row] = parseRows('{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "name": "calc", "content": "4"}, {"role": "assistant", "content": "a"}], "tools": [{"type": "function"}]}', 'd.jsonl');
  const ex = encodeRow(row, k);
  t.is(k.decode(ex.inputIds), '[1 tools]user:q;tool(calc):4;assistant:a;');
  // This template writes no generation prompt, so the turn's "assistant:" header is part of what is trained.
  t.is(k.decode(ex.labels.filter((l) => l !== ignore)), 'assistant:a;');
  t.is(k.applyChatTemplate([{ role: 'user', content: 'q' }]), 'user:q;');
});

test('an assistant turn that only calls tools (content null or absent, the OpenAI format) is a valid, trained turn', (t) => {
  const k = byteTokenizer({
    chatTemplate: "{% for m in messages %}{{ m['role'] }}:{% if m['content'] %}{{ m['content'] }}{% endif %}{% for c in m['tool_calls'] or [] %}<call {{ c['function']['name'] }}>{% endfor %};{% endfor %}" +
      "{% if add_generation_prompt %}assistant:{% endif %}",
  });
  const call = '[{"type": "function", "function": {"name": "calc", "arguments": {"x": 2}}}]';
  const rows = parseRows([
    `{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": ${call}}, {"role": "tool", "content": "4"}, {"role": "assistant", "content": "a"}]}`,
    `{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null, "tool_calls": ${call}}]}`,
  ].join('\n'), 'd.jsonl');
  const first = encodeRow(rows[0], k);
  t.is(k.decode(first.inputIds), 'user:q;assistant:<call calc>;tool:4;assistant:a;');
  t.is(k.decode(first.labels.filter((l) => l !== ignore)), '<call calc>;a;');
  t.is(k.decode(encodeRow(rows[1], k).labels.filter((l) => l !== ignore)), '<call calc>;');
  dataError(t, () => parseRows('{"messages": [{"role": "assistant", "content": null}]}', 'd.jsonl'), /^d\.jsonl:1: messages\[0\]\.content is null, expected a string$/);
  dataError(t, () => parseRows('{"messages": [{"role": "assistant", "tool_calls": []}]}', 'd.jsonl'), /content is missing, expected a string \(or null beside a non-empty "tool_calls" list\)/);
});

// ---------- rows ----------

test('rows: every shape from JSONL, blank lines skipped, line numbers kept, mixed shapes allowed', (t) => {
  const text = [
    '{"text": "hello", "id": 1}',
    '',
    '{"prompt": "Q", "completion": "A"}',
    '   ',
    '{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "name": "bot"}], "tools": [{"type": "function"}]}',
    '{"prompt": [{"role": "user", "content": "u"}], "completion": [{"role": "assistant", "content": "a"}]}',
    '{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}',
    '{"input_ids": [4]}\r',
  ].join('\n');
  const rows = parseRows('\ufeff' + text, 'd.jsonl');
  t.deepEqual(rows.map((r) => [r.kind, r.source.line]), [
    ['text', 1],
    ['prompt_completion', 3],
    ['messages', 5],
    ['chat_prompt_completion', 6],
    ['tokens', 7],
    ['tokens', 8],
  ]);
  const m = rows[2];
  t.true(m.kind === 'messages' && m.messages[1].name === 'bot' && m.tools!.length === 1);
  const p = rows[4];
  t.true(p.kind === 'tokens' && p.labels![0] === -100);
  const q = rows[5];
  t.true(q.kind === 'tokens' && q.labels === null);
});

test('rows: a JSON array, pretty-printed, reports the line each element starts on', (t) => {
  const text = '[\n  {"text": "a"},\n  {\n    "text": "b,{[\\"]}"\n  },\n\n  {"prompt": "p", "completion": "c"}, {"text": "d"}\n]\n';
  const rows = parseRows(text, 'd.json');
  t.deepEqual(rows.map((r) => r.source.line), [2, 3, 7, 7]);
  dataError(t, () => parseRows('[\n {"text": "a"},\n {"texts": "b"}\n]', 'd.json'), /^d\.json:3: unknown row shape with keys "texts", expected one of \{"text"\}/);
  dataError(t, () => parseRows('[\n {"text": "a"},\n {"text": }\n]', 'd.json'), /^d\.json:3: not valid JSON/);
});

test('rows: malformed rows name file:line, what is wrong and what was expected', (t) => {
  const dir = tmpDir();
  const cases: Array<[string, RegExp]> = [
    ['{"text": "ok"', /not valid JSON .*expected one JSON object per line/],
    ['[1, 2]', /row is an array, expected a JSON object/],
    ['{"question": "q", "answer": "a"}', /unknown row shape with keys "question", "answer", expected one of/],
    ['{"text": 3}', /"text" is a number, expected a string/],
    ['{"prompt": "p"}', /"prompt" without "completion", expected both/],
    ['{"prompt": "p", "completion": null}', /"completion" is null, expected a string/],
    ['{"messages": []}', /"messages" is empty, expected at least one/],
    ['{"messages": "hi"}', /"messages" is a string, expected an array/],
    ['{"messages": [{"role": "human", "content": "x"}]}', /messages\[0\]\.role is "human", expected one of "system", "user", "assistant", "tool"/],
    ['{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}', /messages\[1\]\.content is missing, expected a string/],
    ['{"messages": [{"role": "user", "content": "x"}], "text": "y"}', /"messages" and "text", expected only one/],
    ['{"input_ids": [1, 2], "labels": [1]}', /"labels" has 1 entries but "input_ids" has 2, expected the same length/],
    ['{"input_ids": [1, -5]}', /input_ids\[1\] is -5, expected a non-negative integer token id/],
    ['{"input_ids": [1, 2], "labels": [1, -1]}', /labels\[1\] is -1, expected a non-negative integer token id or -100/],
    ['{"input_ids": [1.5]}', /input_ids\[0\] is 1.5/],
    ['{"input_ids": []}', /"input_ids" is empty/],
    ['{"labels": [1]}', /"labels" without "input_ids"/],
    ['{"conversations": [{"from": "human", "value": "x"}]}', /ShareGPT format/],
  ];
  for (const [line, pattern] of cases) {
    const f = writeFile(dir, 'bad.jsonl', `{"text": "fine"}\n\n${line}\n{"text": "after"}\n`);
    const e = t.throws(() => readRows(f), { instanceOf: PeftkitError }, line);
    t.is(e?.code, 'E_DATA');
    t.true(e!.message.startsWith(`${f}:3: `), e!.message);
    t.regex(e!.message, pattern);
  }
  dataError(t, () => readRows(writeFile(dir, 'empty.jsonl', '\n\n')), /no rows/);
  dataError(t, () => readRows(path.join(dir, 'nope.jsonl')), /nope\.jsonl: cannot read dataset/, 'E_IO');
});

// ---------- encoding ----------

test('text rows: BOS from the post-processor, one EOS at the end, loss on every token', (t) => {
  const ex = encodeRow({ kind: 'text', text: 'hi there', source: src }, tok);
  t.deepEqual(ex.inputIds, [tok.bosId!, ...tok.encode('hi there', { addSpecialTokens: false }), tok.eosId!]);
  t.deepEqual(ex.labels, ex.inputIds);
  const already = encodeRow({ kind: 'text', text: 'x<|eos|>', source: src }, tok);
  t.deepEqual(already.inputIds, [tok.bosId!, 120, tok.eosId!]);
});

test('prompt/completion rows: -100 exactly over the prompt tokens, unless maskPrompt is false', (t) => {
  const row: DataRow = { kind: 'prompt_completion', prompt: 'Question: the?', completion: ' Answer: there', source: src };
  const p = tok.encode('Question: the?');
  const c = tok.encode(' Answer: there', { addSpecialTokens: false });
  const ex = encodeRow(row, tok);
  t.deepEqual(ex.inputIds, [...p, ...c, tok.eosId!]);
  t.deepEqual(ex.labels, [...p.map(() => ignore), ...c, tok.eosId!]);
  t.is(p[0], tok.bosId!);
  const all = encodeRow(row, tok, { maskPrompt: false });
  t.deepEqual(all.labels, all.inputIds);
});

/**
 * A tokenizer shaped like Llama 2's / TinyLlama's / Mistral's legacy tokenizer.json: BPE over
 * characters, a normalizer that prepends "▁" to every input and turns spaces into "▁", BOS from
 * the post-processor, and a [INST] chat template.
 */
function sentencePieceTokenizer(): Tokenizer {
  const dir = tmpDir();
  const specials = ['<unk>', '<s>', '</s>'];
  const vocab: Record<string, number> = {};
  for (const t of [...specials, ...'▁ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:?[]/.,']) vocab[t] = Object.keys(vocab).length;
  const merges = [['▁', 'P'], ['▁P', 'a'], ['r', 'i'], ['▁Pa', 'ri'], ['▁Pari', 's']];
  for (const [a, b] of merges) vocab[a + b] = Object.keys(vocab).length;
  const added = specials.map((content, id) => ({ id, content, special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }], pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: false, vocab, merges: merges.map((m) => m.join(' ')) },
  }));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({
    bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>',
    chat_template: "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}",
  }));
  return loadTokenizer(dir);
}

test('a completion reads as it follows its prompt: no extra "▁" token from a SentencePiece-style tokenizer (as TRL encodes prompt + completion)', (t) => {
  const sp = sentencePieceTokenizer();
  const tokens = (ids: number[]) => ids.map((id) => sp.idToToken(id));
  const trained = (ex: Example) => tokens(ex.labels.filter((l) => l !== ignore));
  t.deepEqual(tokens(sp.encode(' Paris', { addSpecialTokens: false })), ['▁', '▁Paris'], 'the fixture prepends "▁" to any input');

  const ex = encodeRow({ kind: 'prompt_completion', prompt: 'Answer:', completion: ' Paris', source: src }, sp);
  t.deepEqual(ex.inputIds, [...sp.encode('Answer: Paris'), sp.eosId!]);
  t.deepEqual(trained(ex), ['▁Paris', '</s>']);
  t.deepEqual(ex.labels.slice(0, sp.encode('Answer:').length), sp.encode('Answer:').map(() => ignore));

  const messages = [{ role: 'user' as const, content: 'Answer?' }, { role: 'assistant' as const, content: 'Paris' }];
  const chat = encodeRow({ kind: 'messages', messages, tools: null, source: src }, sp);
  t.deepEqual(chat.inputIds, sp.encode(sp.applyChatTemplate(messages), { addSpecialTokens: false }), 'the ids of the whole conversation');
  t.deepEqual(trained(chat), ['▁Paris', '▁', '</s>']);

  // A merge across the boundary (byte-level "Ġ" + "the"): the completion is encoded on its own, labels exactly on it.
  const merged = encodeRow({ kind: 'prompt_completion', prompt: 'Say ', completion: 'the', source: src }, tok);
  t.deepEqual(merged.labels.filter((l) => l !== ignore), [...tok.encode('the', { addSpecialTokens: false }), tok.eosId!]);
});

test('messages rows: loss exactly on each assistant turn and its end-of-turn markup', (t) => {
  const messages = [
    { role: 'system' as const, content: 'Be brief.' },
    { role: 'user' as const, content: 'Say the word' },
    { role: 'assistant' as const, content: 'the' },
    { role: 'user' as const, content: 'Again' },
    { role: 'assistant' as const, content: 'there, in it' },
  ];
  const ex = encodeRow({ kind: 'messages', messages, tools: null, source: src }, tok);
  // The expected layout, written out independently of the template code.
  const enc = (s: string) => tok.encode(s, { addSpecialTokens: false });
  const parts: Array<[string, boolean]> = [
    ['<|bos|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay the word<|im_end|>\n<|im_start|>assistant\n', false],
    ['the<|im_end|>\n', true],
    ['<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n', false],
    ['there, in it<|im_end|>\n', true],
  ];
  const ids = parts.flatMap(([s]) => enc(s));
  const labels = parts.flatMap(([s, train]) => enc(s).map((id) => (train ? id : ignore)));
  t.deepEqual(ex.inputIds, ids);
  t.deepEqual(ex.labels, labels);
  t.deepEqual(ex.inputIds, enc(parts.map(([s]) => s).join('')), 'piecewise encoding equals whole-text encoding');
  t.is(tok.decode(ex.labels.filter((l) => l !== ignore)), 'the<|im_end|>\nthere, in it<|im_end|>\n');

  const all = encodeRow({ kind: 'messages', messages, tools: null, source: src }, tok, { assistantOnly: false });
  t.deepEqual(all.inputIds, ids);
  t.deepEqual(all.labels, ids);

  const noAssistant = encodeRow({ kind: 'messages', messages: messages.slice(0, 2), tools: null, source: src }, tok);
  t.true(noAssistant.labels.every((l) => l === ignore));
});

test('conversational prompt/completion: loss on the completion turns only', (t) => {
  const prompt = [{ role: 'user' as const, content: 'Hi' }];
  const completion = [{ role: 'assistant' as const, content: 'Hello' }];
  const ex = encodeRow({ kind: 'chat_prompt_completion', prompt, completion, tools: null, source: src }, tok);
  const head = tok.encode('<|bos|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n', { addSpecialTokens: false });
  const tail = tok.encode('Hello<|im_end|>\n', { addSpecialTokens: false });
  t.deepEqual(ex.inputIds, [...head, ...tail]);
  t.deepEqual(ex.labels, [...head.map(() => ignore), ...tail]);
  const all = encodeRow({ kind: 'chat_prompt_completion', prompt, completion, tools: null, source: src }, tok, { maskPrompt: false });
  t.deepEqual(all.labels, all.inputIds);
});

test('a template that rewrites earlier turns cannot be masked per turn: clear error, all-turn training still works', (t) => {
  const unstable = byteTokenizer({ chatTemplate: "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['content'] }}|{% endfor %}" });
  const row: DataRow = { kind: 'messages', messages: [{ role: 'user', content: 'u' }, { role: 'assistant', content: 'a' }, { role: 'user', content: 'v' }], tools: null, source: src };
  dataError(t, () => encodeRow(row, unstable), /^rows\.jsonl:7: the chat template does not render .* prefix/);
  t.is(unstable.decode(encodeRow(row, unstable, { assistantOnly: false }).inputIds), 'u|a|[last]v|');
});

test('pre-tokenized rows pass through; labels default to input_ids', (t) => {
  t.deepEqual(encodeRow({ kind: 'tokens', inputIds: [5, 6, 7], labels: [-100, 6, 7], source: src }, tok), { inputIds: [5, 6, 7], labels: [-100, 6, 7], source: src, truncated: false });
  t.deepEqual(encodeRow({ kind: 'tokens', inputIds: [5, 6, 7], labels: null, source: src }, tok).labels, [5, 6, 7]);
});

test('truncation keeps the start of ids and labels', (t) => {
  const row: DataRow = { kind: 'prompt_completion', prompt: 'abcdef', completion: 'ghij', source: src };
  const full = encodeRow(row, tok);
  const cut = encodeRow(row, tok, { maxLength: 9 });
  t.true(cut.truncated);
  t.false(full.truncated);
  t.deepEqual(cut.inputIds, full.inputIds.slice(0, 9));
  t.deepEqual(cut.labels, full.labels.slice(0, 9));
  t.deepEqual(cut.labels.slice(7), [...utf8('gh')]);
  t.false(encodeRow(row, tok, { maxLength: full.inputIds.length }).truncated);
  dataError(t, () => encodeRow(row, tok, { maxLength: 0 }), /maxLength is 0/, 'E_ARG');
});

// ---------- batches ----------

function examples(lengths: number[]): Example[] {
  // Example i holds tokens 1000*i + t, label -100 on its first token.
  return lengths.map((n, i) => {
    const inputIds = Array.from({ length: n }, (_, t) => 1000 * (i + 1) + t);
    return { inputIds, labels: inputIds.map((id, t) => (t === 0 ? ignore : id)), source: { file: 'x', line: i + 1 }, truncated: false };
  });
}

function rowsOf(b: Batch): number[][] {
  return Array.from({ length: b.B }, (_, r) => Array.from(b.inputIds.subarray(r * b.T, r * b.T + b.lengths[r])));
}

test('padding: right-padded to the longest row with the pad id, labels -100, token counts', (t) => {
  const ex = examples([3, 5, 1]);
  const it = new BatchIterator(ex, { batchSize: 3, padId: 7, shuffle: false });
  const b = it.nextBatch();
  t.is(b.B, 3);
  t.is(b.T, 5);
  t.deepEqual(Array.from(b.inputIds), [1000, 1001, 1002, 7, 7, 2000, 2001, 2002, 2003, 2004, 3000, 7, 7, 7, 7]);
  t.deepEqual(Array.from(b.labels), [ignore, 1001, 1002, ignore, ignore, ignore, 2001, 2002, 2003, 2004, ignore, ignore, ignore, ignore, ignore]);
  t.deepEqual(Array.from(b.lengths), [3, 5, 1]);
  t.is(b.tokens, 9);
  t.is(b.labelTokens, 6);
  t.is(b.targetTokens, 6);
  t.deepEqual(b.examples, [0, 1, 2]);
  t.deepEqual(b.position, { epoch: 0, index: 0 });
  t.deepEqual(b.next, { epoch: 1, index: 0 });

  // A label at position 0 counts as a label but is nobody's target.
  const pre: Example[] = [{ inputIds: [4, 5], labels: [4, 5], source: src, truncated: false }];
  const c = new BatchIterator(pre, { batchSize: 1, padId: 0, padToMultipleOf: 8 }).nextBatch();
  t.is(c.T, 8);
  t.is(c.labelTokens, 2);
  t.is(c.targetTokens, 1);
});

test('packing: rows of exactly maxLength holding the epoch stream, no loss on an example start', (t) => {
  const rng = rngFor(t);
  const lengths = Array.from({ length: 13 }, () => 1 + Math.floor(rng() * 20));
  const ex = examples(lengths);
  const L = 16;
  const it = new BatchIterator(ex, { batchSize: 2, padId: 0, packing: true, maxLength: L, seed: 5 });
  const total = lengths.reduce((a, b) => a + b, 0);
  t.is(it.unitsPerEpoch, Math.ceil(total / L));
  const order = epochPermutation(ex.length, 5, 0);
  const streamIds = Array.from(order).flatMap((i) => ex[i].inputIds);
  const streamLabels = Array.from(order).flatMap((i) => ex[i].inputIds.map((id, k) => (k === 0 ? ignore : ex[i].labels[k])));
  const ids: number[] = [];
  const labels: number[] = [];
  for (let k = 0; k < it.batchesPerEpoch; k++) {
    const b = it.nextBatch();
    for (let r = 0; r < b.B; r++) {
      const last = k === it.batchesPerEpoch - 1 && r === b.B - 1;
      if (!last) t.is(b.lengths[r], L);
      ids.push(...b.inputIds.subarray(r * b.T, r * b.T + b.lengths[r]));
      labels.push(...b.labels.subarray(r * b.T, r * b.T + b.lengths[r]));
    }
  }
  t.deepEqual(ids, streamIds);
  t.deepEqual(labels, streamLabels);
  t.deepEqual(it.position, { epoch: 1, index: 0 });
  dataError(t, () => new BatchIterator(ex, { batchSize: 2, padId: 0, packing: true }), /packing needs maxLength/, 'E_ARG');
});

function take(it: BatchIterator, n: number): Batch[] {
  return Array.from({ length: n }, () => it.nextBatch());
}

const strip = (b: Batch) => ({ ids: Array.from(b.inputIds), labels: Array.from(b.labels), T: b.T, examples: b.examples, position: b.position });

test('seeded shuffle: same seed same batches, other seeds and epochs differ, each epoch a permutation', (t) => {
  const ex = examples(Array.from({ length: 40 }, (_, i) => 1 + (i % 7)));
  const opts = { batchSize: 3, padId: 0, seed: 1234 };
  const a = take(new BatchIterator(ex, opts), 40).map(strip);
  const b = take(new BatchIterator(ex, opts), 40).map(strip);
  t.deepEqual(a, b);
  const other = take(new BatchIterator(ex, { ...opts, seed: 1235 }), 14).map(strip);
  t.notDeepEqual(other.slice(0, 14), a.slice(0, 14));

  const it = new BatchIterator(ex, opts);
  t.is(it.batchesPerEpoch, 14);
  const epoch0 = take(it, 14).flatMap((x) => x.examples);
  const epoch1 = take(it, 14).flatMap((x) => x.examples);
  t.deepEqual([...epoch0].sort((x, y) => x - y), ex.map((_, i) => i));
  t.deepEqual([...epoch1].sort((x, y) => x - y), ex.map((_, i) => i));
  t.notDeepEqual(epoch0, epoch1);

  const plain = take(new BatchIterator(ex, { ...opts, shuffle: false }), 14).flatMap((x) => x.examples);
  t.deepEqual(plain, ex.map((_, i) => i));

  // Every ordering of 3 items turns up across epochs (Fisher–Yates reaches all n! permutations).
  const seen = new Set<string>();
  for (let e = 0; e < 200; e++) seen.add(Array.from(epochPermutation(3, 99, e)).join(','));
  t.is(seen.size, 6);
  t.deepEqual(Array.from(epochPermutation(5, -7, 3)), Array.from(epochPermutation(5, -7, 3)));
  t.notDeepEqual(Array.from(epochPermutation(50, 2 ** 40, 0)), Array.from(epochPermutation(50, 2 ** 40 + 2 ** 32, 0)), 'high seed bits count');
});

test('resume: a saved DataPosition gives exactly the following batches, across epochs and with packing', (t) => {
  const rng = rngFor(t);
  const ex = examples(Array.from({ length: 17 }, () => 1 + Math.floor(rng() * 12)));
  for (const opts of [
    { batchSize: 4, padId: 0, seed: 42 },
    { batchSize: 4, padId: 0, seed: 42, dropLast: true },
    { batchSize: 3, padId: 0, seed: 42, packing: true, maxLength: 8 },
  ]) {
    const run = new BatchIterator(ex, opts);
    const k = 3 + Math.floor(rng() * 9);
    take(run, k);
    const saved = JSON.parse(JSON.stringify(run.position));
    const expected = take(run, 8).map(strip);
    const resumed = new BatchIterator(ex, opts);
    resumed.seek(saved);
    t.deepEqual(take(resumed, 8).map(strip), expected, JSON.stringify(opts));
    t.deepEqual(strip(resumed.batchAt(expected[0].position)), expected[0]);
  }
  const it = new BatchIterator(ex, { batchSize: 4, padId: 0 });
  it.seek({ epoch: 2, index: 17 });
  t.deepEqual(it.position, { epoch: 3, index: 0 });
  dataError(t, () => it.seek({ epoch: 0, index: 18 }), /position\.index is 18, but an epoch has 17 units/, 'E_ARG');
  dataError(t, () => it.seek({ epoch: -1, index: 0 }), /position\.epoch is -1/, 'E_ARG');
});

test('dropLast skips a short final batch; eval batches cover every example once, in order', (t) => {
  const ex = examples([2, 3, 4, 5, 6]);
  const it = new BatchIterator(ex, { batchSize: 2, padId: 0, shuffle: false, dropLast: true });
  t.is(it.batchesPerEpoch, 2);
  t.deepEqual(take(it, 3).map((b) => b.examples), [[0, 1], [2, 3], [0, 1]]);
  const evals = [...evalBatches(ex, { batchSize: 2, padId: 9 })];
  t.deepEqual(evals.map((b) => b.examples), [[0, 1], [2, 3], [4]]);
  t.deepEqual(rowsOf(evals[2]), [ex[4].inputIds]);
  dataError(t, () => new BatchIterator(ex, { batchSize: 6, padId: 0, dropLast: true }), /fewer than batchSize 6/);
  dataError(t, () => new BatchIterator([], { batchSize: 1, padId: 0 }), /no examples/);
  dataError(t, () => new BatchIterator(ex, { batchSize: 0, padId: 0 }), /batchSize is 0/, 'E_ARG');
});

// ---------- dataset ----------

test('loadDataset: mixed file, deterministic tail eval split, eval file, stats', (t) => {
  const dir = tmpDir();
  const lines = [
    JSON.stringify({ text: 'the first' }),
    JSON.stringify({ prompt: 'p', completion: 'c' }),
    JSON.stringify({ messages: [{ role: 'user', content: 'u' }, { role: 'assistant', content: 'a' }] }),
    JSON.stringify({ input_ids: [1, 2, 3] }),
    JSON.stringify({ text: 'x'.repeat(50) }),
    JSON.stringify({ prompt: 'y'.repeat(50), completion: 'z' }),
    JSON.stringify({ messages: [{ role: 'user', content: 'only a question' }] }),
  ];
  const f = writeFile(dir, 'train.jsonl', lines.join('\n') + '\n');
  const d = loadDataset(f, tok, { evalSplit: 0.25, maxLength: 32 });
  t.is(d.train.length, 5);
  t.deepEqual(d.eval.map((e) => e.source.line), [6, 7], 'ceil(0.25 * 7) = 2 rows from the tail');
  t.deepEqual(loadDataset(f, tok, { evalSplit: 0.25, maxLength: 32 }).eval, d.eval);
  t.is(d.stats.train.truncated, 1);
  t.is(d.stats.eval.truncated, 1);
  t.is(d.stats.eval.untrained, 2, 'a prompt cut before its completion, a chat without an answer');
  t.is(d.stats.train.tokens, d.train.reduce((s, e) => s + e.inputIds.length, 0));

  const g = writeFile(dir, 'eval.json', JSON.stringify([{ text: 'e1' }, { text: 'e2' }]));
  const withFile = loadDataset(f, tok, { evalFile: g });
  t.is(withFile.train.length, 7);
  t.deepEqual(withFile.eval.map((e) => e.inputIds), [tok.encode('e1').concat(tok.eosId!), tok.encode('e2').concat(tok.eosId!)]);
  dataError(t, () => loadDataset(f, tok, { evalFile: g, evalSplit: 0.1 }), /both given/, 'E_ARG');
  dataError(t, () => splitTail([1], 0.5), /0.5 of 1 rows leaves no training rows/, 'E_DATA');
  t.deepEqual(splitTail([1, 2, 3], 0.5), { head: [1], tail: [2, 3] });
  dataError(t, () => splitTail([1, 2], 1), /expected a fraction between 0 and 1/, 'E_ARG');
});
