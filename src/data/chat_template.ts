/**
 * Chat templates rendered with limits. A template comes from a model folder, which is untrusted
 * input, and @huggingface/jinja runs it without any: `range(1000000000)` builds a billion-element
 * array and V8 aborts the whole process ("invalid size", not an exception), nested loops run for
 * ever, and strings or lists can grow until the heap is gone. So rendering here:
 *
 * - replaces the global `range` with one that refuses more than `rangeItems` items before
 *   building anything (the one builtin that turns a small input into a huge array in one step);
 * - runs the library's own interpreter through a subclass whose `evaluate` (every node of the
 *   template goes through it: the library's private methods call `this.evaluate`) checks a
 *   deadline, and adds up the size of every string and list a node yields: a render may produce
 *   `work + workPerInputChar × (characters of its input)` characters and list items in all, which
 *   bounds its output and any memory it holds, since everything it holds was yielded by a node.
 *
 * The globals are those of the library's `setupGlobals` (not exported; the version is pinned in
 * package.json), with `range` bounded. Everything else is the library's own evaluation, so a
 * template renders exactly as `Template.render` renders it.
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { PeftkitError } from '../errors';

export interface TemplateLimits {
  /** Wall-clock time one render may take, in ms. */
  timeMs: number;
  /** Items one `range()` call may produce. */
  rangeItems: number;
  /** Characters of strings plus items of lists a render may yield in all, before the allowance for its input. */
  work: number;
  /** ...plus this many per character of the render's input (messages, tools). */
  workPerInputChar: number;
}

/**
 * The limits every chat template render runs under. Generous for any real template (they render
 * a conversation in well under a millisecond per message, yielding a few times its size).
 */
export const TEMPLATE_LIMITS: Readonly<TemplateLimits> = Object.freeze({
  timeMs: 5000,
  rangeItems: 100_000,
  work: 16 << 20,
  workPerInputChar: 32,
});

type Statement = Parameters<Interpreter['evaluate']>[0];
type RuntimeValue = ReturnType<Interpreter['evaluate']>;

/** A variable or an element looked up (not a slice, which copies): it yields a value that already exists. */
function isLookup(s: Statement): boolean {
  if (s?.type === 'Identifier') return true;
  return s?.type === 'MemberExpression' && (s as unknown as { property: { type: string } }).property.type !== 'SliceExpression';
}

/** Thrown inside the interpreter; turned into a PeftkitError naming the template's file. */
class TemplateLimitError extends Error {}

class BoundedInterpreter extends Interpreter {
  private steps = 0;
  private produced = 0;

  constructor(env: Environment, private readonly deadline: number, private readonly budget: number, private readonly limits: TemplateLimits) {
    super(env);
  }

  override evaluate(statement: Statement, environment: Environment): RuntimeValue {
    // Loops are where the time goes: check at each one, and every 32 nodes otherwise.
    if ((++this.steps & 31) === 0 || statement?.type === 'For') this.checkTime();
    const v = super.evaluate(statement, environment);
    if (isLookup(statement)) return v; // an existing value, nothing new
    const value = (v as { value?: unknown }).value;
    const size = typeof value === 'string' || Array.isArray(value) ? value.length : 0;
    if (size > 0) {
      this.produced += size;
      if (this.produced > this.budget) {
        throw new TemplateLimitError(
          `it yielded more than ${this.budget} characters and list items in all (the limit is ${this.limits.work} + ` +
            `${this.limits.workPerInputChar} per character of the conversation): a runaway loop or a string that keeps growing`,
        );
      }
    }
    return v;
  }

  checkTime(): void {
    if (performance.now() > this.deadline) {
      throw new TemplateLimitError(`it ran for more than ${this.limits.timeMs} ms (a runaway or deeply nested loop)`);
    }
  }
}

/** Characters of strings in plain data (messages, tools), to size a render's allowance. */
function inputChars(v: unknown, depth = 0): number {
  if (typeof v === 'string') return v.length;
  if (v === null || typeof v !== 'object' || depth > 64) return 8;
  let n = 0;
  for (const x of Array.isArray(v) ? v : Object.values(v)) n += inputChars(x, depth + 1) + 8;
  return n;
}

/** The library's strftime_now (Python's strftime for the codes chat templates use). */
function strftimeNow(format: string): string {
  const date = new Date();
  const pad2 = (n: number): string => (n < 10 ? '0' + n : n.toString());
  return String(format).replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y': return date.getFullYear().toString();
      case '%m': return pad2(date.getMonth() + 1);
      case '%d': return pad2(date.getDate());
      case '%b': return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B': return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H': return pad2(date.getHours());
      case '%M': return pad2(date.getMinutes());
      case '%%': return '%';
      default: return token;
    }
  });
}

/**
 * `template.render(items)` under `limits`. A render that exceeds one fails with E_DATA naming
 * `file`; other template errors are thrown as they are (the caller words them).
 */
export function renderTemplate(template: Template, items: Record<string, unknown>, file: string, limits: TemplateLimits = TEMPLATE_LIMITS): string {
  const env = new Environment();
  // The library's setupGlobals, with range bounded.
  env.set('false', false);
  env.set('true', true);
  env.set('none', null);
  env.set('raise_exception', (msg: string) => {
    throw new Error(msg);
  });
  env.set('range', (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new Error('range() step must not be zero');
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if (n > limits.rangeItems) {
      throw new TemplateLimitError(`range(${start}, ${stop}, ${step}) would make ${n} items, over the limit of ${limits.rangeItems}`);
    }
    const out: number[] = [];
    if (step > 0) for (let i = start; i < stop; i += step) out.push(i);
    else for (let i = start; i > stop; i += step) out.push(i);
    return out;
  });
  env.set('strftime_now', strftimeNow);
  env.set('True', true);
  env.set('False', false);
  env.set('None', null);
  for (const [k, v] of Object.entries(items)) env.set(k, v);

  const budget = limits.work + limits.workPerInputChar * inputChars(items);
  const interpreter = new BoundedInterpreter(env, performance.now() + limits.timeMs, budget, limits);
  try {
    const out = (interpreter.run(template.parsed) as { value: string }).value;
    interpreter.checkTime(); // a last node that ran long
    return out;
  } catch (e) {
    if (e instanceof TemplateLimitError) throw new PeftkitError('E_DATA', `${file}: the chat template was stopped: ${e.message}`);
    throw e;
  }
}
