/**
 * The `peftkit` command: train, generate, merge. Option names follow PEFT / transformers /
 * MLX-LM. Exit code 0 on success, 1 with a one-line reason on error, 2 on bad usage.
 */
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import { PeftkitError } from '../errors';
import { loadModel, LoadOptions } from '../inference/model';
import { mergeAdapter } from '../peft/merge';
import { quantizeModel } from '../quant';
import { train } from '../train/train';
import type { TrainOptions } from '../train/options';
import { runDemo } from './demo';
import { Progress } from './progress';

const USAGE = `usage:
  peftkit train --model DIR --data FILE --out DIR [--eval-data FILE | --eval-split F]
      [--method lora|qlora|int8-lora|dora|ia3|ln|bitfit|diff|full] [--trainable REGEX] [--diff-density D] [--diff-prune-step N] [--quantize nf4|fp4|int8] [--int8-threshold T]
      [--r 8] [--alpha 16] [--dropout 0.05] [--targets q_proj,v_proj | all-linear] [--rslora]
      [--adapter DIR] [--steps N | --epochs N] [--batch-size 4] [--grad-accum 1] [--lr 2e-4]
      [--optim adamw|adamw8bit|paged_adamw|paged_adamw8bit] [--paged-dir DIR] [--weight-decay 0] [--schedule constant|linear|cosine] [--warmup-steps 0] [--max-grad-norm 1]
      [--max-length 2048] [--packing] [--no-mask-prompt] [--no-shuffle] [--seed 0] [--save-every N] [--save-total-limit N]
      [--eval-every N] [--resume DIR] [--activation-checkpointing] [--bf16] [--device cpu|cuda|auto]
  peftkit train                      (no model and no data: a one-minute demo on a tiny model)
  peftkit generate --model DIR [--adapter DIR] [--quantize nf4|fp4|int8] [--int8-threshold T] --prompt TEXT [--max-new-tokens 64] [--temperature 0.7]
      [--top-p 0.95] [--seed 0] [--chat]
  peftkit merge --model DIR --adapter DIR --out DIR [--dtype f32|bf16]
      (a bitsandbytes base is requantized in its own format unless --dtype asks for a dense folder)
  peftkit quantize --model DIR --out DIR --format nf4|fp4|int8 [--blocksize 64] [--no-double-quant]`;

class UsageError extends Error {}

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (!Number.isFinite(x)) throw new UsageError(`--${name}: expected a number, got '${v}'`);
  return x;
}

function required(name: string, v: string | undefined): string {
  if (!v) throw new UsageError(`--${name} is required`);
  return v;
}

