/**
 * Every flag of every `peftkit` command, in one table: its name and aliases, type, default, a
 * one-line description and the API field it sets. The parser (parse.ts), each command's
 * `--help` and the README's options table are all made from it, so they cannot drift apart
 * (test/cli_flags.test.ts checks the README against `readmeOptionsTable()`).
 *
 * Nothing here loads the native addon: `--help`, `--version` and option errors work without it.
 */
import { MAX_LR, METHOD_NAMES, OPTIM_NAMES, QUANTIZE_NAMES, SCHEDULE_NAMES } from '../train/options';

/**
 * path/string: any non-empty text; int, number: a finite number (int: an integer); boolean: a
 * switch (no value); enum: one of `values`; list: comma-separated names; numbers: comma-separated numbers.
 */
export type FlagType = 'path' | 'string' | 'int' | 'number' | 'boolean' | 'enum' | 'list' | 'numbers';

export interface Flag {
  /** The long name, without `--`. */
  name: string;
  /** Other names accepted for it (other tools' spellings). */
  aliases?: readonly string[];
  type: FlagType;
  /** The value's placeholder in help (DIR, FILE, N, X). */
  metavar?: string;
  values?: readonly string[];
  /** Bounds the CLI checks itself (train's bounds are resolveTrainOptions'): [min, max], or (min, max] with minOpen. */
  min?: number;
  max?: number;
  minOpen?: boolean;
  /** The default as shown; `none` when omitted. */
  default?: string;
  /** The API option it sets (`train()`'s TrainOptions field for `train`). */
  field?: string;
  /** A `--no-...` switch: sets `field` to false. */
  negate?: boolean;
  /** One line: what it does. */
  description: string;
  /** More, for the README's table only. */
  details?: string;
  /** Needed by the command (train: unless --resume names a checkpoint that records it). */
  required?: boolean;
}

export interface Command {
  name: string;
  summary: string;
  /** Usage lines after `peftkit `. */
  usage: readonly string[];
  flags: readonly Flag[];
}

const CONFIG: Flag = {
  name: 'config', aliases: ['c'], type: 'path', metavar: 'FILE',
  description: 'read flags from a YAML or JSON file whose keys are the flag names (batch-size: 8); flags given on the command line win',
};

const DEVICE_DETAILS = '`auto` picks cuda when the addon is the CUDA build and a GPU is visible, else cpu, and the log says which and why; `cuda` without either fails (E_DEVICE), never falls back';

