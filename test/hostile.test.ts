/**
 * Hostile and careless inputs (issue 16): what used to crash the process, hang it or lose the
 * error's identity, each pinned down. Anything that could take the process down runs in a child.
 */
import test from 'ava';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Template } from '@huggingface/jinja';
import { PeftkitError, train } from '../src';
import { BYTE_CHAT_TEMPLATE, DataRow, DEFAULT_BYTE_MERGES, encodeRow, loadTokenizer, readRows, writeByteTokenizer } from '../src/data';
import { MAX_ROW_CHARS } from '../src/data/rows';
import { renderTemplate, TEMPLATE_LIMITS } from '../src/data/chat_template';
import { regexBacktrackingRisk } from '../src/data/regex_safety';
import { LOCK_FILE } from '../src/io/lock';
import { runTraining } from '../src/train/run';
import { makeRng } from './helpers/check';
import { writeTinyModel } from './helpers/fuzz_model_cases';
import { spawnChild } from './helpers/spawn';

const HELPERS = path.join(__dirname, 'helpers');

test('tensors whose element count overflows are refused (E_SHAPE) however they are made; no op ever sees one', (t) => {
  const r = spawnSync(process.execPath, [path.join(HELPERS, 'huge_shape_child.js')], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.status, 0, `child exited with ${r.status} (signal ${r.signal}); its last lines:\n${r.stdout.split('\n').slice(-4).join('\n')}\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { case?: string; code?: string; done?: boolean });
  t.true(lines.at(-1)?.done, 'the child did not finish');
  const cases = lines.filter((l) => l.case);
  t.is(cases.length, 5 * (6 + 4 * 5));
  for (const c of cases) {
    // Each op's call must fail before any kernel runs, on the overflowing tensor's creation.
    t.is(c.code, 'E_SHAPE', c.case);
  }
});

test('a FIFO (or anything not a regular file) in place of a data, eval or model file is refused naming it, never a hang', (t) => {
  const r = spawnSync(process.execPath, [path.join(HELPERS, 'fifo_child.js')], { encoding: 'utf8', timeout: 90_000, killSignal: 'SIGKILL' });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { case?: string; start?: boolean; code?: string; message?: string; done?: boolean });
  const hung = lines.at(-1)?.start ? lines.at(-1)?.case : undefined;
  t.is(r.status, 0, `child exited with ${r.status} (signal ${r.signal})${hung ? `, hanging in case ${hung}` : ''}\n${r.stderr}`);
  t.true(lines.at(-1)?.done, 'the child did not finish');
  const results = lines.filter((l) => l.case && !l.start);
  t.is(results.length, 13);
  for (const c of results) {
    const file = c.case === 'readRows' ? 'data.jsonl' : c.case!;
    t.is(c.code, 'E_IO', `${c.case}: ${c.message}`);
    t.regex(c.message ?? '', new RegExp(`${file.replace(/\./g, '\\.')}: is a named pipe \\(FIFO\\), not a regular file`), c.case);
  }
});

test('chat templates are bounded: a huge range, nested loops or runaway output fail with E_DATA naming the file, in time', (t) => {
  const r = spawnSync(process.execPath, [path.join(HELPERS, 'template_child.js')], { encoding: 'utf8', timeout: 240_000, killSignal: 'SIGKILL' });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { case?: string; start?: boolean; code?: string; message?: string; ms?: number; done?: boolean });
  const stuck = lines.at(-1)?.start ? lines.at(-1)?.case : undefined;
  t.is(r.status, 0, `child exited with ${r.status} (signal ${r.signal})${stuck ? ` in case ${stuck}` : ''}\n${r.stderr.slice(-2000)}`);
  t.true(lines.at(-1)?.done, 'the child did not finish');
  const results = lines.filter((l) => l.case && !l.start);
  t.is(results.length, 7);
  for (const c of results) {
    t.is(c.code, 'E_DATA', `${c.case}: ${c.message}`);
    t.regex(c.message ?? '', /tokenizer_config\.json/, c.case);
    // The time bound is TEMPLATE_LIMITS.timeMs; the margin is for a loaded machine (and a model load).
    t.true(c.ms! < TEMPLATE_LIMITS.timeMs + 30_000, `${c.case} took ${Math.round(c.ms!)} ms`);
  }
});

test('bounded chat templates render exactly as @huggingface/jinja does, big conversations included', (t) => {
  const templates = [
    BYTE_CHAT_TEMPLATE,
    // Llama 3.1-like: namespace, slicing, strftime_now, tojson, loop variables.
    "{{ bos_token }}{% set date_string = strftime_now('%d %b %Y') %}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}" +
      "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}\n{% if tools is not none %}{{ tools | tojson(indent=4) }}{% endif %}{{ system_message }}<|eot_id|>" +
      "{% set ns = namespace(n=0) %}{% for message in messages %}{% set ns.n = ns.n + 1 %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}" +
      '{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}[{{ ns.n }} turns, {{ range(3) | join(",") }}, {{ range(10, 0, -3) | list | join(",") }}]',
    // Mistral-like: alternation check with raise_exception, loop.index0 arithmetic.
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
  ];
  const vars = { bos_token: '<s>', eos_token: '</s>' };
  const conversations = [
    [{ role: 'system', content: '  Be brief.  ' }, { role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }],
    Array.from({ length: 2000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `turn ${i} `.repeat(20) })),
    [{ role: 'user', content: 'x'.repeat(4 << 20) }, { role: 'assistant', content: 'é'.repeat(1 << 20) }],
  ];
  for (const src of templates) {
    const tpl = new Template(src);
    for (const messages of conversations) {
      for (const [addGen, tools] of [[false, null], [true, [{ type: 'function', function: { name: 'f', parameters: {} } }]]] as const) {
        const items = { ...vars, messages, add_generation_prompt: addGen, tools, documents: null };
        let want: string;
        try {
          want = tpl.render(items);
        } catch (e) {
          t.throws(() => renderTemplate(tpl, items, 'tokenizer_config.json'), { message: (e as Error).message });
          continue;
        }
        t.is(renderTemplate(tpl, items, 'tokenizer_config.json'), want);
      }
    }
  }
});

/** The {"Regex": ...} patterns of tokenizers in use (tokenizer.json pre_tokenizer / normalizer). */
const REAL_TOKENIZER_REGEXES = [
  // cl100k / Llama 3
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // Qwen2
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // o200k (GPT-4o, Phi-4)
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // Mistral Tekken
  '[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+',
  // GPT-2
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
  // DeepSeek V3
  '\\p{N}{1,3}', '[一-龥぀-ゟ゠-ヿ]+',
  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  // BLOOM (an Oniguruma nested class)
  ' ?[^(\\s|[.,!?…。，、।۔،])]+',
  // normalizers
  ' {2,}', '\\s+',
];

test('token ids past any real vocabulary are refused at load, fast (2^31 took 106 s in the tokenizer library)', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ids-'));
  writeByteTokenizer(dir);
  const file = path.join(dir, 'tokenizer.json');
  const good = JSON.parse(fs.readFileSync(file, 'utf8')) as { added_tokens: Array<{ id: unknown }>; model: { vocab: Record<string, unknown> } };
  const token = Object.keys(good.model.vocab)[3];
  for (const [damage, where] of [
    [(j: typeof good) => { j.added_tokens[0].id = 2 ** 31; }, /added_tokens\.0\.id is 2147483648, expected a token id: an integer from 0 to 16777215/],
    [(j: typeof good) => { j.added_tokens[0].id = -1; }, /added_tokens\.0\.id is -1/],
    [(j: typeof good) => { j.added_tokens[0].id = '7'; }, /added_tokens\.0\.id is "7"/],
    [(j: typeof good) => { j.model.vocab[token] = 2 ** 28; }, /model\.vocab\["[^"]*"\] is 268435456/],
  ] as const) {
    const j = JSON.parse(JSON.stringify(good)) as typeof good;
    damage(j);
    fs.writeFileSync(file, JSON.stringify(j));
    const t0 = Date.now();
    const e = t.throws(() => loadTokenizer(dir), { instanceOf: PeftkitError });
    t.is(e?.code, 'E_CONFIG');
    t.regex(e?.message ?? '', /tokenizer\.json: /);
    t.regex(e?.message ?? '', where);
    t.true(Date.now() - t0 < 2000, `refused in ${Date.now() - t0} ms`);
  }
  fs.writeFileSync(file, JSON.stringify(good));
  t.truthy(loadTokenizer(dir).encode('ok'));
});

test('tokenizer.json regexes that backtrack catastrophically are refused at load; those of real tokenizers are not', (t) => {
  for (const r of REAL_TOKENIZER_REGEXES) t.is(regexBacktrackingRisk(r), null, r);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-regex-'));
  writeByteTokenizer(dir);
  const file = path.join(dir, 'tokenizer.json');
  const good = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false };
  const withSplit = (regex: string) => ({ ...good, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }, byteLevel] } });
  // Accepted, and works: a real pattern.
  fs.writeFileSync(file, JSON.stringify(withSplit(REAL_TOKENIZER_REGEXES[0])));
  t.deepEqual(loadTokenizer(dir).decode(loadTokenizer(dir).encode("it's 2024!", { addSpecialTokens: false })), "it's 2024!");
  for (const [regex, why] of [
    ['(a+)+b', /repeats a part that can itself match in several ways/], // 28 characters took seconds
    ['(a|a)*b', /repeats a part/],
    ['(?:\\s?\\w)+x', /repeats a part/],
    ['\\s*\\s*\\s*x', /3 unbounded repetitions along one path/],
    ['a?a?a?a?a?a?a?a?a?a?a?a?a?aaaaaaaaaaaaa', /more than 4096 combinations/],
  ] as const) {
    fs.writeFileSync(file, JSON.stringify(withSplit(regex)));
    const e = t.throws(() => loadTokenizer(dir), { instanceOf: PeftkitError });
    t.is(e?.code, 'E_CONFIG');
    t.regex(e?.message ?? '', new RegExp(`tokenizer\\.json: pre_tokenizer\\.pretokenizers\\[0\\]\\.pattern\\.Regex .* is refused: `), regex);
    t.regex(e?.message ?? '', why, regex);
  }
  // A normalizer's pattern too.
  fs.writeFileSync(file, JSON.stringify({ ...good, normalizer: { type: 'Replace', pattern: { Regex: '(x+x+)+y' }, content: 'z' } }));
  t.throws(() => loadTokenizer(dir), { message: /normalizer\.pattern\.Regex "\(x\+x\+\)\+y" is refused/ });
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Long rows of every kind, with text that stresses a cut: long tokens, runs, surrogate pairs, newlines. */
function longRows(seed: number, file: string): DataRow[] {
  const rng = makeRng(undefined, seed);
  const words = ['the', ' the', 'aaaaaaaaaaaaaaaa', '        ', 'x', '😀', '\n', ' in', 'er', '12345', 'é', '<|im_end|>', ' a'];
  const text = (n: number) => {
    let s = '';
    while (s.length < n) s += words[rng.int(0, words.length)].repeat(rng.int(1, 40));
    return s;
  };
  const source = (line: number) => ({ file, line });
  const m = (role: 'user' | 'assistant' | 'system', content: string) => ({ role, content });
  return [
    { kind: 'text', text: text(30_000), source: source(1) },
    { kind: 'text', text: 'a'.repeat(50_000), source: source(2) }, // one long run: few, long tokens
    { kind: 'text', text: ' '.repeat(9000) + '😀'.repeat(9000), source: source(3) },
    { kind: 'prompt_completion', prompt: text(20_000), completion: text(20_000), source: source(4) },
    { kind: 'prompt_completion', prompt: 'Q: ', completion: text(40_000), source: source(5) },
    { kind: 'messages', messages: [m('system', text(3000)), m('user', text(9000)), m('assistant', text(30_000)), m('user', 'more'), m('assistant', text(9000))], tools: null, source: source(6) },
    { kind: 'chat_prompt_completion', prompt: [m('user', text(100))], completion: [m('assistant', text(60_000))], tools: null, source: source(7) },
  ];
}

test('a long row is cut before encoding, and gives exactly the tokens of the whole encoding cut to maxLength', (t) => {
  const seed = makeRng(t).seed;
  const rows = longRows(seed, 'rows.jsonl');
  const merges: Array<[string, string]> = [...DEFAULT_BYTE_MERGES.map(([a, b]): [string, string] => [a, b])];
  for (const [a, b] of [['a', 'a'], ['aa', 'aa'], ['aaaa', 'aaaa'], ['aaaaaaaa', 'aaaaaaaa'], ['Ġ', 'Ġ'], ['ĠĠ', 'ĠĠ'], ['ĠĠĠĠ', 'ĠĠĠĠ'], ['Ġt', 'h'], ['Ġth', 'e']]) {
    if (!merges.some(([x, y]) => x === a && y === b)) merges.push([a, b]);
  }
  for (const useRegex of [true, false]) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cut-'));
    writeByteTokenizer(dir, { merges });
    if (!useRegex) {
      // No pre-tokenizer split: BPE sees the whole text as one word, where a cut could reach furthest.
      const file = path.join(dir, 'tokenizer.json');
      const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { pre_tokenizer: { use_regex: boolean } };
      j.pre_tokenizer.use_regex = false;
      fs.writeFileSync(file, JSON.stringify(j));
    }
    const tok = loadTokenizer(dir);
    for (const row of rows) {
      for (const flags of [{}, { maskPrompt: false, assistantOnly: false }]) {
        const whole = encodeRow(row, tok, flags);
        for (const maxLength of [1, 7, 64, 500, 1500, 3000]) {
          const got = encodeRow(row, tok, { ...flags, maxLength });
          const what = `row ${row.source.line}, maxLength ${maxLength}, regex ${useRegex}, ${JSON.stringify(flags)}`;
          t.deepEqual(got.inputIds, whole.inputIds.slice(0, maxLength), what);
          t.deepEqual(got.labels, whole.labels.slice(0, maxLength), what);
          t.is(got.truncated, whole.inputIds.length > maxLength, what);
        }
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a 16 MB row with maxLength 64 is encoded in a moment; a row over 64 Mi characters is refused naming file:line', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cut-'));
  writeByteTokenizer(dir);
  const tok = loadTokenizer(dir);
  const t0 = performance.now();
  const ex = encodeRow({ kind: 'text', text: 'the cat sat. '.repeat(16 << 20 >> 4) + 'x'.repeat(1 << 20), source: { file: 'big.jsonl', line: 1 } }, tok, { maxLength: 64 });
  const ms = performance.now() - t0;
  t.is(ex.inputIds.length, 64);
  t.true(ex.truncated);
  t.true(ms < 5000, `${ms} ms`); // the whole row took minutes to encode
  const file = path.join(dir, 'data.jsonl');
  fs.writeFileSync(file, `{"text": "short"}\n{"text": "${'y'.repeat(MAX_ROW_CHARS)}"}\n`);
  const e = t.throws(() => readRows(file), { instanceOf: PeftkitError });
  t.is(e?.code, 'E_DATA');
  t.regex(e?.message ?? '', /data\.jsonl:2: the row is 67108876 characters long, over the limit of 67108864 \(64 Mi\) per row/);
  fs.writeFileSync(file, `[{"text": "short"},\n {"text": "${'y'.repeat(MAX_ROW_CHARS)}"}]`);
  t.throws(() => readRows(file), { message: /data\.jsonl:2: the row is 67108876 characters long/ });
  fs.rmSync(dir, { recursive: true, force: true });
});

test('invalid UTF-8 in a data file is read with U+FFFD and a warning naming the file and lines, through a run\'s warning event', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-utf8-'));
  const model = path.join(dir, 'model');
  writeTinyModel(model, { tokenizer: true });
  const data = path.join(dir, 'data.jsonl');
  const bad = Buffer.from([0xff, 0xc3, 0x28]); // a byte that never starts UTF-8; a truncated sequence
  fs.writeFileSync(data, Buffer.concat([
    Buffer.from('{"text": "fine line"}\n{"text": "bad '), bad, Buffer.from(' here"}\n{"text": "é ok"}\n{"text": "'), Buffer.from([0xe2, 0x82]), Buffer.from('"}\n'),
  ]));
  const warnings: string[] = [];
  const rows = readRows(data, warnings);
  t.is((rows[1] as { text: string }).text, 'bad \ufffd\ufffd( here');
  t.is(warnings.length, 1);
  t.regex(warnings[0], /data\.jsonl: 2 lines hold invalid UTF-8 \(read with U\+FFFD in place of the bad bytes\): .*data\.jsonl:2, .*data\.jsonl:4$/);
  const evalFile = path.join(dir, 'eval.jsonl');
  fs.writeFileSync(evalFile, Buffer.concat([Buffer.from('{"text": "x'), bad, Buffer.from('"}\n')]));
  const events: string[] = [];
  runTraining({ model, data, evalData: evalFile, out: path.join(dir, 'out'), steps: 1, maxLength: 16 }, { onEvent: (e) => e.type === 'warning' && events.push(e.message) });
  t.is(events.filter((m) => /invalid UTF-8/.test(m)).length, 2, events.join('\n'));
  t.true(events.some((m) => /eval\.jsonl: 1 line holds invalid UTF-8 .*eval\.jsonl:1$/.test(m)), events.join('\n'));
  // Valid UTF-8, a BOM included: no warning.
  fs.writeFileSync(data, '\ufeff{"text": "é 😀 ok"}\n');
  const none: string[] = [];
  readRows(data, none);
  t.deepEqual(none, []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('disk errors keep their identity: E_IO with errno, path and what to do; a full disk leaves no torn log line', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-disk-'));
  const model = path.join(dir, 'model');
  writeTinyModel(model, { tokenizer: true });
  const data = path.join(dir, 'data.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i} of some text` })).join('\n'));
  const run = (which: string) => {
    const out = path.join(dir, which, 'out');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const r = spawnSync(process.execPath, [path.join(HELPERS, 'disk_error_child.js'), which, model, data, out], { encoding: 'utf8', timeout: 120_000 });
    t.is(r.status, 0, r.stderr);
    return { out, ...(JSON.parse(r.stdout) as { code: string; errno?: string; path?: string; syscall?: string; message: string; log: string[] | null }) };
  };

  const full = run('enospc-log');
  t.like(full, { code: 'E_IO', errno: 'ENOSPC', syscall: 'write', path: path.join(full.out, 'train_log.jsonl') });
  t.regex(full.message, /train_log\.jsonl: write failed \(ENOSPC: no space left on device\): the disk is full: free some space .* resume from the last checkpoint/);
  t.is(full.log?.at(-1), '', 'the log ends with a complete line');
  for (const line of full.log!.filter(Boolean)) t.notThrows(() => JSON.parse(line), line);
  t.is(full.log!.filter(Boolean).length, 2);

  const ckpt = run('enospc-checkpoint');
  t.like(ckpt, { code: 'E_IO', errno: 'ENOSPC', path: path.join(ckpt.out, 'checkpoints', 'step-2', 'optimizer.safetensors') });
  t.false(fs.readdirSync(path.join(ckpt.out, 'checkpoints')).some((n) => n.includes('tmp')), 'no temporary folder left');

  const ro = run('erofs'); // Node's recursive mkdir says ENOENT on a read-only disk
  t.like(ro, { code: 'E_IO', errno: 'EROFS', syscall: 'mkdir', path: path.join(dir, 'erofs', 'ro', 'new') });
  t.regex(ro.message, /read-only file system\): the file system is read-only: choose a folder on a writable disk/);

  const denied = run('eacces');
  t.like(denied, { code: 'E_IO', errno: 'EACCES', syscall: 'open', path: path.join(denied.out, 'checkpoints', 'step-2', 'adapter_model.safetensors') });
  t.regex(denied.message, /permission denied: choose a folder you can write to/);

  // A real one, through train()'s worker: the output folder under a regular file.
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, 'x');
  const e = await t.throwsAsync(train({ model, data, out: path.join(file, 'out'), steps: 1, maxLength: 16 }).result, { instanceOf: PeftkitError });
  t.like(e, { code: 'E_IO', errno: 'ENOTDIR', path: path.join(file, 'out') });
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a training run locks its output folder: a second run into it is refused (E_BUSY) and the first finishes intact; a dead run\'s lock is taken over', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lock-'));
  const model = path.join(dir, 'model');
  writeTinyModel(model, { tokenizer: true });
  const data = path.join(dir, 'data.jsonl');
  fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i} of some text` })).join('\n'));
  const out = path.join(dir, 'out');
  const marker = path.join(dir, 'holding');
  const go = path.join(dir, 'go');
  const { child: first } = await spawnChild(process.execPath, [path.join(HELPERS, 'lock_child.js'), model, data, out, marker, go], { stdio: ['ignore', 'pipe', 'inherit'] });
  let firstOut = '';
  first.stdout!.on('data', (b: Buffer) => (firstOut += b.toString()));
  const firstDone = new Promise<number | null>((resolve) => first.on('exit', (code) => resolve(code)));
  try {
    // Wait (without a fixed delay: the child's start-up time varies with the machine's load) for
    // the first run to hold the folder, with a checkpoint's worth of work under way.
    for (const until = Date.now() + 120_000; !fs.existsSync(marker);) {
      if (Date.now() > until || first.exitCode !== null) t.fail(`the first run did not reach its first step: ${firstOut}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const lock = JSON.parse(fs.readFileSync(path.join(out, LOCK_FILE), 'utf8')) as { pid: number };
    t.is(lock.pid, first.pid!);
    const second = () => runTraining({ model, data, out, steps: 2, maxLength: 16 });
    const e = t.throws(second, { instanceOf: PeftkitError });
    t.is(e?.code, 'E_BUSY');
    t.regex(e?.message ?? '', new RegExp(`out: .*out is in use by another training run \\(pid ${first.pid} on this host, started .*\\): wait for it to finish, stop it, or choose another folder; if no such run exists, delete .*\\.peftkit\\.lock`));
    // train() (a worker thread) is refused the same way.
    await t.throwsAsync(train({ model, data, out, steps: 2, maxLength: 16 }).result, { message: /is in use by another training run/ });
    fs.writeFileSync(go, '');
    t.is(await firstDone, 0);
    t.like(JSON.parse(firstOut), { ok: true, steps: 4 });
    t.true(fs.existsSync(path.join(out, 'adapter_model.safetensors')));
    t.false(fs.existsSync(path.join(out, LOCK_FILE)), 'released at the end');
  } finally {
    fs.writeFileSync(go, '');
    first.kill('SIGKILL');
  }

  // A lock left by a process that is gone (killed mid-run) is stale: the next run takes it over.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  fs.writeFileSync(path.join(out, LOCK_FILE), JSON.stringify({ pid: Number(dead.stdout), host: os.hostname(), thread: 0, startTime: null, started: '2020-01-01T00:00:00.000Z', token: 'x' }));
  // (The folder holds the first run's checkpoints: overwrite says this run replaces them.)
  t.like(runTraining({ model, data, out, steps: 1, maxLength: 16, overwrite: true }), { steps: 1 });
  t.false(fs.existsSync(path.join(out, LOCK_FILE)));
  // A live one (this process, as another run would) is respected; so is one from another host.
  for (const [pid, host, re] of [[process.pid, os.hostname(), /on this host/], [1, 'elsewhere', /on host elsewhere.*cannot be checked from here/]] as const) {
    fs.writeFileSync(path.join(out, LOCK_FILE), JSON.stringify({ pid, host, thread: 99, startTime: null, started: 'now', token: 'y' }));
    t.throws(() => runTraining({ model, data, out, steps: 1, maxLength: 16 }), { code: 'E_BUSY', message: re });
  }
  fs.rmSync(dir, { recursive: true, force: true });
});