async function cmdTrain(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args,
    strict: true,
    options: {
      model: { type: 'string' }, data: { type: 'string' }, out: { type: 'string' }, 'eval-data': { type: 'string' },
      'eval-split': { type: 'string' }, method: { type: 'string' }, r: { type: 'string' }, alpha: { type: 'string' },
      dropout: { type: 'string' }, targets: { type: 'string' }, rslora: { type: 'boolean' }, adapter: { type: 'string' },
      steps: { type: 'string' }, epochs: { type: 'string' }, 'batch-size': { type: 'string' }, 'grad-accum': { type: 'string' },
      lr: { type: 'string' }, 'weight-decay': { type: 'string' }, schedule: { type: 'string' }, 'warmup-steps': { type: 'string' },
      'max-grad-norm': { type: 'string' }, 'max-length': { type: 'string' }, packing: { type: 'boolean' },
      'no-mask-prompt': { type: 'boolean' }, 'no-shuffle': { type: 'boolean' }, seed: { type: 'string' },
      'save-every': { type: 'string' }, 'save-total-limit': { type: 'string' }, 'eval-every': { type: 'string' }, resume: { type: 'string' },
      'activation-checkpointing': { type: 'boolean' }, device: { type: 'string' }, bf16: { type: 'boolean' },
      optim: { type: 'string' }, 'paged-dir': { type: 'string' }, quantize: { type: 'string' },
      'int8-threshold': { type: 'string' }, trainable: { type: 'string' }, 'diff-density': { type: 'string' }, 'diff-prune-step': { type: 'string' },
    },
  });
  if (!v.model && !v.data) return runDemo(v.out);
  const targets = v.targets === undefined ? undefined : v.targets === 'all-linear' ? 'all-linear' : v.targets.split(',').map((s) => s.trim()).filter(Boolean);
  const options: TrainOptions = {
    model: required('model', v.model), data: required('data', v.data), out: required('out', v.out),
    evalData: v['eval-data'], evalSplit: num('eval-split', v['eval-split']), method: v.method as TrainOptions['method'],
    quantize: v.quantize as TrainOptions['quantize'], int8Threshold: num('int8-threshold', v['int8-threshold']),
    r: num('r', v.r), alpha: num('alpha', v.alpha), dropout: num('dropout', v.dropout), targets, rslora: v.rslora,
    adapter: v.adapter, steps: num('steps', v.steps), epochs: num('epochs', v.epochs), batchSize: num('batch-size', v['batch-size']),
    gradAccum: num('grad-accum', v['grad-accum']), lr: num('lr', v.lr), weightDecay: num('weight-decay', v['weight-decay']),
    schedule: v.schedule as TrainOptions['schedule'], warmupSteps: num('warmup-steps', v['warmup-steps']),
    maxGradNorm: num('max-grad-norm', v['max-grad-norm']), maxLength: num('max-length', v['max-length']), packing: v.packing,
    maskPrompt: v['no-mask-prompt'] ? false : undefined, shuffle: v['no-shuffle'] ? false : undefined, seed: num('seed', v.seed),
    saveEvery: num('save-every', v['save-every']), saveTotalLimit: num('save-total-limit', v['save-total-limit']), evalEvery: num('eval-every', v['eval-every']), resume: v.resume,
    activationCheckpointing: v['activation-checkpointing'], device: v.device as TrainOptions['device'], bf16: v.bf16,
    optim: v.optim as TrainOptions['optim'], pagedDir: v['paged-dir'], trainable: v.trainable,
    diffDensity: num('diff-density', v['diff-density']), diffPruneStep: num('diff-prune-step', v['diff-prune-step']),
  };
  const progress = new Progress();
  const ctrl = new AbortController();
  const onSigint = () => ctrl.abort();
  process.once('SIGINT', onSigint);
  const run = train({ ...options, signal: ctrl.signal });
  run.on('start', (e) => {
    progress.line(`training ${e.trainableParams.toLocaleString()} adapter parameters on ${e.device}: ${e.trainExamples} examples, ${e.totalSteps} steps${e.startStep ? ` (resuming at ${e.startStep})` : ''}`);
    progress.start(e.totalSteps, e.startStep);
  });
  run.on('step', (e) => progress.step(e));
  run.on('eval', (e) => progress.line(`eval at step ${e.step}: loss ${e.loss.toFixed(4)}, perplexity ${e.perplexity.toFixed(2)}`));
  run.on('checkpoint', (e) => progress.line(`checkpoint: ${e.dir}`));
  run.on('warning', (e) => progress.line(`warning: ${e.message}`));
  try {
    const r = await run;
    progress.stop();
    process.stdout.write(`adapter written to ${r.adapterDir}: ${r.steps} steps, final loss ${r.finalLoss.toFixed(4)}` +
      `${r.evalLoss !== null ? `, eval loss ${r.evalLoss.toFixed(4)}` : ''}, ${r.tokensPerS.toFixed(0)} tokens/s\n`);
    return 0;
  } finally {
    progress.stop();
    process.off('SIGINT', onSigint);
  }
}