export const TRAIN_FLAGS: readonly Flag[] = [
  { name: 'model', type: 'path', metavar: 'DIR', field: 'model', required: true, description: 'Hugging Face model folder (config.json, safetensors, tokenizer.json) on local disk' },
  { name: 'data', type: 'path', metavar: 'FILE', field: 'data', required: true, description: 'training data: JSONL or a JSON array (formats below)' },
  { name: 'out', type: 'path', metavar: 'DIR', field: 'out', required: true, description: 'output folder: the adapter, train_log.jsonl, loss_curve.svg, checkpoints/' },
  { name: 'eval-data', type: 'path', metavar: 'FILE', field: 'evalData', description: 'eval rows from a file (same formats)' },
  { name: 'eval-split', type: 'number', metavar: 'F', field: 'evalSplit', description: 'eval rows: the last fraction F of the training file (0 < F < 1)' },
  {
    name: 'method', type: 'enum', values: METHOD_NAMES, metavar: 'METHOD', field: 'method', default: 'lora', description: `fine-tuning method: ${METHOD_NAMES.join(', ')}`,
    details: '`qlora` quantizes the base\'s decoder Linear weights to NF4 with double quantization at load, `int8-lora` to LLM.int8; LoRA trains in f32 on top (the weights are decoded inside the GEMMs, never dequantized whole). ' +
      '`dora`: LoRA with PEFT\'s weight decomposition; `ia3`: PEFT\'s IA3 vectors (k_proj, v_proj, down_proj\'s input); `ln`: PEFT\'s LN_TUNING (the RMSNorm scales); ' +
      '`bitfit`: the Linear biases; `diff`: diff pruning (a sparse δ per weight); `adapter`: bottleneck adapters (Houlsby, Pfeiffer); `prompt`: PEFT\'s prompt tuning; `p-tuning`: PEFT\'s P-tuning (MLP or LSTM encoder); `prefix`: PEFT\'s prefix tuning; `full`: every weight, written as a whole model folder',
  },
  { name: 'trainable', type: 'string', metavar: 'REGEX', field: 'trainable', description: 'with --method full: train only the weights whose checkpoint name matches' },
  { name: 'diff-density', type: 'number', metavar: 'D', field: 'diffDensity', default: '0.005', description: 'with --method diff: the fraction of each δ kept at pruning (0 < D <= 1)' },
  { name: 'num-virtual-tokens', type: 'int', metavar: 'N', field: 'numVirtualTokens', default: '20', description: 'with --method prompt: virtual tokens; with --method prefix: key/value rows per layer' },
  { name: 'encoder-hidden-size', type: 'int', metavar: 'N', field: 'encoderHiddenSize', default: 'the hidden size', description: 'with --method p-tuning or --prefix-projection: the encoder MLP\'s width (with --encoder lstm: each LSTM direction\'s hidden size)' },
  {
    name: 'encoder', type: 'enum', values: ['mlp', 'lstm'], field: 'encoder', default: 'mlp', description: 'with --method p-tuning: the prompt encoder (PEFT\'s encoder_reparameterization_type)',
    details: '`mlp`: 3 Linear layers; `lstm`: a 2-layer bidirectional LSTM, then 2 Linear layers',
  },
  { name: 'prefix-projection', type: 'boolean', field: 'prefixProjection', description: 'with --method prefix: make the prefix with a trained MLP (PEFT\'s prefix_projection)' },
  { name: 'prompt-init', type: 'enum', values: ['random', 'text', 'vocab'], field: 'promptInit', default: 'random', description: 'with --method prompt: start from N(0, 1), --prompt-init-text\'s embeddings, or random tokens\'' },
  { name: 'prompt-init-text', type: 'string', metavar: 'TEXT', field: 'promptInitText', description: 'with --prompt-init text: the text whose token embeddings start the prompt' },
  { name: 'adapter-type', type: 'enum', values: ['houlsby', 'pfeiffer'], field: 'adapterType', default: 'houlsby', description: 'with --method adapter: after attention and MLP (houlsby) or after the MLP only (pfeiffer)' },
  { name: 'adapter-reduction', type: 'int', metavar: 'N', field: 'adapterReduction', default: '16', description: 'with --method adapter: hidden size / bottleneck size' },
  { name: 'diff-prune-step', type: 'int', metavar: 'N', field: 'diffPruneStep', description: 'with --method diff: prune after step N (0-based)', details: 'default: a tenth of the run\'s steps' },
  {
    name: 'quantize', type: 'enum', values: QUANTIZE_NAMES, field: 'quantize', description: 'quantize the frozen decoder Linear weights at load (any method)',
    details: 'norms and biases stay f32, embeddings and lm_head f32, or bf16 when the checkpoint stores them in bf16 or with `--bf16`; with `--bf16` the quantized weights are decoded to bf16 inside the GEMMs (QLoRA\'s `compute_dtype=bfloat16`)',
  },
  {
    name: 'int8-threshold', type: 'number', metavar: 'T', field: 'int8Threshold', description: 'LLM.int8 matmul on an int8 base: columns with any |x| >= T in f32, the rest int8',
    details: '`0` = int8 activations without outlier columns; none = the int8 weight dequantized inside an f32 GEMM (see LLM.int8 below)',
  },
  { name: 'r', type: 'int', metavar: 'N', field: 'r', description: 'LoRA rank' },
  { name: 'alpha', type: 'number', metavar: 'A', field: 'alpha', description: 'LoRA alpha: the update is scaled by alpha/r' },
  { name: 'dropout', type: 'number', metavar: 'P', field: 'dropout', description: 'LoRA / DoRA dropout probability' },
  {
    name: 'targets', type: 'list', metavar: 'NAMES', field: 'targets', default: 'q_proj,v_proj', description: 'modules to adapt: names (q_proj,v_proj) or all-linear',
    details: 'by name with PEFT\'s suffix rule, or every Linear but the head; a name that matches nothing is an error; `lm_head` can be adapted for generation and merging, not trained',
  },
  { name: 'rslora', type: 'boolean', field: 'rslora', default: 'off', description: 'rsLoRA: scale by alpha/sqrt(r)' },
  { name: 'adapter', type: 'path', metavar: 'DIR', field: 'adapter', description: 'continue training a PEFT adapter folder (its config decides --r, --alpha, --dropout, --targets)' },
  { name: 'steps', aliases: ['max-steps', 'iters'], type: 'int', metavar: 'N', field: 'steps', default: 'one epoch', description: 'optimizer steps' },
  { name: 'epochs', aliases: ['num-train-epochs'], type: 'number', metavar: 'N', field: 'epochs', description: 'epochs, converted to steps (give --steps or --epochs)' },
  {
    name: 'batch-size', aliases: ['per-device-train-batch-size'], type: 'int', metavar: 'N', field: 'batchSize', description: 'sequences per micro-batch',
  },
  {
    name: 'grad-accum', aliases: ['gradient-accumulation-steps'], type: 'int', metavar: 'N', field: 'gradAccum', description: 'micro-batches per optimizer step',
    details: 'the loss is averaged over the window\'s tokens; an epoch\'s last step takes the batches left, as in transformers',
  },
  { name: 'lr', aliases: ['learning-rate'], type: 'number', metavar: 'X', field: 'lr', description: `peak learning rate (at most ${MAX_LR})` },
  { name: 'weight-decay', type: 'number', metavar: 'X', field: 'weightDecay', description: 'AdamW decoupled weight decay' },
  { name: 'betas', type: 'numbers', metavar: 'B1,B2', field: 'betas', description: 'AdamW betas' },
  { name: 'eps', aliases: ['adam-epsilon'], type: 'number', metavar: 'X', field: 'eps', description: 'AdamW epsilon (> 0)' },
  {
    name: 'optim', type: 'enum', values: OPTIM_NAMES, field: 'optim', description: 'optimizer: f32 or 8-bit AdamW moments, optionally paged to disk',
    details: '`adamw` (f32 moments), `adamw8bit` (bitsandbytes\' blockwise 8-bit moments: a quarter of the memory; tensors under 4096 elements stay f32), `paged_adamw` / `paged_adamw8bit` (the same states in paged memory: a file on disk the OS pages in and out, under `--paged-dir`; managed memory on CUDA)',
  },
  { name: 'paged-dir', type: 'path', metavar: 'DIR', field: 'pagedDir', default: 'the OS temp folder', description: 'existing folder for the paged optimizers\' state file (a disk, not tmpfs)' },
  { name: 'schedule', aliases: ['lr-scheduler-type'], type: 'enum', values: SCHEDULE_NAMES, field: 'schedule', description: 'learning-rate schedule after linear warmup (transformers\' definitions)' },
  { name: 'warmup-steps', type: 'int', metavar: 'N', field: 'warmupSteps', description: 'linear warmup steps' },
  { name: 'warmup-ratio', type: 'number', metavar: 'F', field: 'warmupRatio', description: 'warmup as a fraction of the steps: ceil(F * steps) warmup steps (give this or --warmup-steps)' },
  { name: 'max-grad-norm', type: 'number', metavar: 'X', field: 'maxGradNorm', description: 'global gradient-norm clipping, 0 = off; a non-finite norm stops the run' },
  { name: 'max-length', aliases: ['max-seq-length'], type: 'int', metavar: 'N', field: 'maxLength', description: 'truncate examples to N tokens' },
  { name: 'packing', type: 'boolean', field: 'packing', default: 'off', description: 'concatenate examples into rows of --max-length tokens' },
  { name: 'no-mask-prompt', type: 'boolean', field: 'maskPrompt', negate: true, default: 'masked', description: 'compute the loss on prompt tokens too (default: completion / assistant tokens only)' },
  { name: 'no-shuffle', type: 'boolean', field: 'shuffle', negate: true, default: 'shuffled', description: 'keep the file\'s row order (default: a seeded shuffle each epoch)' },
  { name: 'seed', type: 'int', metavar: 'N', field: 'seed', description: 'seed of the shuffle, the LoRA init and dropout' },
  { name: 'save-every', aliases: ['save-steps'], type: 'int', metavar: 'N', field: 'saveEvery', description: 'write a checkpoint every N steps (one is always written at the end)' },
  { name: 'save-total-limit', type: 'int', metavar: 'N', field: 'saveTotalLimit', default: '0 (keep all)', description: 'keep only the newest N checkpoints' },
  { name: 'eval-every', aliases: ['eval-steps'], type: 'int', metavar: 'N', field: 'evalEvery', default: '0 (at the end)', description: 'evaluate (loss, perplexity) every N steps' },
  { name: 'log-every', aliases: ['logging-steps'], type: 'int', metavar: 'N', field: 'logEvery', description: 'write a train_log.jsonl record every N steps' },
  {
    name: 'resume', type: 'path', metavar: 'DIR', field: 'resume',
    description: 'continue from a checkpoint folder, or the latest one under an output folder, with the options it was started with',
    details: 'options not given are the checkpoint\'s; a different value is refused, except more `--steps`/`--epochs`, `--save-every`, `--eval-every`, `--save-total-limit`, `--log-every`, `--device`, `--activation-checkpointing`, `--paged-dir` and `--out`, which are stated in the log',
  },
  { name: 'overwrite', type: 'boolean', field: 'overwrite', default: 'off', description: 'train into an --out that holds another run\'s checkpoints, removing them' },
  {
    name: 'activation-checkpointing', aliases: ['gradient-checkpointing'], type: 'boolean', field: 'activationCheckpointing', default: 'off',
    description: 'recompute each layer in backward: less memory, ~30% more compute',
  },
  {
    name: 'bf16', type: 'boolean', field: 'bf16', default: 'off', description: 'bf16 base as PyTorch\'s bf16 autocast computes it; the adapter and optimizer stay f32',
    details: 'the frozen Linear weights, embeddings and lm_head are stored in bf16 (half their memory), and every Linear and LM-head product reads its operands rounded to bf16 with f32 sums (VDPBF16PS on CPUs with AVX512-BF16, about twice the f32 rate). With a quantized base the weights stay quantized and are decoded to bf16 inside the GEMMs',
  },
  { name: 'device', type: 'enum', values: ['cpu', 'cuda', 'auto'], field: 'device', description: 'where to run', details: DEVICE_DETAILS },
  {
    name: 'nproc-per-node', type: 'int', metavar: 'N', min: 1, default: '1', description: 'data-parallel training: start N ranks on this machine, the cores divided between them',
    details: 'each rank reads --batch-size rows of every global batch (batch-size × N × grad-accum sequences a step) and the gradients are summed over the ranks (Gloo; NCCL with --device cuda, each rank given its own GPU through CUDA_VISIBLE_DEVICES: the list the launcher sees, else GPU i for rank i); only rank 0 writes. Without it, the torchrun variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) make this process one rank of a run launched elsewhere (torchrun-style scripts, Slurm, several machines); with --device cuda such a rank takes GPU LOCAL_RANK of those it sees, the only one when it sees one',
  },
  {
    name: 'no-memory-check', type: 'boolean', field: 'memoryCheck', negate: true, default: 'checked',
    description: 'start even when the memory estimate (`peftkit estimate`) says the run does not fit in the memory available (default: refuse, with the figures)',
  },
  CONFIG,
];

