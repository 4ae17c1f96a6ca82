/**
 * Every method against PyTorch: scripts/golden/torch_methods.py wrote small random checkpoints
 * (llama3 rope with theta 5e5 and rms_norm_eps 1e-6, a tied Llama, a Qwen2 with q/k/v biases), a
 * starting adapter of each method with non-trivial values, and 3 AdamW steps of a PyTorch
 * implementation of the method on the HF architecture: windows of 2 micro-batches, clipping that
 * clips, a cosine schedule with warmup, transformers' no-decay groups. peftkit must agree to 1e-5.
 * A fixture with dropout_masks.json trains with LoRA dropout (scripts/golden/torch_dora_dropout.py):
 * the PyTorch run applied those masks, so this run must draw exactly them.
 */
import test from 'ava';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LlamaModel } from '../src/model/llama';
import { KvGenerator } from '../src/model/llama_generate';
import { SafetensorsCheckpoint } from '../src/model/safetensors';
import type { PeftMethod } from '../src/peft/method';
import { createAdapter, loadAdapter } from '../src/peft/registry';
import { lrAt } from '../src/train/schedule';
import { Trainer } from '../src/train/trainer';
import { ALL_DEVICES, relErr } from './helpers/check';
import { deviceTest } from './helpers/device_test';
import { DropoutMasks, recordDropout, stepMasks } from './helpers/dropout_masks';

const ROOT = path.join(__dirname, '..', '..', 'test', 'golden', 'methods');
/** On cuda too: f32 compute runs exact f32 on the CUDA cores (no TF32), and the kernel tests hold both devices to 1e-5. */
const TOL = 1e-5;
/**
 * k_proj biases: adding b to every key shifts each query's scores by q·R(t)b, nearly the same at
 * every position in the slowly rotating RoPE dimensions, where softmax cancels it. Their
 * gradient there is near zero, i.e. f32 rounding noise, which AdamW's normalisation turns into
 * lr-sized steps; torch's own f32 and f64 runs differ by 4e-6 on them (expected.json).
 */
const tolFor = (fixture: string, name: string) => {
  if (!/k_proj\.bias$/.test(name)) return TOL;
  // Full fine-tuning moves q and k themselves: torch's f32 and f64 runs differ by 7e-4 there (expected.json).
  return fixture === 'qwen2_full' ? 2e-3 : 1e-4;
};

interface Expected {
  arch: string;
  method: string;
  micro_batches: Array<{ input_ids: number[][]; labels: number[][] }>;
  hyper: {
    trainable?: string;
    lora_dropout?: number;
    lr: number; betas: [number, number]; eps: number; weight_decay: number; steps: number; grad_accum: number; max_grad_norm: number;
    schedule: 'cosine'; warmup_steps: number; total_steps: number; no_decay: string[];
  };
  losses: number[];
  grad_norms: number[];
  lrs: number[];
  final_loss: number;
  logits_row0: number[][];
}

/** The reference names a LoRA-wrapped module's bias <module>.bias; peftkit writes PEFT's <module>.base_layer.bias. */
const refName = (n: string) => n.replace(/\.base_layer\.bias$/, '.bias');

/** The fixture's starting point: its adapter_in, or for full fine-tuning the model itself. */
function startingAdapter(dir: string, exp: Expected, model: LlamaModel): PeftMethod {
  return exp.method === 'full' ? createAdapter('full', model, { trainable: exp.hyper.trainable }) : loadAdapter(path.join(dir, 'adapter_in'), model.config, { device: model.device });
}

const fixtures = fs.readdirSync(ROOT).filter((d) => d !== 'models' && fs.existsSync(path.join(ROOT, d, 'expected.json'))).sort();

test('the golden tree holds every method on every architecture', (t) => {
  for (const arch of ['llama', 'llama_tied', 'qwen2']) {
    for (const m of ['lora', 'dora', 'ia3', 'ln_tuning', 'bitfit', 'diff', 'full', 'p_tuning', 'p_tuning_lstm']) t.true(fixtures.includes(`${arch}_${m}`), `${arch}_${m}`);
  }
});

/** Methods whose reference files are in the tree but which peftkit does not train yet ("PEFT methods, part 2"). */
const NOT_YET = new Set<string>();

