/**
 * A Hugging Face model folder as peftkit writes one (quantize, merge, full fine-tuning): the
 * weights as model.safetensors (or shards of at most 5 GB with model.safetensors.index.json, as
 * transformers' save_pretrained), config.json, and every other non-weight file of the folder it came from (tokenizer,
 * generation config, model card...) copied, the whole folder replaced atomically.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeDirAtomic } from '../io/atomic';
import { readJsonObject } from '../io/json_file';
import { TensorToWrite, writeSafetensors } from './safetensors';

/** Weight files of any framework: never copied, since the new model.safetensors replaces them. */
const WEIGHT_FILE = /(\.safetensors|\.safetensors\.index\.json|\.bin|\.bin\.index\.json|\.pt|\.pth|\.ckpt|\.h5|\.msgpack|\.gguf)$/;

/** config.json of `dir` as a plain object, every key kept (unlike parseModelConfig). */
export function readConfigJson(dir: string): Record<string, unknown> {
  return readJsonObject(path.join(dir, 'config.json'));
}

export interface ModelFolder {
  /** The folder whose non-weight files (all but config.json and weights) are copied. */
  source: string;
  /** Written as config.json. */
  config: Record<string, unknown>;
  /** Written as model.safetensors. */
  tensors: Record<string, TensorToWrite>;
}

/** transformers' default max_shard_size ("5GB", decimal). */
export const MAX_SHARD_BYTES = 5e9;

/**
 * The weights as safetensors files in `dir`: one model.safetensors when they fit a shard, else
 * model-0000i-of-0000n.safetensors (tensors in name order, each shard at most `maxShardBytes`)
 * and the index transformers reads (metadata.total_size, weight_map).
 */
export function writeWeights(dir: string, tensors: Record<string, TensorToWrite>, maxShardBytes = MAX_SHARD_BYTES): void {
  const names = Object.keys(tensors).sort();
  const shards: string[][] = [[]];
  let size = 0, total = 0;
  for (const name of names) {
    const bytes = tensors[name].data.byteLength;
    if (size > 0 && size + bytes > maxShardBytes) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(name);
    size += bytes;
    total += bytes;
  }
  if (shards.length === 1) return writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  const width = 5;
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const file = `model-${String(i + 1).padStart(width, '0')}-of-${String(shards.length).padStart(width, '0')}.safetensors`;
    writeSafetensors(path.join(dir, file), Object.fromEntries(shard.map((n) => [n, tensors[n]])));
    for (const n of shard) weightMap[n] = file;
  });
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
}

/** Writes config.json, the weights and the source's other files into an existing folder. */
export function writeModelFiles(dir: string, f: ModelFolder, maxShardBytes = MAX_SHARD_BYTES): void {
  writeWeights(dir, f.tensors, maxShardBytes);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(f.config, null, 2) + '\n');
  for (const name of fs.readdirSync(f.source)) {
    if (name === 'config.json' || WEIGHT_FILE.test(name)) continue;
    // stat follows symlinks: a Hugging Face hub snapshot folder holds nothing but links to its blobs.
    const from = path.join(f.source, name);
    if (fs.statSync(from, { throwIfNoEntry: false })?.isFile()) fs.copyFileSync(from, path.join(dir, name));
  }
}

/** Writes `out` so that it appears complete or not at all (an existing folder is replaced). */
export function writeModelFolder(out: string, f: ModelFolder): void {
  writeDirAtomic(out, (tmp) => writeModelFiles(tmp, f));
}