/** `peftkit estimate`: train's flags (no output folder needed), and the sequence length to assume instead of reading the data. */
export const ESTIMATE_FLAGS: readonly Flag[] = [
  ...TRAIN_FLAGS.filter((f) => f.name !== 'config' && f.name !== 'no-memory-check' && f.name !== 'nproc-per-node').map((f) => (f.name === 'out' || f.name === 'data' ? { ...f, required: false } : f)),
  {
    name: 'seq-length', type: 'int', metavar: 'N', field: 'seqLength', min: 1, max: Number.MAX_SAFE_INTEGER, default: 'the data\'s longest row',
    description: 'size the activations for rows of N tokens instead of reading and tokenizing --data',
  },
  CONFIG,
];

export const GENERATE_FLAGS: readonly Flag[] = [
  { name: 'model', type: 'path', metavar: 'DIR', field: 'model', required: true, description: 'Hugging Face model folder on local disk' },
  { name: 'adapter', type: 'path', metavar: 'DIR', field: 'adapter', description: 'a PEFT LoRA adapter folder applied on top' },
  { name: 'prompt', type: 'string', metavar: 'TEXT', field: 'prompt', required: true, description: 'the text to continue' },
  { name: 'max-new-tokens', type: 'int', metavar: 'N', field: 'maxNewTokens', default: '64', min: 1, max: 1e6, description: 'tokens to generate at most' },
  { name: 'temperature', type: 'number', metavar: 'T', field: 'temperature', default: '0.7', min: 0, max: 100, description: 'sampling temperature; 0 = greedy' },
  { name: 'top-p', type: 'number', metavar: 'P', field: 'topP', default: '0.95', min: 0, max: 1, minOpen: true, description: 'nucleus sampling: the smallest set of tokens whose probability reaches P (0 < P <= 1)' },
  { name: 'seed', type: 'int', metavar: 'N', field: 'seed', default: '0', min: 0, max: Number.MAX_SAFE_INTEGER, description: 'sampling seed' },
  { name: 'chat', type: 'boolean', field: 'chat', default: 'off', description: 'render the prompt through the model\'s chat template as one user message' },
  { name: 'device', type: 'enum', values: ['cpu', 'cuda', 'auto'], field: 'device', default: 'cpu', description: 'where to run', details: DEVICE_DETAILS },
  { name: 'quantize', type: 'enum', values: QUANTIZE_NAMES, field: 'quantize', description: 'quantize the decoder Linear weights at load' },
  { name: 'int8-threshold', type: 'number', metavar: 'T', field: 'int8Threshold', min: 0, max: Number.MAX_VALUE, description: 'LLM.int8 outlier threshold of an int8 base' },
  CONFIG,
];

