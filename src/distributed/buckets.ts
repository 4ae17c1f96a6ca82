/**
 * Gradient all-reduce in buckets, as PyTorch DDP does it: the gradients are packed into a few
 * flat f32 buffers (up to `capBytes` each, 25 MiB as DDP's bucket_cap_mb), each summed over
 * the ranks in one collective, then unpacked. One large message per bucket instead of one per
 * tensor: a LoRA on every Linear of a 30-layer model has ~400 small gradients, and each
 * collective costs a network round trip. Copies in and out are memcpy speed, small next to a step.
 */
import { PeftkitError } from '../errors';
import { Tensor } from '../tensor';
import type { ProcessGroup } from './group';

interface Slot {
  grad: Tensor;
  /** The gradient's place in its bucket (a view that shares the bucket's memory). */
  view: Tensor;
}

export class GradBuckets {
  private readonly buckets: Array<{ flat: Tensor; slots: Slot[] }> = [];

  /** `grads` with names for errors; all f32 on the CPU (the Gloo path). */
  constructor(grads: ReadonlyArray<{ name: string; grad: Tensor }>, capBytes = 25 << 20) {
    const groups: Array<Array<{ name: string; grad: Tensor }>> = [];
    let size = Infinity;
    for (const g of grads) {
      if (g.grad.dtype !== 'f32') throw new PeftkitError('E_DTYPE', `${g.name}: data-parallel training all-reduces f32 gradients, this one is ${g.grad.dtype}`);
      if (g.grad.device !== 'cpu') throw new PeftkitError('E_DEVICE', `${g.name}: the Gloo all-reduce takes CPU gradients (CUDA needs NCCL, not built yet)`);
      const bytes = g.grad.numel * 4;
      if (size + bytes > capBytes && size > 0) {
        groups.push([]);
        size = 0;
      }
      groups[groups.length - 1].push(g);
      size += bytes;
    }
    for (const group of groups) {
      const n = group.reduce((a, g) => a + g.grad.numel, 0);
      const flat = Tensor.empty([n]);
      let off = 0;
      const slots = group.map((g) => {
        const view = flat.view(off, [g.grad.numel]);
        off += g.grad.numel;
        return { grad: g.grad, view };
      });
      this.buckets.push({ flat, slots });
    }
  }

  get count(): number {
    return this.buckets.length;
  }

  /** Sums every gradient over the ranks, in place. */
  allReduce(group: ProcessGroup): void {
    for (const [i, b] of this.buckets.entries()) {
      for (const s of b.slots) s.view.copyFrom(s.grad);
      group.allReduceSum(b.flat, `gradient bucket ${i + 1} of ${this.buckets.length}`);
      for (const s of b.slots) s.grad.copyFrom(s.view);
    }
  }

  dispose(): void {
    for (const b of this.buckets) {
      for (const s of b.slots) s.view.dispose();
      b.flat.dispose();
    }
    this.buckets.length = 0;
  }
}
