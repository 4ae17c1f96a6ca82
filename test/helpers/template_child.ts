/**
 * Hostile chat templates in a model folder's tokenizer_config.json: each case renders one in a
 * fresh folder, directly (applyChatTemplate), through a training run's data step and through
 * train()'s worker. Run in a child because a template without limits can abort the whole process
 * (V8's fatal "invalid size" error) or never end (issue 16). Prints one JSON line per case:
 * {case, code, message, ms}. Usage: node template_child.js [case...]
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PeftkitError, train } from '../../src/index';
import { ChatMessage, loadTokenizer, writeByteTokenizer } from '../../src/data';
import { runTraining } from '../../src/train/run';
import { writeTinyModel } from './fuzz_model_cases';

export const HOSTILE_TEMPLATES: Record<string, string> = {
  hugeRange: '{% for i in range(1000000000) %}x{% endfor %}',
  nestedLoops: '{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}',
  nestedOutput: '{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}',
  doubling: "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
  growingList: '{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = ns.l + range(100000) %}{% endfor %}{{ ns.l | length }}',
};

const say = (o: object) => fs.writeSync(1, `${JSON.stringify(o)}\n`);

async function attempt(name: string, fn: () => unknown): Promise<void> {
  say({ case: name, start: true });
  const t0 = performance.now();
  try {
    await fn();
    say({ case: name, code: 'ok', ms: performance.now() - t0 });
  } catch (e) {
    say({ case: name, code: e instanceof PeftkitError ? e.code : `other: ${String(e)}`, message: (e as Error).message, ms: performance.now() - t0 });
  }
}

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-template-'));
  const messages: ChatMessage[] = [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }];
  for (const [name, template] of Object.entries(HOSTILE_TEMPLATES)) {
    if (only.length && !only.includes(name)) continue;
    const dir = path.join(root, name);
    writeByteTokenizer(dir, { chatTemplate: template });
    await attempt(`${name} applyChatTemplate`, () => loadTokenizer(dir).applyChatTemplate(messages));
  }
  if (!only.length || only.includes('train')) {
    // The data step of a run, in this thread and in train()'s worker.
    const model = path.join(root, 'model');
    writeTinyModel(model, { tokenizer: true });
    const cfgFile = path.join(model, 'tokenizer_config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, chat_template: HOSTILE_TEMPLATES.hugeRange }));
    const data = path.join(root, 'data.jsonl');
    fs.writeFileSync(data, `${JSON.stringify({ messages })}\n`);
    const o = { model, data, steps: 1, maxLength: 16 };
    await attempt('runTraining', () => runTraining({ ...o, out: path.join(root, 'out1') }));
    await attempt('train', () => train({ ...o, out: path.join(root, 'out2') }).result);
  }
  fs.rmSync(root, { recursive: true, force: true });
  say({ done: true });
}

if (require.main === module) void main();
