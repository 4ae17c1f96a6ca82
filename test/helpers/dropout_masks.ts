/**
 * The dropout masks of a training run, recorded where its Linear sites draw them (the seed and
 * stream offset each call gets, the mask regenerated from them by the engine's dropout). They are
 * the input of the dropout goldens: torch's RNG cannot draw peftkit's masks, so the PyTorch script
 * (scripts/golden/torch_dora_dropout.py) reads them from the fixture's dropout_masks.json and
 * applies them where PEFT's nn.Dropout would draw its own; the golden test checks that its run
 * draws exactly these.
 *
 * Script use, after `npx tsc` (the fixture's model must exist; B and T come from <arch>_lora):
 *   node dist/test/helpers/dropout_masks.js <arch>_<lora|dora>_dropout <p>
 * writes test/golden/methods/<fixture>/dropout_masks.json: the masks of 3 optimizer steps of a
 * Trainer over that window (seed 0, every Linear targeted), as methods_golden.test.ts runs it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ops, Tensor } from '../../src/index';
import { LlamaModel } from '../../src/model/llama';
import type { ModelAdapter, SiteCall } from '../../src/model/sites';
import { createAdapter } from '../../src/peft/registry';
import { Trainer } from '../../src/train/trainer';

/** One Linear call with dropout: where its mask comes from, and the mask ('1' kept, '0' dropped, row-major [rows, cols]). */
export interface MaskCall {
  step: number;
  /** Index of the micro-batch in the step's window. */
  micro_batch: number;
  module: string;
  seed: number;
  offset: number;
  rows: number;
  cols: number;
  keep: string;
}

export interface DropoutMasks {
  p: number;
  calls: MaskCall[];
}

type Drawn = Pick<MaskCall, 'module' | 'seed' | 'offset' | 'rows' | 'cols'> & { p: number };

/** Wraps the adapter's Linear sites so that every forward with dropout is noted; returns the list they fill. */
export function recordDropout(adapter: ModelAdapter): Drawn[] {
  const drawn: Drawn[] = [];
  const linear = adapter.linear.bind(adapter);
  adapter.linear = (module: string) => {
    const site = linear(module);
    return site && {
      forward(Y: Tensor, X: Tensor, base, call: SiteCall) {
        if (call.dropout > 0) drawn.push({ module, seed: call.dropoutSeed, offset: call.streamOffset, rows: X.shape[0], cols: X.shape[1], p: call.dropout });
        site.forward(Y, X, base, call);
      },
      backward: site.backward.bind(site),
    };
  };
  return drawn;
}

/** The masks of what one optimizer step drew (its micro-batches numbered by their seeds, in order). */
export function stepMasks(drawn: readonly Drawn[], step: number): MaskCall[] {
  const seeds = [...new Set(drawn.map((d) => d.seed))];
  return drawn.map((d) => {
    const ones = Tensor.from(new Float32Array(d.rows * d.cols).fill(1), [d.rows, d.cols]);
    ops.dropoutForward(ones, ones, { p: d.p, seed: d.seed, offset: d.offset });
    const keep = Array.from(ones.toFloat32Array(), (v) => (v === 0 ? '0' : '1')).join('');
    ones.dispose();
    return { step, micro_batch: seeds.indexOf(d.seed), module: d.module, seed: d.seed, offset: d.offset, rows: d.rows, cols: d.cols, keep };
  });
}

function main(fixture: string, p: number): void {
  const m = /^(llama_tied|llama|qwen2)_(lora|dora)_dropout$/.exec(fixture);
  if (!m || !(p > 0 && p < 1)) throw new Error('usage: node dropout_masks.js <llama|llama_tied|qwen2>_<lora|dora>_dropout <p in (0, 1)>');
  const root = path.join(__dirname, '..', '..', '..', 'test', 'golden', 'methods');
  const mbs = (JSON.parse(fs.readFileSync(path.join(root, `${m[1]}_lora`, 'expected.json'), 'utf8')) as { micro_batches: Array<{ input_ids: number[][]; labels: number[][] }> }).micro_batches;
  const window = mbs.map((mb) => ({ inputIds: Int32Array.from(mb.input_ids.flat()), labels: Int32Array.from(mb.labels.flat()), B: mb.input_ids.length, T: mb.input_ids[0].length }));
  const model = LlamaModel.load(path.join(root, 'models', m[1]));
  const adapter = createAdapter(m[2] as 'lora' | 'dora', model, { targets: 'all-linear', lora: { r: 4, lora_alpha: 8, lora_dropout: p } });
  const drawn = recordDropout(adapter);
  const trainer = new Trainer(model, adapter, { maxRows: window[0].B * window[0].T, maxT: window[0].T, dropout: p });
  const calls: MaskCall[] = [];
  for (let step = 0; step < 3; step++) {
    const from = drawn.length;
    trainer.step(window, 1e-2);
    calls.push(...stepMasks(drawn.slice(from), step));
  }
  trainer.dispose();
  adapter.dispose();
  model.dispose();
  const masks: DropoutMasks = { p, calls };
  fs.mkdirSync(path.join(root, fixture), { recursive: true });
  fs.writeFileSync(path.join(root, fixture, 'dropout_masks.json'), JSON.stringify(masks, null, 1) + '\n');
  console.log(`${fixture}: ${calls.length} masks, ${calls.reduce((a, c) => a + c.keep.length, 0)} elements, p ${p}`);
}

if (require.main === module) main(process.argv[2], Number(process.argv[3]));