export const MERGE_FLAGS: readonly Flag[] = [
  { name: 'model', type: 'path', metavar: 'DIR', field: 'model', required: true, description: 'the base model folder' },
  { name: 'adapter', type: 'path', metavar: 'DIR', field: 'adapter', required: true, description: 'the PEFT LoRA adapter folder' },
  { name: 'out', type: 'path', metavar: 'DIR', field: 'out', required: true, description: 'where the merged Hugging Face folder is written' },
  {
    name: 'dtype', type: 'enum', values: ['f32', 'bf16'], field: 'dtype', default: "the base's format",
    description: 'write dense weights in this dtype (a bitsandbytes base is otherwise requantized in its own format)',
  },
  CONFIG,
];

export const QUANTIZE_FLAGS: readonly Flag[] = [
  { name: 'model', type: 'path', metavar: 'DIR', field: 'model', required: true, description: 'the model folder to quantize' },
  { name: 'out', type: 'path', metavar: 'DIR', field: 'out', required: true, description: 'where the bitsandbytes-layout folder is written' },
  { name: 'format', type: 'enum', values: QUANTIZE_NAMES, field: 'format', required: true, description: 'NF4 / FP4 blockwise 4-bit, or LLM.int8 row-wise' },
  { name: 'blocksize', type: 'int', metavar: 'N', field: 'blocksize', default: '64', min: 32, max: 4096, description: '4-bit block size (a power of two, 32..4096)' },
  { name: 'no-double-quant', type: 'boolean', field: 'doubleQuant', negate: true, default: 'double quant', description: 'keep the 4-bit block scales in f32 (default: quantized again)' },
  CONFIG,
];

