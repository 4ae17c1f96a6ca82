/**
 * Through a training step on the GPU the activations, gradients and optimizer states stay on the
 * device (issue 13: no host round trips but the loss and the gradient norm): deviceCopyCounts()
 * counts every host<->GPU copy where it is made, and one step (after a warm-up step, which
 * uploads the RoPE table once) may bring back only its scalars, in one copy, for every method.
 * cuda rows only: on the cpu nothing is copied, so a cpu row could not fail.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceCopyCounts } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import * as ops from '../src/ops';
import { writeRandomModel } from '../src/model/random_model';
import { AdapterMethod, createAdapter, CreateAdapterOptions } from '../src/peft/registry';
import type { OptimName } from '../src/train/optimizer';
import { Trainer } from '../src/train/trainer';
import { deviceTest } from './helpers/device_test';

interface Row {
  name: string;
  method: AdapterMethod;
  options?: CreateAdapterOptions;
  optim?: OptimName;
  /** Host-to-device copies of an update beyond each micro-batch's ids and targets (the 8-bit optimizer's tensor list). */
  upPerUpdate?: number;
}

// Every method that trains on a GPU, on the paths users take (P-tuning's LSTM encoder is the one
// left out: PyTorch's nn.LSTM over 20 virtual tokens runs on the host in float64 by design, its
// output and gradients copied once a step).
const ROWS: Row[] = [
  { name: 'LoRA', method: 'lora', options: { targets: 'all-linear', lora: { r: 8, lora_alpha: 16, lora_dropout: 0.1 } } },
  { name: 'LoRA, 8-bit AdamW', method: 'lora', optim: 'adamw8bit', upPerUpdate: 2 },
  { name: 'LoRA, paged 8-bit AdamW', method: 'lora', optim: 'paged_adamw8bit', upPerUpdate: 2 },
  { name: 'DoRA', method: 'dora', options: { targets: 'all-linear' } },
  { name: 'IA3', method: 'ia3' },
  { name: 'BitFit', method: 'bitfit' },
  { name: 'LayerNorm tuning', method: 'ln' },
  { name: 'diff pruning, after its prune step', method: 'diff', options: { targets: 'all-linear', diff: { density: 0.1, pruneStep: 1 } } },
  { name: 'bottleneck adapters', method: 'adapter' },
  { name: 'prompt tuning', method: 'prompt', options: { numVirtualTokens: 4 } },
  { name: 'P-tuning (MLP encoder)', method: 'p-tuning', options: { numVirtualTokens: 4, encoderHiddenSize: 16 } },
  { name: 'prefix tuning with its projection', method: 'prefix', options: { numVirtualTokens: 4, prefixProjection: true, encoderHiddenSize: 16 } },
  { name: 'full fine-tuning', method: 'full' },
];

for (const row of ROWS) {
  deviceTest('cuda', `${row.name}: a training step brings back one copy, its loss, gradient norm, parameter norms and index checks together`, (t, device) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-copies-'));
    writeRandomModel(dir, { hiddenSize: 64, intermediateSize: 160, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 7 });
    const model = LlamaModel.load(dir, { device });
    const adapter = createAdapter(row.method, model, { seed: 5, ...row.options });
    const B = 2, T = 24;
    const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 37) % 200));
    const batch = { inputIds: ids, labels: ids, B, T };
    const trainer = new Trainer(model, adapter, { maxRows: B * (T + 8), maxT: T + 8, maxGradNorm: 1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, optim: row.optim });
    try {
      // Warm-up: the RoPE table is uploaded once, diff pruning prunes after its second update.
      trainer.step([batch], 1e-3);
      trainer.step([batch], 1e-3);
      const before = deviceCopyCounts();
      // Two micro-batches (accumulation): still one copy back for the whole step.
      trainer.step([batch, batch], 1e-3);
      const after = deviceCopyCounts();
      const toHost = after.toHost - before.toHost, toHostBytes = after.toHostBytes - before.toHostBytes;
      const toDevice = after.toDevice - before.toDevice;
      t.log(`to host: ${toHost} copies, ${toHostBytes} bytes; to device: ${toDevice} copies, ${after.toDeviceBytes - before.toDeviceBytes} bytes`);
      // Back: the step's f64 scalars (Trainer: loss sum, ‖g‖², ‖θ‖² after the last update and
      // before this one, the 6-double index-fault record), in one copy.
      t.is(toHost, 1);
      t.is(toHostBytes, 8 * (4 + ops.INDEX_FAULT_DOUBLES));
      // Up: each micro-batch's ids and targets, and what the optimizer sends.
      t.is(toDevice, 2 * 2 + (row.upPerUpdate ?? 0));
    } finally {
      trainer.dispose();
      adapter.dispose();
      model.dispose();
    }
  });
}
