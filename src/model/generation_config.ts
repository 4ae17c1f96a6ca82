/**
 * generation_config.json, the file transformers' generate() takes its defaults from. Only its
 * end-of-sequence ids are read: chat models list there the end-of-turn tokens (Llama 3's
 * <|eot_id|>, Qwen2's <|im_end|>) that config.json and the tokenizer's eos_token may lack.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PeftkitError } from '../errors';

/** eos_token_id of `<dir>/generation_config.json` as a list (empty when the file or the field is absent). */
export function readGenerationEosIds(dir: string): number[] {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return [];
  let cfg: unknown;
  try {
    cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new PeftkitError(code ? 'E_IO' : 'E_CONFIG', `${file}: ${code ? `cannot read (${code})` : `not valid JSON (${(e as Error).message})`}`);
  }
  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new PeftkitError('E_CONFIG', `${file}: not a JSON object`);
  const eos = (cfg as Record<string, unknown>).eos_token_id;
  if (eos === undefined || eos === null) return [];
  const ids = Array.isArray(eos) ? eos : [eos];
  if (!ids.every((id) => Number.isSafeInteger(id) && (id as number) >= 0)) {
    throw new PeftkitError('E_CONFIG', `${file}: field "eos_token_id" is ${JSON.stringify(eos)}, expected a token id or a list of them`);
  }
  return ids as number[];
}
