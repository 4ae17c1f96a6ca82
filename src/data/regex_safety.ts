/**
 * Refusing tokenizer regexes that backtrack catastrophically. @huggingface/tokenizers runs the
 * `{"Regex": ...}` patterns of tokenizer.json (Split pre-tokenizers, Replace normalizers and
 * decoders) with JavaScript's backtracking engine, which cannot be interrupted: `(a+)+b` on 28
 * characters of "a" takes seconds, on 40 it takes days. A model folder is untrusted input, so
 * every such pattern is parsed here at load and refused when its structure allows more than
 * polynomial backtracking:
 *
 * - a repetition (`*`, `+`, `{n,m}` with m > 1) of a sub-pattern that can itself match in more
 *   than one way (a repetition, an optional part, an alternation, a backreference): the classic exponential shape, `(a+)+`, `(a|aa)*`, `(a?b)*`;
 * - more than two unbounded repetitions along one path of the pattern (lookarounds included):
 *   each is a factor of the input length in the backtracking of one match attempt;
 * - more than 4096 combinations of bounded choices (`?`, `{n,m}`, alternatives) along paths.
 *
 * Every pre-tokenizer regex of the tokenizers in use (GPT-2, cl100k, o200k, Llama 3, Qwen2,
 * DeepSeek, BLOOM) has at most two unbounded repetitions per path and no nested ones; the test
 * keeps a list. This is a structural bound: what remains is polynomial (at most cubic in the
 * length of one pre-tokenized section, for adversarial text and a pattern whose two repetitions
 * overlap), and training rows are cut to a multiple of maxLength before they are encoded.
 */

type Node =
  | { k: 'atom' }
  | { k: 'backref' }
  | { k: 'seq'; items: Node[] }
  | { k: 'alt'; branches: Node[] }
  | { k: 'group'; body: Node }
  | { k: 'rep'; body: Node; min: number; max: number };

/** A bounded repetition with more than this many copies counts as unbounded. */
const BOUNDED_COPIES = 16;
const MAX_UNBOUNDED_PER_PATH = 2;
const MAX_CHOICES = 4096;

class RegexSyntaxError extends Error {}

/** A tolerant parser of JavaScript / Oniguruma pattern syntax, down to what matters for backtracking. */
function parse(src: string): Node {
  let i = 0;
  const peek = () => src[i];
  const fail = (why: string): never => {
    throw new RegexSyntaxError(`${why} at offset ${i}`);
  };

  function parseAlt(): Node {
    const branches = [parseSeq()];
    while (peek() === '|') {
      i++;
      branches.push(parseSeq());
    }
    // Even an alternation of single characters is a choice: (a|a)* backtracks exponentially.
    return branches.length === 1 ? branches[0] : { k: 'alt', branches };
  }

  function parseSeq(): Node {
    const items: Node[] = [];
    while (i < src.length && peek() !== '|' && peek() !== ')') {
      let item = parseAtom();
      for (;;) {
        const q = parseQuantifier();
        if (!q) break;
        item = { k: 'rep', body: item, min: q[0], max: q[1] };
      }
      items.push(item);
    }
    return items.length === 1 ? items[0] : { k: 'seq', items };
  }

  function parseQuantifier(): [number, number] | null {
    const c = peek();
    let q: [number, number] | null = null;
    if (c === '*') q = [0, Infinity];
    else if (c === '+') q = [1, Infinity];
    else if (c === '?') q = [0, 1];
    else if (c === '{') {
      const m = /^\{(\d*)(,?)(\d*)\}/.exec(src.slice(i));
      if (!m || (m[1] === '' && m[3] === '')) return null; // a literal brace
      const min = m[1] === '' ? 0 : Number(m[1]);
      const max = m[2] ? (m[3] === '' ? Infinity : Number(m[3])) : min;
      i += m[0].length - 1;
      q = [min, max];
    }
    if (!q) return null;
    i++;
    if (peek() === '?' || peek() === '+') i++; // lazy, possessive: the same choices (possessive: fewer)
    return q;
  }

  function parseAtom(): Node {
    const c = src[i++];
    if (c === '(') {
      if (peek() === '?') {
        const m = /^\?(?::|=|!|<=|<!|>|<[A-Za-z_][A-Za-z0-9_]*>|'[A-Za-z_][A-Za-z0-9_]*'|[imsx-]+:|[imsx-]+\))/.exec(src.slice(i));
        if (!m) fail('unknown group');
        i += m![0].length;
        if (m![0].endsWith(')')) return { k: 'atom' }; // (?i): flags for the rest of the pattern
      }
      const body = parseAlt();
      if (src[i++] !== ')') fail('unbalanced parenthesis');
      // A lookaround is zero-width, but its content runs at each attempt: it stays in the path.
      return { k: 'group', body };
    }
    if (c === '[') {
      // A class (with Oniguruma's nested classes and POSIX brackets): one character.
      let depth = 1;
      if (peek() === '^') i++;
      if (peek() === ']') i++;
      while (i < src.length && depth > 0) {
        const d = src[i++];
        if (d === '\\') i++;
        else if (d === '[') depth++;
        else if (d === ']') depth--;
      }
      if (depth > 0) fail('unterminated character class');
      return { k: 'atom' };
    }
    if (c === '\\') {
      const e = src[i++];
      if (e === undefined) fail('trailing backslash');
      if (/[1-9]/.test(e)) {
        while (/[0-9]/.test(peek() ?? '')) i++;
        return { k: 'backref' };
      }
      if (e === 'k' && (peek() === '<' || peek() === "'")) {
        const end = src.indexOf(peek() === '<' ? '>' : "'", i + 1);
        if (end < 0) fail('unterminated backreference');
        i = end + 1;
        return { k: 'backref' };
      }
      if ((e === 'p' || e === 'P' || e === 'u' || e === 'x' || e === 'o') && peek() === '{') {
        const end = src.indexOf('}', i);
        if (end < 0) fail('unterminated escape');
        i = end + 1;
      } else if (e === 'u') i += 4;
      else if (e === 'x') i += 2;
      else if (e === 'c') i += 1;
      return { k: 'atom' };
    }
    if (c === ')') fail('unbalanced parenthesis');
    if (c === '*' || c === '+' || c === '?') fail('nothing to repeat');
    return { k: 'atom' };
  }

  const tree = parseAlt();
  if (i < src.length) fail('unbalanced parenthesis');
  return tree;
}

