/**
 * Through a training step on the GPU the activations, gradients and optimizer states stay on the
 * device (issue 13: no host round trips but the loss and the gradient norm): deviceCopyCounts()
 * counts every host<->GPU copy where it is made, and one step (after a warm-up step, which
 * uploads the RoPE table once) may bring back only its scalars, in one copy.
 * cuda row only: on the cpu nothing is copied, so a cpu row could not fail.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { deviceCopyCounts } from '../src/index';
import { LlamaModel } from '../src/model/llama';
import * as ops from '../src/ops';
import { writeRandomModel } from '../src/model/random_model';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { Trainer } from '../src/train/trainer';
import { deviceTest } from './helpers/device_test';

deviceTest('cuda', 'a LoRA training step brings back one copy: its loss, gradient norm, parameter norms and index checks together', (t, device) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-copies-'));
  writeRandomModel(dir, { hiddenSize: 64, intermediateSize: 160, numHeads: 4, numKvHeads: 2, numLayers: 2, seed: 7 });
  const model = LlamaModel.load(dir, { device });
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 8, lora_alpha: 16, target_modules: 'all-linear' }), { seed: 5, device });
  const B = 2, T = 24;
  const ids = Int32Array.from({ length: B * T }, (_, i) => 3 + ((i * 37) % 200));
  const batch = { inputIds: ids, labels: ids, B, T };
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 });
  try {
    trainer.step([batch], 1e-3);
    const before = deviceCopyCounts();
    // Two micro-batches (accumulation): still one copy back for the whole step.
    trainer.step([batch, batch], 1e-3);
    const after = deviceCopyCounts();
    const toHost = after.toHost - before.toHost, toHostBytes = after.toHostBytes - before.toHostBytes;
    const toDevice = after.toDevice - before.toDevice, toDeviceBytes = after.toDeviceBytes - before.toDeviceBytes;
    t.log(`to host: ${toHost} copies, ${toHostBytes} bytes; to device: ${toDevice} copies, ${toDeviceBytes} bytes`);
    // Back: the step's f64 scalars (Trainer: loss sum, ‖g‖², ‖θ‖² after the last update and
    // before this one, the 6-double index-fault record), in one copy.
    t.is(toHost, 1);
    t.is(toHostBytes, 8 * (4 + ops.INDEX_FAULT_DOUBLES));
    const rows = B * T;
    // Up: each micro-batch's ids and targets, nothing else.
    t.is(toDevice, 2 * 2);
    t.is(toDeviceBytes, 2 * (4 * B * T + 4 * rows));
  } finally {
    trainer.dispose();
    adapter.dispose();
    model.dispose();
  }
});
