/**
 * Packing, as HF's `group_texts` and TRL's classic ConstantLengthDataset: the examples of an
 * epoch, in that epoch's order, are laid end to end and cut into rows of exactly `rowLength`
 * tokens (the last row of an epoch may be shorter). An example can continue into the next row.
 *
 * At each example's first token the label is set to -100, so no loss is taken for predicting one
 * example's start from the previous example's end (usually its EOS). Attention is NOT masked at
 * the boundary: a token can attend to earlier examples in the same row, as in classic packing.
 */
import { IGNORE_INDEX } from './rows';
import type { Example } from './encode';

export interface PackedLayout {
  /** Example indices in the epoch's order. */
  order: ArrayLike<number>;
  /** starts[k] = token offset of order[k] in the epoch's stream; starts[n] = total tokens. */
  starts: Float64Array;
  rowLength: number;
  rows: number;
}

export function packLayout(examples: readonly Example[], order: ArrayLike<number>, rowLength: number): PackedLayout {
  const n = order.length;
  const starts = new Float64Array(n + 1);
  for (let k = 0; k < n; k++) starts[k + 1] = starts[k] + examples[order[k]].inputIds.length;
  return { order, starts, rowLength, rows: Math.ceil(starts[n] / rowLength) };
}

/** Largest k with starts[k] <= pos: the example holding stream offset pos (pos < total). */
function exampleAt(starts: Float64Array, pos: number): number {
  let lo = 0;
  let hi = starts.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >>> 1;
    if (starts[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

export interface PackedRow {
  inputIds: number[];
  labels: number[];
  /** Indices of the examples with tokens in this row, in order. */
  examples: number[];
}

/** Row `r` of the layout. */
export function packedRow(examples: readonly Example[], layout: PackedLayout, r: number): PackedRow {
  const { order, starts, rowLength } = layout;
  const total = starts[starts.length - 1];
  const from = r * rowLength;
  const to = Math.min(from + rowLength, total);
  const row: PackedRow = { inputIds: [], labels: [], examples: [] };
  for (let k = exampleAt(starts, from); k < order.length && starts[k] < to; k++) {
    const ex = examples[order[k]];
    const a = Math.max(from, starts[k]) - starts[k];
    const b = Math.min(to, starts[k + 1]) - starts[k];
    if (b <= a) continue;
    row.examples.push(order[k]);
    for (let t = a; t < b; t++) {
      row.inputIds.push(ex.inputIds[t]);
      row.labels.push(t === 0 ? IGNORE_INDEX : ex.labels[t]);
    }
  }
  return row;
}