/** Can this sub-pattern match the same text in more than one way (or text that depends on earlier captures)? */
function ambiguous(n: Node): boolean {
  switch (n.k) {
    case 'atom': return false;
    case 'backref': return true;
    case 'seq': return n.items.some(ambiguous);
    case 'alt': return true;
    case 'group': return ambiguous(n.body);
    case 'rep': return n.max !== n.min || ambiguous(n.body);
  }
}

/** Unbounded repetitions along the worst path. */
function degree(n: Node): number {
  switch (n.k) {
    case 'atom': case 'backref': return 0;
    case 'seq': return n.items.reduce((s, x) => s + degree(x), 0);
    case 'alt': return Math.max(...n.branches.map(degree));
    case 'group': return degree(n.body);
    case 'rep': return (n.max > BOUNDED_COPIES ? 1 : 0) + degree(n.body);
  }
}

/** Combinations of bounded choices (an upper bound, capped to stay finite). */
function choices(n: Node): number {
  const cap = (x: number) => Math.min(x, MAX_CHOICES * 2);
  switch (n.k) {
    case 'atom': case 'backref': return 1;
    case 'seq': return n.items.reduce((p, x) => cap(p * choices(x)), 1);
    case 'alt': return cap(n.branches.reduce((s, x) => s + choices(x), 0));
    case 'group': return choices(n.body);
    case 'rep': return cap((n.max > BOUNDED_COPIES ? 1 : n.max - n.min + 1) * choices(n.body));
  }
}

/** Why `pattern` could backtrack catastrophically, or null when its structure bounds the backtracking. */
export function regexBacktrackingRisk(pattern: string): string | null {
  let tree: Node;
  try {
    tree = parse(pattern);
  } catch (e) {
    if (e instanceof RegexSyntaxError) return `it cannot be analysed (${e.message})`;
    throw e;
  }
  const nested = (n: Node): string | null => {
    if (n.k === 'rep' && n.max > 1 && ambiguous(n.body)) {
      return 'it repeats a part that can itself match in several ways (like (a+)+ or (a|aa)*), which backtracks exponentially';
    }
    const kids = n.k === 'seq' ? n.items : n.k === 'alt' ? n.branches : n.k === 'group' || n.k === 'rep' ? [n.body] : [];
    for (const k of kids) {
      const why = nested(k);
      if (why) return why;
    }
    return null;
  };
  const why = nested(tree);
  if (why) return why;
  const d = degree(tree);
  if (d > MAX_UNBOUNDED_PER_PATH) return `it has ${d} unbounded repetitions along one path (at most ${MAX_UNBOUNDED_PER_PATH} are allowed: each multiplies the backtracking by the text length)`;
  if (choices(tree) > MAX_CHOICES) return `it has more than ${MAX_CHOICES} combinations of optional parts and alternatives along its paths`;
  return null;
}

/**
 * Every `{"Regex": ...}` pattern in a tokenizer.json document, with where it is
 * ("pre_tokenizer.pretokenizers[0].pattern"), for {@link regexBacktrackingRisk}.
 */
export function tokenizerRegexes(doc: unknown): Array<{ where: string; pattern: string }> {
  const out: Array<{ where: string; pattern: string }> = [];
  const walk = (v: unknown, where: string, depth: number) => {
    if (v === null || typeof v !== 'object' || depth > 32) return;
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${where}[${i}]`, depth + 1));
      return;
    }
    for (const [k, x] of Object.entries(v)) {
      if (k === 'Regex' && typeof x === 'string') out.push({ where, pattern: x });
      // The vocabulary and merges hold no patterns and are most of the file.
      else if (k !== 'vocab' && k !== 'merges' && k !== 'added_tokens') walk(x, where ? `${where}.${k}` : k, depth + 1);
    }
  };
  walk(doc, '', 0);
  return out;
}
