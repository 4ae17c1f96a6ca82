/**
 * The `peftkit` command: train, generate, merge, quantize, demo. Option names follow PEFT /
 * transformers / MLX-LM; every flag is declared once in flags.ts. Exit code 0 on success, 1 with
 * a one-line reason on error, 2 on bad usage.
 *
 * The engine (the native addon) is loaded only when a command runs, so `--help`, `--version` and
 * option errors work without it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import type { EstimateOptions } from '../train/estimate';
import type { TrainOptions } from '../train/options';
import { COMMANDS, Command, cliWording, findCommand, flagOfField, renderHelp, renderMainHelp, TRAIN_FLAGS } from './flags';
import { FlagValue, missingRequired, ParsedFlags, parseFlags, toOptions, UsageError } from './parse';

/** The terminal's width for help text (COLUMNS, else the terminal's, else 80). */
function columns(): number {
  const env = Number(process.env.COLUMNS);
  if (Number.isInteger(env) && env > 0) return env;
  return process.stdout.isTTY && process.stdout.columns ? process.stdout.columns : 80;
}

/** The API defaults, shown in help (resolving options loads no addon). */
function trainDefaults(): Record<string, unknown> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { resolveTrainOptions } = require('../train/options') as typeof import('../train/options');
  return resolveTrainOptions({ model: 'm', data: 'd', out: 'o' }) as unknown as Record<string, unknown>;
}

/**
 * A model folder that is not there: peftkit reads local folders only, so a Hugging Face hub id
 * (org/name) gets the command that downloads it.
 */
function checkModelDir(flag: string, dir: string): void {
  if (fs.existsSync(dir)) return;
  const hub = /^[\w.-]+\/[\w.-]+$/.test(dir) && !dir.startsWith('.');
  throw new PeftkitError('E_MISSING', hub
    ? `${flag} ${dir}: no such folder. peftkit reads local Hugging Face model folders (config.json, safetensors, tokenizer.json), it does not download; ` +
      `get this one with \`huggingface-cli download ${dir} --local-dir ${dir.split('/')[1]}\` (pip install huggingface_hub) or \`git clone https://huggingface.co/${dir}\`, then pass ${flag} ./${dir.split('/')[1]}`
    : `${flag} ${dir}: no such folder (expected a Hugging Face model folder with config.json and safetensors)`);
}

const TARGETS = (v: FlagValue) => (Array.isArray(v) && v.length === 1 && v[0] === 'all-linear' ? 'all-linear' : v);

function trainOptionsFrom(cmd: Command, p: ParsedFlags): TrainOptions {
  return toOptions(cmd, p, {
    targets: TARGETS,
    betas: (v) => {
      if (!Array.isArray(v) || v.length !== 2) throw new UsageError(`--betas: expected two numbers (0.9,0.999), got '${String(v)}'`);
      return v;
    },
  }) as unknown as TrainOptions;
}

/**
 * Train's options from its flags, filled from a resume's checkpoint and checked as train() checks
 * them, with the API's field names reworded as flags; a wrong value is a usage error.
 */
async function checkedTrainOptions(cmd: Command, p: ParsedFlags, options: TrainOptions): Promise<TrainOptions> {
  const namer = (field: string) => flagOfField(cmd.flags, field);
  const { resolveWithCheckpoint, withCheckpointOptions } = await import('../train/resume');
  let filled: TrainOptions = options;
  try {
    // A resume takes what it is not given from the checkpoint: --resume DIR alone continues the run.
    const ck = withCheckpointOptions(options);
    if (ck) filled = ck.options;
  } catch (e) {
    if (e instanceof PeftkitError) throw new PeftkitError(e.code, cliWording(cmd.flags, e.message));
    throw e;
  }
  const missing = missingRequired(cmd, p, filled as unknown as Record<string, unknown>);
  if (missing.length) throw new UsageError(`${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} required`);
  try {
    resolveWithCheckpoint(options, namer);
  } catch (e) {
    throw cliError(cmd, e);
  }
  checkModelDir('--model', filled.model);
  return filled;
}

/** An error from the engine in the CLI's words: a refused option is bad usage. */
function cliError(cmd: Command, e: unknown): unknown {
  if (e instanceof PeftkitError && (e.code === 'E_ARG' || e.code === 'E_UNSUPPORTED')) return new UsageError(cliWording(cmd.flags, e.message));
  if (e instanceof PeftkitError) return new PeftkitError(e.code, cliWording(cmd.flags, e.message));
  return e;
}

