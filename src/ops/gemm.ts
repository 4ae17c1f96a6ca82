import { native } from '../native';
import { Tensor } from '../tensor';

/**
 * The precision of a big product. `'f32'`: operands as stored (a bf16 operand is exact in f32).
 * `'bf16'`: PyTorch autocast's bf16 matmul: f32 operands are rounded to bf16 (nearest even, as
 * `.to(torch.bfloat16)`) while the GEMM packs them, products of bf16 values are summed in f32,
 * and the result stays f32. On CPUs with AVX512-BF16 it runs on VDPBF16PS (about twice the f32
 * rate); elsewhere the same rounded values go through the f32 kernels, so results agree.
 */
export type Compute = 'f32' | 'bf16';

export interface GemmOptions {
  /** Use Aᵀ (A is stored [K, M]). Defaults to `false`. */
  transA?: boolean;
  /** Use Bᵀ (B is stored [N, K]); `X·Wᵀ` for a Linear weight W [out, in]. Defaults to `false`. */
  transB?: boolean;
  /** Defaults to `1`. */
  alpha?: number;
  /** `0` overwrites C without reading it; `1` accumulates. Defaults to `0`. */
  beta?: number;
  /** {@link Compute}. Defaults to `'f32'`. */
  compute?: Compute;
}

/** `C = alpha·op(A)·op(B) + beta·C`. A, B, C are 2-D, f32 or bf16 (bf16 accumulates in f32). */
export function gemm(C: Tensor, A: Tensor, B: Tensor, o: GemmOptions = {}): void {
  native.gemm(C.native, A.native, B.native, o.transA ?? false, o.transB ?? false, o.alpha ?? 1, o.beta ?? 0, o.compute ?? 'f32');
}

/** {@link gemm} on the thread pool. */
export function gemmAsync(C: Tensor, A: Tensor, B: Tensor, o: GemmOptions = {}): Promise<void> {
  return native.gemmAsync(C.native, A.native, B.native, o.transA ?? false, o.transB ?? false, o.alpha ?? 1, o.beta ?? 0,
    o.compute ?? 'f32');
}

/** One product of {@link gemmSum}: `alpha·op(A)·op(B)`. */
export interface GemmTerm {
  A: Tensor;
  B: Tensor;
  /** Defaults to `false`. */
  transA?: boolean;
  /** Defaults to `false`. */
  transB?: boolean;
  /** Defaults to `1`. */
  alpha?: number;
}

function termArgs(terms: readonly GemmTerm[]): Array<Tensor['native'] | boolean | number> {
  return terms.flatMap((t) => [t.A.native, t.B.native, t.transA ?? false, t.transB ?? false, t.alpha ?? 1]);
}

/**
 * `C = Σ alpha·op(A)·op(B) + beta·C` over the terms (each product has C's shape, K may differ).
 * On the CPU the terms' K ranges are concatenated inside the GEMM, so C is written once: the
 * fused form of `X·Wᵀ + s·(X·Aᵀ)·Bᵀ`. `beta` defaults to `0` (C is not read).
 */
export function gemmSum(C: Tensor, terms: readonly GemmTerm[], o: { beta?: number } = {}): void {
  native.gemmSum(C.native, o.beta ?? 0, ...termArgs(terms));
}

/** {@link gemmSum} on the thread pool. */
export function gemmSumAsync(C: Tensor, terms: readonly GemmTerm[], o: { beta?: number } = {}): Promise<void> {
  return native.gemmSumAsync(C.native, o.beta ?? 0, ...termArgs(terms));
}