export const DEMO_FLAGS: readonly Flag[] = [
  { name: 'steps', type: 'int', metavar: 'N', field: 'steps', default: '150', min: 1, max: 100000, description: 'optimizer steps' },
  { name: 'lr', type: 'number', metavar: 'X', field: 'lr', default: '0.01', min: 0, max: MAX_LR, minOpen: true, description: 'peak learning rate' },
  { name: 'out', type: 'path', metavar: 'DIR', field: 'out', default: 'a temporary folder, removed after', description: 'keep the demo model and adapter in this folder' },
  CONFIG,
];

export const COMMANDS: readonly Command[] = [
  {
    name: 'train', summary: 'fine-tune a local Hugging Face model (LoRA or another --method)',
    usage: ['train --model DIR --data FILE --out DIR [options]', 'train --resume DIR [options]', 'train                (no arguments: the demo, as `peftkit demo`)'],
    flags: TRAIN_FLAGS,
  },
  {
    name: 'estimate', summary: 'the memory a training run needs, part by part, against the memory available',
    usage: ['estimate --model DIR --data FILE [train\'s options]', 'estimate --model DIR --seq-length N [train\'s options]'], flags: ESTIMATE_FLAGS,
  },
  { name: 'generate', summary: 'generate text, optionally with an adapter', usage: ['generate --model DIR --prompt TEXT [options]'], flags: GENERATE_FLAGS },
  { name: 'merge', summary: 'fold an adapter into its base model', usage: ['merge --model DIR --adapter DIR --out DIR [--dtype f32|bf16]'], flags: MERGE_FLAGS },
  { name: 'quantize', summary: 'write a bitsandbytes-format NF4/FP4/int8 model folder', usage: ['quantize --model DIR --out DIR --format nf4|fp4|int8 [options]'], flags: QUANTIZE_FLAGS },
  { name: 'demo', summary: 'a one-minute LoRA run on a tiny generated model and bundled data', usage: ['demo [--steps N] [--lr X] [--out DIR]'], flags: DEMO_FLAGS },
];