async function cmdTrain(cmd: Command, args: string[]): Promise<number> {
  if (args.length === 0) return (await import('./demo')).runDemo({});
  const p = parseFlags(cmd, args);
  const nproc = p.values.get('nproc-per-node');
  if (typeof nproc === 'number' && nproc > 1) {
    // The ranks it starts see the flag again (a --config file keeps it): they are the run's ranks, not launchers.
    if (process.env.RANK === undefined) {
      const { launchLocal, rankVisibleDevices } = await import('./launch');
      // One GPU a rank, found before any rank starts (a refusal is bad usage).
      let gpus: string[] | null = null;
      try {
        if (p.values.get('device') === 'cuda') gpus = Array.from({ length: nproc }, (_, rank) => rankVisibleDevices(rank, nproc));
      } catch (e) {
        throw cliError(cmd, e);
      }
      return launchLocal(nproc, args, gpus);
    }
    if (process.env.WORLD_SIZE !== String(nproc)) {
      throw new UsageError(`--nproc-per-node ${nproc}: this process is already rank ${process.env.RANK} of a launched run of WORLD_SIZE ${process.env.WORLD_SIZE ?? '(unset)'}; give --nproc-per-node to the launching command only`);
    }
  }
  const options = trainOptionsFrom(cmd, p);
  if (options.model === undefined && options.data === undefined && options.resume === undefined) {
    throw new UsageError('--model, --data and --out are required (`peftkit train` with no arguments at all runs the demo; `peftkit demo --steps N` a shorter one)');
  }
  await checkedTrainOptions(cmd, p, options);

  const { train } = await import('../train/train');
  const { Progress } = await import('./progress');
  const progress = new Progress();
  const ctrl = new AbortController();
  const onSigint = () => {
    progress.line('stopping after this step (a checkpoint is written first); Ctrl-C again to quit at once');
    process.off('SIGINT', onSigint);
    ctrl.abort();
  };
  process.on('SIGINT', onSigint);
  const run = train({ ...options, signal: ctrl.signal });
  run.on('start', (e) => {
    progress.line(`training ${e.trainableParams.toLocaleString()} adapter parameters on ${e.device} (${e.deviceReason.replace(/^device '(\w+)'/, '--device $1')}): ${e.trainExamples} examples, ${e.totalSteps} steps${e.startStep ? ` (resuming at ${e.startStep})` : ''}`);
    progress.start(e.totalSteps, e.startStep);
  });
  run.on('step', (e) => progress.step(e));
  run.on('eval', (e) => progress.line(`eval at step ${e.step}: loss ${e.loss.toFixed(4)}, perplexity ${e.perplexity.toFixed(2)}`));
  run.on('checkpoint', (e) => progress.line(`checkpoint: ${e.dir}`));
  run.on('warning', (e) => progress.line(`warning: ${cliWording(TRAIN_FLAGS, e.message)}`));
  try {
    const r = await run;
    progress.stop();
    process.stdout.write(`adapter written to ${r.adapterDir}: ${r.steps} steps, final loss ${r.finalLoss.toFixed(4)}` +
      `${r.evalLoss !== null ? `, eval loss ${r.evalLoss.toFixed(4)}` : ''}, ${r.tokensPerS.toFixed(0)} tokens/s\n`);
    return 0;
  } catch (e) {
    progress.stop();
    if (e instanceof PeftkitError) {
      const msg = cliWording(TRAIN_FLAGS, e.message);
      if (e.code === 'E_ABORTED') throw new PeftkitError(e.code, msg.replace(/resume with resume: '([^']*)'/, 'continue with `peftkit train --resume $1`'));
      // An option the run refused once it saw the data or the checkpoint (a resume conflict...): bad usage too.
      if (e.code === 'E_ARG') throw new UsageError(msg);
      throw new PeftkitError(e.code, msg);
    }
    throw e;
  } finally {
    process.off('SIGINT', onSigint);
  }
}

async function cmdEstimate(cmd: Command, args: string[]): Promise<number> {
  const p = parseFlags(cmd, args);
  const options = trainOptionsFrom(cmd, p) as unknown as EstimateOptions;
  if (options.data === undefined && options.seqLength === undefined && options.resume === undefined) throw new UsageError('--data or --seq-length is required (the rows\' length sizes the activations)');
  // Neither an output folder nor (with --seq-length) data is read: placeholders pass train's checks.
  const placeholder = { out: options.out ?? 'estimate-out', data: options.data ?? (options.seqLength !== undefined || options.resume !== undefined ? 'estimate-data' : undefined) };
  await checkedTrainOptions(cmd, p, { ...options, ...placeholder } as TrainOptions);
  const { estimateMemory } = await import('../train/estimate');
  const { GiB } = await import('../train/memory');
  let e;
  try {
    e = estimateMemory(options);
  } catch (err) {
    throw cliError(cmd, err);
  }
  const rows = e.parts.map((x) => [x.part, GiB(x.bytes), cliWording(cmd.flags, x.what)]);
  const w0 = Math.max(...rows.map((r) => r[0].length)), w1 = Math.max(...rows.map((r) => r[1].length));
  const out = [`memory a training run needs: ${e.trainableParams.toLocaleString('en-US')} trainable parameters, batch ${e.batchSize} × ${e.seqLength} tokens`];
  for (const [part, bytes, what] of rows) out.push(`  ${part.padEnd(w0)}  ${bytes.padStart(w1)}  ${what}`);
  out.push(`  ${'total'.padEnd(w0)}  ${GiB(e.total).padStart(w1)}  at the peak${e.required < e.total ? ` (${GiB(e.required)} of it must stay in memory; paged states may be paged out)` : ''}`);
  out.push(`${GiB(e.available.bytes)} available (${e.available.source}): ${e.fits ? 'it fits' : 'it does NOT fit: `peftkit train` refuses it (--no-memory-check starts it anyway)'}`);
  process.stdout.write(out.join('\n') + '\n');
  return 0;
}

