/**
 * A batch whose rows use different adapters, seen by the layers as one adapter (S-LoRA / punica
 * semantics). Rows are ordered so that each adapter's rows are contiguous (a group); at a Linear
 * the frozen base runs once over every row — one [rows, in] GEMM, the weights read once — and each
 * group's site then turns its rows' base output into its own (`forwardOnBase`: LoRA adds its
 * low-rank product, IA3 scales columns), or, for a site without that form, runs its own forward on
 * its rows. Block sites (bottleneck adapters) run on their group's rows. Prefixes and virtual
 * tokens live in each row's KV cache (its prefill ran alone with its adapter), so nothing of them
 * is needed here. Adapters that change a weight every row reads whole — an RMSNorm scale (LN
 * tuning, full fine-tuning), the embeddings or the LM head (modules_to_save) — are refused.
 */
import { PeftkitError } from '../errors';
import type { Tensor } from '../tensor';
import { baseForward, BaseLinear, BlockSite, LinearSite, ModelAdapter, NormSite, SiteCall } from './sites';

/** The rows [start, start + count) of the batch use `adapter` (null: the base model). */
export interface RowGroup {
  start: number;
  count: number;
  adapter: ModelAdapter | null;
}

/** Views of row blocks, remembered per tensor: the layers pass the same buffers at every module and step. */
const blockViews = new WeakMap<Tensor, Map<number, Tensor>>();

/** Rows [start, start + count) of a [rows, features] tensor. */
function rowsOf(t: Tensor, start: number, count: number): Tensor {
  const F = t.shape[t.shape.length - 1];
  if (start === 0 && count * F === t.numel) return t;
  let views = blockViews.get(t);
  if (!views) blockViews.set(t, (views = new Map()));
  const key = start * 0x100000 + count;
  let v = views.get(key);
  if (!v) views.set(key, (v = t.view(start * F, [count, F])));
  return v;
}

/**
 * Throws E_UNSUPPORTED when `adapter` changes a weight shared by every row of a batch (a norm
 * scale, the embeddings or the LM head): such rows cannot share one forward with other adapters.
 * `normModules` are the model's RMSNorm module names; `label` names the adapter in the message.
 */
export function checkBatchable(adapter: ModelAdapter, normModules: readonly string[], label: string): void {
  const what = adapter.embedding?.() ? 'the token embeddings' : adapter.head?.() ? 'the LM head' : normModules.find((m) => adapter.norm(m)) ?? null;
  if (what) {
    throw new PeftkitError(
      'E_UNSUPPORTED',
      `generateBatch: adapter ${label} changes ${what}, which every row of a batch shares; ` +
        'batched generation takes adapters that act on Linear layers, blocks, prefixes or virtual tokens (LoRA, DoRA, IA3, BitFit, diff, bottleneck, prompt/prefix tuning): generate its requests alone',
    );
  }
}

/** One Linear of the batch: the base over all rows, then each group's site on its rows. */
class GroupedLinear implements LinearSite {
  constructor(private readonly groups: () => readonly RowGroup[], private readonly module: string) {}

  forward(Y: Tensor, X: Tensor, base: BaseLinear, call: SiteCall): void {
    const sites = this.groups().map((g) => ({ g, site: g.adapter?.linear(this.module) }));
    // Rows whose site has no forwardOnBase get their own product: skip the shared one when it is every row.
    if (sites.some(({ site }) => !site || site.forwardOnBase)) baseForward(base, Y, X);
    for (const { g, site } of sites) {
      if (!site) continue;
      const y = rowsOf(Y, g.start, g.count), x = rowsOf(X, g.start, g.count);
      if (site.forwardOnBase) site.forwardOnBase(y, x, base, call);
      else site.forward(y, x, base, call);
    }
  }

  backward(): void {
    throw new Error('internal: a batch of adapters is for generation only');
  }
}

/** A block site per group. */
class GroupedBlock implements BlockSite {
  constructor(private readonly groups: () => readonly RowGroup[], private readonly layer: number, private readonly part: 'attn' | 'mlp') {}

  forward(Z: Tensor, call: SiteCall): void {
    for (const g of this.groups()) g.adapter?.block?.(this.layer, this.part)?.forward(rowsOf(Z, g.start, g.count), call);
  }

  backward(): void {
    throw new Error('internal: a batch of adapters is for generation only');
  }
}

/**
 * The adapter of a batch: set `groups` before each forward (rows finish at different times, so
 * the groups change). Sites are made once per module and read the current groups.
 */
export class RowGroupAdapter implements ModelAdapter {
  readonly source = null;
  private current: readonly RowGroup[] = [];
  private readonly linears = new Map<string, GroupedLinear | undefined>();
  private readonly blocks = new Map<string, GroupedBlock | undefined>();
  private readonly adapters = new Set<ModelAdapter>();

  /** The rows' groups for the next forward: contiguous, in row order, covering every row. */
  set groups(gs: readonly RowGroup[]) {
    for (const g of gs) {
      if (g.adapter && !this.adapters.has(g.adapter)) throw new Error('internal: a row group with an adapter the batch was not made with');
    }
    this.current = gs;
  }

  /** @param adapters every adapter any row of the batch may use */
  constructor(adapters: Iterable<ModelAdapter>) {
    for (const a of adapters) this.adapters.add(a);
  }

  linear(module: string): LinearSite | undefined {
    if (!this.linears.has(module)) {
      const any = [...this.adapters].some((a) => a.linear(module));
      this.linears.set(module, any ? new GroupedLinear(() => this.current, module) : undefined);
    }
    return this.linears.get(module);
  }

  block(layer: number, part: 'attn' | 'mlp'): BlockSite | undefined {
    const key = `${layer}.${part}`;
    if (!this.blocks.has(key)) {
      const any = [...this.adapters].some((a) => a.block?.(layer, part));
      this.blocks.set(key, any ? new GroupedBlock(() => this.current, layer, part) : undefined);
    }
    return this.blocks.get(key);
  }

  norm(): NormSite | undefined {
    return undefined;
  }
}