export function findCommand(name: string): Command | undefined {
  return COMMANDS.find((c) => c.name === name);
}

/** `--name`, for messages. */
export const flagName = (f: Flag) => `--${f.name}`;

/** The flag that sets an API field, as the CLI names it (`batchSize` -> `--batch-size`), or the field itself. */
export function flagOfField(flags: readonly Flag[], field: string): string {
  const f = flags.find((x) => x.field === field);
  return f ? flagName(f) : field;
}

/**
 * Rewrites the API field names in a message from the engine as the CLI flags that set them
 * (`maxLength 2048` -> `--max-length 2048`): multi-word fields anywhere, others only quoted
 * ('lr') or leading a message (`lr: ...`), where they cannot be ordinary words.
 */
export function cliWording(flags: readonly Flag[], message: string): string {
  let m = message;
  for (const f of flags) {
    if (!f.field) continue;
    const flag = flagName(f);
    // A `--no-...` switch is the field set to false.
    if (f.negate) m = m.replace(new RegExp(`'?${f.field}'?: false`, 'g'), flag);
    m = /[A-Z]/.test(f.field)
      ? m.replace(new RegExp(`'?(?<![\\w-])${f.field}(?!\\w)'?`, 'g'), flag)
      : m.replace(new RegExp(`'${f.field}'|(^|: )${f.field}(?=:)`, 'g'), (_s, pre?: string) => `${pre ?? ''}${flag}`);
  }
  return m;
}

/** The value placeholder of a flag, as help and the README show it. */
export function metavar(f: Flag): string {
  if (f.type === 'boolean') return '';
  // A long list of values is named by its metavar; the description lists them.
  if (f.type === 'enum') return f.metavar ?? (f.values ?? []).join('|');
  return f.metavar ?? 'X';
}

function defaultText(f: Flag, apiDefaults: Record<string, unknown>): string {
  if (f.default !== undefined) return f.default;
  const v = f.field !== undefined ? apiDefaults[f.field] : undefined;
  if (v === undefined) return 'none';
  return Array.isArray(v) ? v.join(',') : String(v);
}