/** Checks the parsed flags against the command's required ones. */
function requireAll(cmd: Command, p: ParsedFlags): void {
  const missing = missingRequired(cmd, p);
  if (missing.length) throw new UsageError(`${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} required`);
}

async function cmdGenerate(cmd: Command, args: string[]): Promise<number> {
  const p = parseFlags(cmd, args);
  requireAll(cmd, p);
  const o = toOptions(cmd, p) as Record<string, never>;
  checkModelDir('--model', o.model);
  const { loadModelSync } = await import('../inference/model');
  const model = loadModelSync(o.model, { device: o.device, quantize: o.quantize, int8Threshold: o.int8Threshold });
  try {
    const g = model.generate(o.prompt, {
      adapter: o.adapter, maxNewTokens: o.maxNewTokens, temperature: o.temperature, topP: o.topP, seed: o.seed, chat: o.chat,
    });
    process.stdout.write(g.text + '\n');
    return 0;
  } finally {
    model.dispose();
  }
}

async function cmdMerge(cmd: Command, args: string[]): Promise<number> {
  const p = parseFlags(cmd, args);
  requireAll(cmd, p);
  const o = toOptions(cmd, p) as Record<string, never>;
  checkModelDir('--model', o.model);
  const { mergeAdapterSync } = await import('../peft/merge');
  const r = mergeAdapterSync({ model: o.model, adapter: o.adapter, out: o.out, dtype: o.dtype });
  for (const w of r.warnings) process.stderr.write(`peftkit: warning: ${w}\n`);
  const how = r.written === 'quantized' ? `requantized to the base's ${r.baseFormat}` : `${r.written}${r.baseFormat ? `, the ${r.baseFormat} base dequantized` : ''}`;
  process.stdout.write(`merged model written to ${path.resolve(r.out)} (${r.merged.length} weights merged, ${how})\n`);
  return 0;
}

async function cmdQuantize(cmd: Command, args: string[]): Promise<number> {
  const p = parseFlags(cmd, args);
  requireAll(cmd, p);
  const o = toOptions(cmd, p) as Record<string, never>;
  checkModelDir('--model', o.model);
  const { quantizeModelSync } = await import('../quant');
  const r = quantizeModelSync({ model: o.model, out: o.out, format: o.format, blocksize: o.blocksize, doubleQuant: o.doubleQuant });
  process.stdout.write(`${r.quantized.length} Linear weights quantized to ${o.format}; ${(r.bytesBefore / 2 ** 20).toFixed(1)} MiB -> ${(r.bytesAfter / 2 ** 20).toFixed(1)} MiB in ${path.resolve(o.out)}\n`);
  return 0;
}

async function cmdDemo(cmd: Command, args: string[]): Promise<number> {
  const p = parseFlags(cmd, args);
  const o = toOptions(cmd, p) as { steps?: number; lr?: number; out?: string };
  return (await import('./demo')).runDemo(o);
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

const RUN: Record<string, (cmd: Command, args: string[]) => Promise<number>> = {
  train: cmdTrain, estimate: cmdEstimate, generate: cmdGenerate, merge: cmdMerge, quantize: cmdQuantize, demo: cmdDemo,
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  const cmd = name !== undefined ? findCommand(name) : undefined;
  try {
    // `peftkit train --help` and the like: the command's help, not an unknown-option error.
    if (cmd && rest.some((a) => a === '--help' || a === '-h')) {
      process.stdout.write(renderHelp(cmd, columns(), cmd.name === 'train' || cmd.name === 'estimate' ? trainDefaults() : {}));
      return 0;
    }
    switch (name) {
      case '--version': case '-V': case 'version':
        process.stdout.write(`peftkit ${version()}\n`);
        return 0;
      case undefined: case '-h': case '--help': case 'help': {
        const sub = name === 'help' && rest[0] !== undefined ? findCommand(rest[0]) : undefined;
        if (sub) process.stdout.write(renderHelp(sub, columns(), sub.name === 'train' || sub.name === 'estimate' ? trainDefaults() : {}));
        else process.stdout.write(renderMainHelp(columns()));
        return name === undefined ? 2 : 0;
      }
      default:
        if (!cmd) throw new UsageError(`unknown command '${name}' (commands: ${COMMANDS.map((c) => c.name).join(', ')})`);
        return await RUN[cmd.name](cmd, rest);
    }
  } catch (e) {
    const usage = e instanceof UsageError;
    const msg = (e as Error)?.message ?? String(e);
    process.stderr.write(`peftkit: ${msg}\n${usage ? `run \`peftkit ${cmd ? `${cmd.name} ` : ''}--help\` for usage\n` : ''}`);
    return usage ? 2 : 1;
  }
}
