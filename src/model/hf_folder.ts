/**
 * A Hugging Face model folder as peftkit writes one (quantize, merge): one model.safetensors,
 * config.json, and every other non-weight file of the folder it came from (tokenizer,
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

/** Writes `out` so that it appears complete or not at all (an existing folder is replaced). */
export function writeModelFolder(out: string, f: ModelFolder): void {
  writeDirAtomic(out, (tmp) => {
    writeSafetensors(path.join(tmp, 'model.safetensors'), f.tensors);
    fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(f.config, null, 2) + '\n');
    for (const name of fs.readdirSync(f.source)) {
      if (name === 'config.json' || WEIGHT_FILE.test(name)) continue;
      // stat follows symlinks: a Hugging Face hub snapshot folder holds nothing but links to its blobs.
      const from = path.join(f.source, name);
      if (fs.statSync(from, { throwIfNoEntry: false })?.isFile()) fs.copyFileSync(from, path.join(tmp, name));
    }
  });
}