for (const name of fixtures) {
  const method = (JSON.parse(fs.readFileSync(path.join(ROOT, name, 'expected.json'), 'utf8')) as Expected).method;
  if (NOT_YET.has(method)) {
    test.skip(`${name}: method '${method}' is not implemented yet (its PyTorch reference is ready for "PEFT methods, part 2")`, () => {});
    continue;
  }
  for (const device of ALL_DEVICES) deviceTest(device, `${name}: 3 AdamW steps (accumulation 2, clipping, cosine warmup) match PyTorch to 1e-5`, (t) => {
    const dir = path.join(ROOT, name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
    const model = LlamaModel.load(path.join(ROOT, 'models', exp.arch), { device });
    const adapter = startingAdapter(dir, exp, model);
    const h = exp.hyper;
    const window = exp.micro_batches.map((mb) => ({
      inputIds: Int32Array.from(mb.input_ids.flat()), labels: Int32Array.from(mb.labels.flat()), B: mb.input_ids.length, T: mb.input_ids[0].length,
    }));
    const T = window[0].T;
    const masksFile = path.join(dir, 'dropout_masks.json');
    const masks = fs.existsSync(masksFile) ? JSON.parse(fs.readFileSync(masksFile, 'utf8')) as DropoutMasks : null;
    t.is(masks?.p, h.lora_dropout, 'the masks are drawn with the fixture\'s lora_dropout');
    const dropout = masks?.p ?? 0;
    const drawn = masks ? recordDropout(adapter) : [];
    const trainer = new Trainer(model, adapter, {
      maxRows: window[0].B * T, maxT: T, dropout, maxGradNorm: h.max_grad_norm, betas: h.betas, eps: h.eps, weightDecay: h.weight_decay,
    });
    try {
      // The no-decay groups are the method's own (names of biases and norms).
      const noDecay = adapter.parameters().filter((p) => p.decay === false).map((p) => refName(p.name)).sort();
      t.deepEqual(noDecay, [...h.no_decay].sort(), 'parameters without weight decay');
      // Step 0's accumulated gradients, before clipping.
      const tokens = window.reduce((a, b) => a + trainer.forward.labelTokens(b), 0);
      adapter.zeroGrad();
      // With dropout, the masks of step 0's micro-batches (the seeds the trainer gives them).
      const seedOf = (i: number) => masks?.calls.find((c) => c.step === 0 && c.micro_batch === i)?.seed ?? 0;
      window.forEach((b, i) => trainer.forward.run(b, { dropout, dropoutSeed: seedOf(i) }, 1 / tokens));
      adapter.prepareGrads?.();
      const g = new SafetensorsCheckpoint(dir, 'grads_step0.safetensors');
      let worstGrad = 0;
      for (const p of adapter.parameters()) {
        const e = relErr(p.grad.toFloat32Array(), g.readFloat32(refName(p.name), p.param.shape));
        worstGrad = Math.max(worstGrad, e);
        t.true(e <= TOL, `step-0 gradient of ${p.name}: relative error ${e.toExponential(2)}`);
      }
      for (let s = 0; s < h.steps; s++) {
        const lr = lrAt(s, { schedule: h.schedule, lr: h.lr, warmupSteps: h.warmup_steps, totalSteps: h.total_steps });
        t.true(Math.abs(lr - exp.lrs[s]) <= 1e-12, `lr at step ${s}: ${lr} vs ${exp.lrs[s]}`);
        const from = drawn.length;
        const r = trainer.step(window, lr);
        if (masks) t.deepEqual(stepMasks(drawn.slice(from), s), masks.calls.filter((c) => c.step === s), `step ${s} draws the masks PyTorch applied`);
        t.true(Math.abs(r.loss - exp.losses[s]) <= TOL * Math.abs(exp.losses[s]), `step ${s}: loss ${r.loss} vs torch ${exp.losses[s]}`);
        t.true(Math.abs(r.gradNorm - exp.grad_norms[s]) <= TOL * exp.grad_norms[s], `step ${s}: grad norm ${r.gradNorm} vs ${exp.grad_norms[s]}`);
        t.true(r.gradNorm > h.max_grad_norm, 'the fixture clips');
      }
      // Diff pruning's trained δ in its dense form (the sparse file is checked below); a trained
      // prompt encoder beside the file PEFT writes (its output, checked below).
      const encoded = fs.existsSync(path.join(dir, 'adapter_out_encoder.safetensors'));
      const out = new SafetensorsCheckpoint(dir, exp.method === 'diff' ? 'adapter_out_dense.safetensors' : encoded ? 'adapter_out_encoder.safetensors' : 'adapter_out.safetensors');
      t.deepEqual([...adapter.stateDict().keys()].map(refName).sort(), [...out.tensors.keys()].sort(), 'the adapter holds the reference\'s tensors');
      let worst = 0;
      let floor = 0;
      for (const [tensorName, value] of adapter.stateDict()) {
        const ref = out.readFloat32(refName(tensorName));
        // An entry whose step-0 gradient is at f32's noise floor (below 1e-5 of the tensor's largest)
        // has a sign that rounding decides, and AdamW turns that into a step of up to lr: such
        // entries must stay within the steps' lr, the rest match to the tolerance.
        const g0 = g.has(refName(tensorName)) ? g.readFloat32(refName(tensorName)) : null;
        const gmax = g0 ? g0.reduce((a, x) => Math.max(a, Math.abs(x)), 0) : 0;
        const noisy = (i: number) => g0 !== null && g0.length === value.length && g0[i] !== 0 && Math.abs(g0[i]) < 1e-5 * gmax;
        const a = value.filter((_, i) => !noisy(i)), r = ref.filter((_, i) => !noisy(i));
        for (let i = 0; i < value.length; i++) {
          if (!noisy(i)) continue;
          floor++;
          t.true(Math.abs(value[i] - ref[i]) <= h.lr * h.steps, `${tensorName}[${i}]: a noise-floor gradient moved it by ${Math.abs(value[i] - ref[i])}`);
        }
        const e = relErr(a, r);
        worst = Math.max(worst, e);
        t.true(e <= tolFor(name, tensorName), `${tensorName}: relative error ${e.toExponential(2)} after ${h.steps} steps`);
      }
      if (exp.method === 'diff') {
        // The saved adapter keeps exactly the reference's entries (the same pruning decisions).
        const saved = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-diff-'));
        adapter.writeFiles(saved);
        const mine = new SafetensorsCheckpoint(saved, 'adapter_model.safetensors');
        const ref = new SafetensorsCheckpoint(dir, 'adapter_out.safetensors');
        for (const n of ref.tensors.keys()) {
          if (n.endsWith('diff_indices')) t.deepEqual(Buffer.from(mine.readBytes(n)), Buffer.from(ref.readBytes(n)), `${n}: the same kept entries`);
          else t.true(relErr(mine.readFloat32(n), ref.readFloat32(n)) <= TOL, n);
        }
        fs.rmSync(saved, { recursive: true, force: true });
      }
      if (encoded) {
        const saved = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-encoded-'));
        adapter.writeFiles(saved);
        const mine = new SafetensorsCheckpoint(saved, 'adapter_model.safetensors');
        const ref = new SafetensorsCheckpoint(dir, 'adapter_out.safetensors');
        t.deepEqual([...mine.tensors.keys()].sort(), [...ref.tensors.keys()].sort(), 'the file PEFT reads');
        for (const n of ref.tensors.keys()) t.true(relErr(mine.readFloat32(n), ref.readFloat32(n)) <= TOL, `${n} as saved`);
        fs.rmSync(saved, { recursive: true, force: true });
      }
      const final = trainer.evaluate(window);
      t.true(Math.abs(final.loss - exp.final_loss) <= TOL * exp.final_loss, `final loss ${final.loss} vs ${exp.final_loss}`);
      t.log(`worst relative error: step-0 gradients ${worstGrad.toExponential(2)}, adapter after ${h.steps} steps ${worst.toExponential(2)} (${floor} entries with a noise-floor gradient held to lr·steps)`);
    } finally {
      trainer.dispose();
      adapter.dispose();
      model.dispose();
    }
  });

  for (const device of ALL_DEVICES) deviceTest(device, `${name}: generation with the KV cache gives PyTorch's logits with adapter_in`, (t) => {
    const dir = path.join(ROOT, name);
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
    const model = LlamaModel.load(path.join(ROOT, 'models', exp.arch), { device });
    const adapter = startingAdapter(dir, exp, model);
    const ids = exp.micro_batches[0].input_ids[0];
    const g = new KvGenerator(model, ids.length, adapter);
    try {
      let worst = 0;
      ids.forEach((id, i) => {
        worst = Math.max(worst, relErr(g.feed([id]), Float32Array.from(exp.logits_row0[i])));
      });
      t.true(worst <= TOL, `worst logits relative error ${worst.toExponential(2)}`);
    } finally {
      g.dispose();
      adapter.dispose();
      model.dispose();
    }
  });
}
