/** Reading the JSON object files of a model folder (config.json, generation_config.json...). */
import { PeftkitError } from '../errors';
import { readRegularFile } from './regular_file';

/** The object in `file`: E_IO naming the file when it cannot be read, E_CONFIG when it is not a JSON object. */
export function readJsonObject(file: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(readRegularFile(file));
  } catch (e) {
    if (e instanceof PeftkitError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new PeftkitError(code ? 'E_IO' : 'E_CONFIG', `${file}: ${code ? `cannot read (${code})` : `not valid JSON (${(e as Error).message})`}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new PeftkitError('E_CONFIG', `${file}: not a JSON object`);
  return value as Record<string, unknown>;
}
