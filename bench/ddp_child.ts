/**
 * One rank of bench/ddp.ts (or the single process): LoRA r=16 on every Linear of a benchmark
 * shape, `B` rows × `T` tokens per rank, 2 warm-up steps then `STEPS` timed ones. With the
 * torchrun variables set it joins the process group and the trainer all-reduces the gradients.
 *   node ddp_child.js DIR SHAPE STEPS B T
 * Prints one JSON line: median step s, median all-reduce s after the backward (waiting for the
 * slower rank included; with overlap what the backward did not hide), the same all-reduce timed
 * alone after a barrier (transfer only), the bucket count, the gradient bytes, and this
 * process's CPU seconds per timed step. PEFTKIT_DDP_OVERLAP / PEFTKIT_DDP_BUCKET_MB choose the overlap.
 */
import * as path from 'path';
import { GradBuckets } from '../src/distributed/buckets';
import { resolveDistributed } from '../src/distributed/env';
import { ProcessGroup } from '../src/distributed/group';
import { LlamaModel } from '../src/model/llama';
import { LoraAdapter } from '../src/peft/lora';
import { defaultLoraConfig } from '../src/peft/lora/config';
import { SeededRng } from '../src/util/rng';
import { backwardPoint, Trainer } from '../src/train/trainer';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const [dir, shape, stepsArg, bArg, tArg] = process.argv.slice(2);
  const steps = Number(stepsArg), B = Number(bArg), T = Number(tArg);
  const setup = resolveDistributed();
  const group = setup ? await ProcessGroup.join(setup, { prefix: 'bench' }) : undefined;
  const model = LlamaModel.load(path.join(dir, shape));
  const adapter = LoraAdapter.create(model.linearModules, defaultLoraConfig({ r: 16, lora_alpha: 32, target_modules: 'all-linear' }), { seed: 0 });
  const trainer = new Trainer(model, adapter, { maxRows: B * T, maxT: T, dropout: 0, maxGradNorm: 1, group });
  const rng = new SeededRng(1 + (group?.rank ?? 0));
  const ids = Int32Array.from({ length: B * T }, () => rng.nextU32() % model.config.vocabSize);
  const batch = { inputIds: ids, labels: ids, B, T };
  const stepS: number[] = [];
  const inStepS: number[] = [];
  let cpu = 0;
  for (let i = 0; i < steps + 2; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    trainer.step([batch], 2e-4);
    if (i >= 2) {
      stepS.push(Number(process.hrtime.bigint() - t0) / 1e9);
      inStepS.push(trainer.lastAllReduceS);
      const c = process.cpuUsage(c0);
      cpu += (c.user + c.system) / 1e6;
    }
  }
  const params = adapter.parameters();
  const bytes = params.reduce((a, p) => a + p.grad.numel * 4, 0);
  let aloneS: number | null = null;
  let count: number | null = null;
  if (group) {
    const buckets = new GradBuckets(params.map((p) => ({ name: p.name, grad: p.grad, ready: backwardPoint(p.name, model.config.numLayers) })), { capBytes: group.setup.bucketCapMb * 2 ** 20 });
    count = buckets.count;
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      group.barrier();
      const t0 = process.hrtime.bigint();
      buckets.allReduce(group);
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    aloneS = median(times);
    buckets.dispose();
  }
  process.stdout.write(JSON.stringify({
    rank: group?.rank ?? 0, stepS: median(stepS), allReduceInStepS: group ? median(inStepS) : null, allReduceAloneS: aloneS, buckets: count, gradBytes: bytes,
    cpuSPerStep: cpu / steps, tokensPerStep: B * T * (group?.size ?? 1),
  }) + '\n');
  trainer.dispose();
  adapter.dispose();
  model.dispose();
  await group?.close();
}
void main();
