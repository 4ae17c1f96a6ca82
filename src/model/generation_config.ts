/**
 * generation_config.json, the file transformers' generate() takes its defaults from. Only its
 * end-of-sequence ids are read: chat models list there the end-of-turn tokens (Llama 3's
 * <|eot_id|>, Qwen2's <|im_end|>) that config.json and the tokenizer's eos_token may lack.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';
import { readJsonObject } from '../io/json_file';

/** eos_token_id of `<dir>/generation_config.json` as a list (empty when the file or the field is absent). */
export function readGenerationEosIds(dir: string): number[] {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return [];
  const cfg = readJsonObject(file);
  const eos = cfg.eos_token_id;
  if (eos === undefined || eos === null) return [];
  const ids = Array.isArray(eos) ? eos : [eos];
  if (!ids.every((id) => Number.isSafeInteger(id) && (id as number) >= 0)) {
    throw new PeftkitError('E_CONFIG', `${file}: field "eos_token_id" is ${JSON.stringify(eos)}, expected a token id or a list of them`);
  }
  return ids as number[];
}