async function cmdGenerate(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args, strict: true,
    options: {
      model: { type: 'string' }, adapter: { type: 'string' }, prompt: { type: 'string' }, 'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' }, 'top-p': { type: 'string' }, seed: { type: 'string' }, chat: { type: 'boolean' },
      device: { type: 'string' }, quantize: { type: 'string' }, 'int8-threshold': { type: 'string' },
    },
  });
  const model = loadModel(required('model', v.model), {
    device: v.device as 'cpu' | 'cuda' | 'auto' | undefined, quantize: v.quantize as LoadOptions['quantize'],
    int8Threshold: num('int8-threshold', v['int8-threshold']),
  });
  try {
    const g = model.generate(required('prompt', v.prompt), {
      adapter: v.adapter, maxNewTokens: num('max-new-tokens', v['max-new-tokens']), temperature: num('temperature', v.temperature),
      topP: num('top-p', v['top-p']), seed: num('seed', v.seed), chat: v.chat,
    });
    process.stdout.write(g.text + '\n');
    return 0;
  } finally {
    model.dispose();
  }
}

async function cmdMerge(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args, strict: true,
    options: { model: { type: 'string' }, adapter: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string' } },
  });
  const dtype = v.dtype;
  if (dtype !== undefined && dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype: expected f32 or bf16, got '${dtype}'`);
  const r = mergeAdapter({ model: required('model', v.model), adapter: required('adapter', v.adapter), out: required('out', v.out), dtype });
  for (const w of r.warnings) process.stderr.write(`peftkit: warning: ${w}\n`);
  const how = r.written === 'quantized' ? `requantized to the base's ${r.baseFormat}` : `${r.written}${r.baseFormat ? `, the ${r.baseFormat} base dequantized` : ''}`;
  process.stdout.write(`merged model written to ${path.resolve(r.out)} (${r.merged.length} weights merged, ${how})\n`);
  return 0;
}

async function cmdQuantize(args: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args, strict: true,
    options: {
      model: { type: 'string' }, out: { type: 'string' }, format: { type: 'string' }, blocksize: { type: 'string' },
      'no-double-quant': { type: 'boolean' },
    },
  });
  const format = required('format', v.format);
  if (!['nf4', 'fp4', 'int8'].includes(format)) throw new UsageError(`--format: expected nf4, fp4 or int8, got '${format}'`);
  const r = quantizeModel({
    model: required('model', v.model), out: required('out', v.out), format: format as 'nf4' | 'fp4' | 'int8',
    blocksize: num('blocksize', v.blocksize), doubleQuant: v['no-double-quant'] ? false : undefined,
  });
  process.stdout.write(`${r.quantized.length} Linear weights quantized to ${format}; ${(r.bytesBefore / 2 ** 20).toFixed(1)} MiB -> ${(r.bytesAfter / 2 ** 20).toFixed(1)} MiB in ${path.resolve(v.out!)}\n`);
  return 0;
}

/** The version in peftkit's package.json (two folders up from src/cli, three from dist/src/cli). */
function version(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'peftkit') return pkg.version ?? 'unknown';
    }
    if (path.dirname(dir) === dir) return 'unknown';
  }
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  // `peftkit train --help` and the like: the usage, not an unknown-option error.
  if (cmd && rest.some((a) => a === '--help' || a === '-h')) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  try {
    switch (cmd) {
      case '--version': case '-V': case 'version':
        process.stdout.write(`peftkit ${version()}\n`);
        return 0;
      case 'train': return await cmdTrain(rest);
      case 'generate': return await cmdGenerate(rest);
      case 'merge': return await cmdMerge(rest);
      case 'quantize': return await cmdQuantize(rest);
      case undefined: case '-h': case '--help': case 'help':
        process.stdout.write(USAGE + '\n');
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command '${cmd}'`);
    }
  } catch (e) {
    const usage = e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`peftkit: ${(e as Error).message}\n${usage ? 'run `peftkit --help` for usage\n' : ''}`);
    return usage ? 2 : 1;
  }
}