/** Word-wraps `text` to lines of at most `width` characters (a word longer than that gets a line of its own). */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let cur = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (cur && cur.length + 1 + word.length > width) {
      lines.push(cur);
      cur = word;
    } else cur = cur ? `${cur} ${word}` : word;
  }
  if (cur) lines.push(cur);
  return lines.length ? lines : [''];
}

/**
 * A command's `--help`: its usage, then each flag with its aliases, one-line description and
 * default, wrapped to `width` columns (the terminal's; 80 when not a terminal).
 */
export function renderHelp(cmd: Command, width: number, apiDefaults: Record<string, unknown> = {}): string {
  width = Math.max(40, Math.min(width, 120));
  const out: string[] = [];
  out.push(...wrap(`peftkit ${cmd.name}: ${cmd.summary}`, width));
  out.push('', 'usage:');
  for (const u of cmd.usage) out.push(...wrap(`peftkit ${u}`, width - 2).map((l, i) => (i ? '      ' : '  ') + l));
  out.push('', 'options:');
  const col = width >= 72 ? 28 : 6;
  for (const f of cmd.flags) {
    const mv = metavar(f);
    const names = [f.name, ...(f.aliases ?? [])].map((n) => (n.length === 1 ? `-${n}` : `--${n}`)).join(', ');
    const head = `  ${names}${mv ? ` ${mv}` : ''}`;
    const dflt = f.required ? 'required' : f.type === 'boolean' && f.default === undefined ? '' : `default: ${defaultText(f, apiDefaults)}`;
    const desc = wrap(`${f.description}${dflt ? ` (${dflt})` : ''}`, width - col);
    const pad = ' '.repeat(col);
    if (head.length + 2 <= col) {
      out.push(head.padEnd(col) + desc[0]);
      for (const l of desc.slice(1)) out.push(pad + l);
    } else {
      out.push(...wrap(head, width - 4).map((l, i) => (i ? '      ' + l : l)));
      for (const l of desc) out.push(pad + l);
    }
  }
  out.push('', ...wrap('Exit codes: 0 success, 1 a failure (one line on stderr), 2 bad usage.', width));
  return out.join('\n') + '\n';
}

/** `peftkit --help`: the commands, and where each one's flags are listed. */
export function renderMainHelp(width: number): string {
  width = Math.max(40, Math.min(width, 120));
  const out = ['usage:'];
  for (const c of COMMANDS) for (const u of c.usage) out.push(...wrap(`peftkit ${u}`, width - 2).map((l, i) => (i ? '      ' : '  ') + l));
  out.push('  peftkit --version', '', 'commands:');
  for (const c of COMMANDS) out.push(...wrap(c.summary, width - 13).map((l, i) => (i ? ' '.repeat(13) : `  ${c.name.padEnd(11)}`) + l));
  out.push('', ...wrap('`peftkit <command> --help` lists a command\'s options. Model folders are local Hugging Face folders: download one first, e.g. `huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir SmolLM2-135M`.', width));
  return out.join('\n') + '\n';
}

const md = (s: string) => s.replace(/\|/g, '\\|');

/** The README's training options table (between its `<!-- options:train -->` markers). */
export function readmeOptionsTable(apiDefaults: Record<string, unknown>): string {
  const rows = ['| CLI | `train()` | default | meaning |', '|---|---|---|---|'];
  for (const f of TRAIN_FLAGS) {
    if (f.name === 'config') continue;
    const mv = metavar(f);
    const names = [f.name, ...(f.aliases ?? [])].map((n) => `\`--${n}${mv ? ` ${md(mv)}` : ''}\``);
    const cli = names[0] + (names.length > 1 ? ` (also ${names.slice(1).join(', ')})` : '');
    const field = f.field ? `\`${f.field}${f.negate ? ': false' : ''}\`` : '—';
    const dflt = f.required ? '— (required)' : md(defaultText(f, apiDefaults));
    rows.push(`| ${cli} | ${field} | ${dflt} | ${md(f.description)}${f.details ? `: ${md(f.details)}` : ''} |`);
  }
  return rows.join('\n') + '\n';
}
