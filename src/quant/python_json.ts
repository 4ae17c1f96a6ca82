/**
 * The text Python's json.dumps gives a flat object of strings, integers, floats and integer
 * lists (", " and ": " separators, floats as repr). bitsandbytes stores a quant state's
 * non-tensor fields that way, so writing them the same way gives the same bytes.
 */

/** repr() of a Python float: shortest round-trip digits, scientific below 1e-4 and from 1e16. */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e');
  const sign = x < 0 ? '-' : '';
  const digits = mantissa.replace('-', '').replace('.', '');
  const exp = Number(expText);
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  return `${sign}${digits.slice(0, exp + 1).padEnd(exp + 1, '0')}.${digits.slice(exp + 1) || '0'}`;
}

/** A value of a Python json field: a string, an int, a float (`{ float: x }`) or a list of ints. */
export type PythonJsonValue = string | number | { float: number } | number[] | boolean | null;

function value(v: PythonJsonValue): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'string') return JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (typeof v === 'number') return String(v);
  if (Array.isArray(v)) return `[${v.map(String).join(', ')}]`;
  return pythonFloatRepr(v.float);
}

/** json.dumps(obj) for a flat object, keys in insertion order. */
export function pythonJsonDumps(obj: Record<string, PythonJsonValue>): string {
  return `{${Object.entries(obj).map(([k, v]) => `${value(k)}: ${value(v)}`).join(', ')}}`;
}
