/** One measured kernel configuration, beside its peer when there is one. */
export interface BenchRow {
  kernel: string; // e.g. 'gemm f32 X·Wᵀ'
  shape: string; // e.g. 'M=1024 N=1536 K=576'
  ms: number; // median wall time per call
  gflops?: number;
  peer?: { name: string; ms: number; gflops?: number };
  note?: string;
}
