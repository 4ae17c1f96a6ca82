import { native } from '../native';
import { Tensor } from '../tensor';

export interface GemmOptions {
  /** Use Aᵀ (A is stored [K, M]). Defaults to `false`. */
  transA?: boolean;
  /** Use Bᵀ (B is stored [N, K]); `X·Wᵀ` for a Linear weight W [out, in]. Defaults to `false`. */
  transB?: boolean;
  /** Defaults to `1`. */
  alpha?: number;
  /** `0` overwrites C without reading it; `1` accumulates. Defaults to `0`. */
  beta?: number;
}

/** `C = alpha·op(A)·op(B) + beta·C`. A, B, C are 2-D, f32 or bf16 (bf16 accumulates in f32). */
export function gemm(C: Tensor, A: Tensor, B: Tensor, o: GemmOptions = {}): void {
  native.gemm(C.native, A.native, B.native, o.transA ?? false, o.transB ?? false, o.alpha ?? 1, o.beta ?? 0);
}

/** {@link gemm} on the thread pool. */
export function gemmAsync(C: Tensor, A: Tensor, B: Tensor, o: GemmOptions = {}): Promise<void> {
  return native.gemmAsync(C.native, A.native, B.native, o.transA ?? false, o.transB ?? false, o.alpha ?? 1, o.beta ?? 0);
}
