// GEMM on the GPU: C = alpha·op(A)·op(B) + beta·C. Where libcublasLt is loaded (cublaslt.cu)
// it takes the products it supports; these kernels take the rest, and everything without it.
// - Both operands bf16 values — stored bf16, or f32 marked round_bf16 (bf16 compute), rounded
//   to bf16 as they are loaded: tensor cores (WMMA bf16 16×16×16 fragments, f32 accumulation),
//   from compute capability 8.0.
// - Otherwise (an exact f32 operand, or an older GPU): a shared-memory tiled SGEMM on the CUDA
//   cores, bf16 operands widened on load and round_bf16 operands rounded on load.
// Both kernels stage 128×128 output tiles, load the next K slice into registers while the
// current one is multiplied (double-buffered shared memory, one barrier per slice), and pad
// every tile that overhangs M, N or K with zeros in shared memory, so any shape works.
#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

#include "common.cuh"
#include "cublaslt.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {

// C[row, col] = alpha·acc + beta·C[row, col]; C is not read when beta == 0.
__device__ __forceinline__ void store_c(void* C, DType cdtype, int64_t ldc, int64_t row, int64_t col, float acc,
                                        float alpha, float beta) {
  const int64_t idx = row * ldc + col;
  float v = alpha * acc;
  if (cdtype == DType::F32) {
    float* c = static_cast<float*>(C) + idx;
    *c = beta == 0.f ? v : v + beta * *c;
  } else {
    uint16_t* c = static_cast<uint16_t*>(C) + idx;
    *c = f32_to_bf16_bits(beta == 0.f ? v : v + beta * bf16_bits_to_f32(*c));
  }
}

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(uint16_t h) { return bf16_bits_to_f32(h); }

// ---- SIMT SGEMM: 128×128 tile per block of 256 threads, K slices of 8, 8×8 per thread -------
constexpr int kBM = 128, kBN = 128, kBK = 8, kPad = 4, kThreads = 256;
constexpr int kLoads = kBM * kBK / kThreads;  // elements of each operand a thread loads per slice
static_assert(kBM == kBN, "the loaders below assume square tiles");

// One K slice of op(A) (rows m, depth k) or of op(B)ᵀ (rows n, depth k), read in the order of
// the operand's contiguous dimension so that neighbouring threads read neighbouring addresses.
// kDepthContiguous: the k index is the fast one in memory (A not transposed, B transposed).
// round: each value is rounded to bf16 (f32 operands with round_bf16).
template <bool kDepthContiguous, typename T>
__device__ __forceinline__ void load_slice(float (&r)[kLoads], const T* p, int64_t ld, int64_t rows, int64_t depth,
                                           int64_t r0, int64_t k0, bool round) {
  for (int i = 0; i < kLoads; i++) {
    const int l = threadIdx.x + i * kThreads;
    const int rr = kDepthContiguous ? l / kBK : l % kBM, kk = kDepthContiguous ? l % kBK : l / kBM;
    const int64_t row = r0 + rr, k = k0 + kk;
    const float v = row < rows && k < depth ? widen(p[kDepthContiguous ? row * ld + k : k * ld + row]) : 0.f;
    r[i] = round ? bf16_bits_to_f32(f32_to_bf16_bits(v)) : v;
  }
}

template <bool kDepthContiguous>
__device__ __forceinline__ void store_slice(float (*s)[kBM + kPad], const float (&r)[kLoads]) {
  for (int i = 0; i < kLoads; i++) {
    const int l = threadIdx.x + i * kThreads;
    const int rr = kDepthContiguous ? l / kBK : l % kBM, kk = kDepthContiguous ? l % kBK : l / kBM;
    s[kk][rr] = r[i];
  }
}

// kTA / kTB: op(A) = Aᵀ / op(B) = Bᵀ. AT, BT: float or uint16_t (bf16 bits).
template <bool kTA, bool kTB, typename AT, typename BT>
__global__ void __launch_bounds__(kThreads)
    sgemm_tiled(int64_t M, int64_t N, int64_t K, float alpha, const AT* A, int64_t lda, bool round_a, const BT* B,
                int64_t ldb, bool round_b, float beta, void* C, DType cdtype, int64_t ldc) {
  // Slices are stored k-major: As[k][m], Bs[k][n]. The padding keeps the transposing stores of
  // the loaders free of bank conflicts and the rows 16-byte aligned for float4 reads.
  __shared__ __align__(16) float As[2][kBK][kBM + kPad];
  __shared__ __align__(16) float Bs[2][kBK][kBN + kPad];
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  // Thread (ty, tx) owns rows ty*4 + {0..3} and 64 + ty*4 + {0..3}, and likewise columns.
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;

  float acc[8][8] = {};
  float ra[kLoads], rb[kLoads];
  load_slice<!kTA>(ra, A, lda, M, K, m0, 0, round_a);
  load_slice<kTB>(rb, B, ldb, N, K, n0, 0, round_b);
  store_slice<!kTA>(As[0], ra);
  store_slice<kTB>(Bs[0], rb);
  __syncthreads();

  const int64_t slices = (K + kBK - 1) / kBK;
  for (int64_t s = 0; s < slices; s++) {
    const int cur = int(s & 1);
    const bool more = s + 1 < slices;
    if (more) {
      load_slice<!kTA>(ra, A, lda, M, K, m0, (s + 1) * kBK, round_a);
      load_slice<kTB>(rb, B, ldb, N, K, n0, (s + 1) * kBK, round_b);
    }
#pragma unroll
    for (int k = 0; k < kBK; k++) {
      float a[8], b[8];
      *reinterpret_cast<float4*>(a) = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
      *reinterpret_cast<float4*>(a + 4) = *reinterpret_cast<const float4*>(&As[cur][k][64 + ty * 4]);
      *reinterpret_cast<float4*>(b) = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
      *reinterpret_cast<float4*>(b + 4) = *reinterpret_cast<const float4*>(&Bs[cur][k][64 + tx * 4]);
#pragma unroll
      for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The other buffer was last read in iteration s-1, which ended with a barrier.
    if (more) {
      store_slice<!kTA>(As[cur ^ 1], ra);
      store_slice<kTB>(Bs[cur ^ 1], rb);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 8; i++) {
    const int64_t row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const int64_t col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
      if (col < N) store_c(C, cdtype, ldc, row, col, acc[i][j], alpha, beta);
    }
  }
}

template <typename AT, typename BT>
void launch_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const MatRef& A, const MatRef& B, float beta,
                  void* C, DType cdtype, int64_t ldc) {
  const dim3 grid(blocks_for(M, kBM), blocks_for(N, kBN));
  const AT* a = static_cast<const AT*>(A.data);
  const BT* b = static_cast<const BT*>(B.data);
  auto go = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream()>>>(M, N, K, alpha, a, A.ld, A.round_bf16 && A.dtype == DType::F32, b, B.ld,
                                            B.round_bf16 && B.dtype == DType::F32, beta, C, cdtype, ldc);
  };
  if (!A.trans && !B.trans) go(sgemm_tiled<false, false, AT, BT>);
  if (!A.trans && B.trans) go(sgemm_tiled<false, true, AT, BT>);
  if (A.trans && !B.trans) go(sgemm_tiled<true, false, AT, BT>);
  if (A.trans && B.trans) go(sgemm_tiled<true, true, AT, BT>);
}

// ---- Tensor cores: bf16 × bf16 → f32, 128×128 tile per block, K slices of 32 ---------------
// 8 warps in a 2×4 grid; each warp owns a 64×32 piece of the tile (4×2 fragments of 16×16).
// A slice is kept in shared memory in the operand's own memory order (so every shared store
// is a 16-byte vector) and WMMA reads it as row- or column-major accordingly:
//   op(A) slice [128 m][32 k]: A plain -> sA[m][k] (row_major); A transposed -> sA[k][m] (col_major)
//   op(B) slice [32 k][128 n]: B plain -> sB[k][n] (row_major); B transposed -> sB[n][k] (col_major)
// Rows are padded by 8 bf16 (16 bytes) against shared-memory bank conflicts.
namespace wmma = nvcuda::wmma;
constexpr int kWBM = 128, kWBN = 128, kWBK = 32, kWPad = 8;
constexpr int kWDepthLd = kWBK + kWPad;  // row length when k is the fast index
constexpr int kWWideLd = kWBM + kWPad;   // row length when m (or n) is the fast index
constexpr int kWSliceElems = kWBM * kWDepthLd > kWBK * kWWideLd ? kWBM * kWDepthLd : kWBK * kWWideLd;
constexpr int kWChunks = kWBM * kWBK / 8 / kThreads;  // 16-byte chunks of each operand per thread
static_assert(kWBM == kWBN, "the loaders below assume square tiles");

// Eight consecutive elements as bf16 bits packed in a uint4; f32 sources are rounded (RNE).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  return uint32_t(f32_to_bf16_bits(lo)) | uint32_t(f32_to_bf16_bits(hi)) << 16;
}
__device__ __forceinline__ uint4 load_chunk8(const uint16_t* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ uint4 load_chunk8(const float* p) {
  const float4 lo = *reinterpret_cast<const float4*>(p), hi = *reinterpret_cast<const float4*>(p + 4);
  return make_uint4(pack_bf16x2(lo.x, lo.y), pack_bf16x2(lo.z, lo.w), pack_bf16x2(hi.x, hi.y), pack_bf16x2(hi.z, hi.w));
}
__device__ __forceinline__ uint32_t bf16_bits(uint16_t h) { return h; }
__device__ __forceinline__ uint32_t bf16_bits(float f) { return f32_to_bf16_bits(f); }

// A 128×32 slice of an operand as chunks of 8 consecutive elements along its contiguous
// dimension. kDepthContiguous: k is the fast index in memory. Chunks that overhang the
// matrix are filled with zeros; a chunk is one or two 16-byte loads when it is whole and
// aligned (vec).
template <bool kDepthContiguous, typename T>
__device__ __forceinline__ void load_wslice(uint4 (&r)[kWChunks], const T* p, int64_t ld, int64_t rows,
                                            int64_t depth, int64_t r0, int64_t k0, bool vec) {
#pragma unroll
  for (int i = 0; i < kWChunks; i++) {
    const int c = threadIdx.x + i * kThreads;
    // (outer, inner): inner runs along the contiguous dimension, in steps of 8.
    const int outer = kDepthContiguous ? c / (kWBK / 8) : c / (kWBM / 8);
    const int inner = (kDepthContiguous ? c % (kWBK / 8) : c % (kWBM / 8)) * 8;
    const int64_t o = (kDepthContiguous ? r0 : k0) + outer, in = (kDepthContiguous ? k0 : r0) + inner;
    const int64_t outer_n = kDepthContiguous ? rows : depth, inner_n = kDepthContiguous ? depth : rows;
    const int64_t left = inner_n - in;
    const int valid = o >= outer_n || left <= 0 ? 0 : left >= 8 ? 8 : int(left);
    if (valid == 8 && vec) {
      r[i] = load_chunk8(p + o * ld + in);
      continue;
    }
    uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
    for (int e = 0; e < 8; e++)
      if (e < valid) w[e / 2] |= bf16_bits(p[o * ld + in + e]) << (16 * (e % 2));
    r[i] = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

template <bool kDepthContiguous>
__device__ __forceinline__ void store_wslice(uint16_t* s, const uint4 (&r)[kWChunks]) {
#pragma unroll
  for (int i = 0; i < kWChunks; i++) {
    const int c = threadIdx.x + i * kThreads;
    const int outer = kDepthContiguous ? c / (kWBK / 8) : c / (kWBM / 8);
    const int inner = (kDepthContiguous ? c % (kWBK / 8) : c % (kWBM / 8)) * 8;
    *reinterpret_cast<uint4*>(s + outer * (kDepthContiguous ? kWDepthLd : kWWideLd) + inner) = r[i];
  }
}

// AT, BT: uint16_t (stored bf16) or float (rounded to bf16 as it is loaded).
template <bool kTA, bool kTB, typename AT, typename BT>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_bf16_wmma(int64_t M, int64_t N, int64_t K, float alpha, const AT* A, int64_t lda, bool a_vec, const BT* B,
                   int64_t ldb, bool b_vec, float beta, void* C, DType cdtype, int64_t ldc) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using LayoutA = typename std::conditional<kTA, wmma::col_major, wmma::row_major>::type;
  using LayoutB = typename std::conditional<kTB, wmma::col_major, wmma::row_major>::type;
  constexpr int lda_s = kTA ? kWWideLd : kWDepthLd, ldb_s = kTB ? kWDepthLd : kWWideLd;
  // [buffer][operand] slices; after the main loop the same bytes stage the f32 results.
  __shared__ __align__(128) uint16_t smem[2][2][kWSliceElems];
  static_assert(sizeof(smem) >= (kThreads / 32) * 256 * sizeof(float), "epilogue staging must fit");

  const int64_t m0 = int64_t(blockIdx.x) * kWBM, n0 = int64_t(blockIdx.y) * kWBN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4 * 64, wn = warp % 4 * 32;  // the warp's piece of the tile

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

  uint4 ra[kWChunks], rb[kWChunks];
  load_wslice<!kTA>(ra, A, lda, M, K, m0, 0, a_vec);
  load_wslice<kTB>(rb, B, ldb, N, K, n0, 0, b_vec);
  store_wslice<!kTA>(smem[0][0], ra);
  store_wslice<kTB>(smem[0][1], rb);
  __syncthreads();

  const int64_t slices = (K + kWBK - 1) / kWBK;
  for (int64_t s = 0; s < slices; s++) {
    const int cur = int(s & 1);
    const bool more = s + 1 < slices;
    if (more) {
      load_wslice<!kTA>(ra, A, lda, M, K, m0, (s + 1) * kWBK, a_vec);
      load_wslice<kTB>(rb, B, ldb, N, K, n0, (s + 1) * kWBK, b_vec);
    }
    const __nv_bfloat16* sa = reinterpret_cast<const __nv_bfloat16*>(smem[cur][0]);
    const __nv_bfloat16* sb = reinterpret_cast<const __nv_bfloat16*>(smem[cur][1]);
#pragma unroll
    for (int k = 0; k < kWBK; k += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb[2];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int m = wm + i * 16;
        wmma::load_matrix_sync(fa[i], sa + (kTA ? k * lda_s + m : m * lda_s + k), lda_s);
      }
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const int n = wn + j * 16;
        wmma::load_matrix_sync(fb[j], sb + (kTB ? n * ldb_s + k : k * ldb_s + n), ldb_s);
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    if (more) {
      store_wslice<!kTA>(smem[cur ^ 1][0], ra);
      store_wslice<kTB>(smem[cur ^ 1][1], rb);
    }
    __syncthreads();
  }

  // Each warp writes its fragments through its own 16×16 f32 staging square (the loop above
  // ended with a barrier, so the slices are no longer read).
  float* stage = reinterpret_cast<float*>(&smem[0][0][0]) + warp * 256;
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 2; j++) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int64_t row = m0 + wm + i * 16 + e / 16, col = n0 + wn + j * 16 + e % 16;
        if (row < M && col < N) store_c(C, cdtype, ldc, row, col, stage[e], alpha, beta);
      }
      __syncwarp();
    }
#else
  __trap();  // never launched: the host picks the SIMT kernel below compute capability 8.0
#endif
}

bool tensor_cores_bf16() {
  int dev = 0, major = 0;
  bind_device();
  check(cudaGetDevice(&dev), "get device");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "device attribute");
  return major >= 8;
}

// 16-byte loads need every chunk start aligned: the base and each row start.
template <typename T>
bool vector_loads(const T* p, int64_t ld) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * int64_t(sizeof(T))) % 16 == 0;
}

template <typename AT, typename BT>
void launch_wmma(int64_t M, int64_t N, int64_t K, float alpha, const MatRef& A, const MatRef& B, float beta,
                 void* C, DType cdtype, int64_t ldc) {
  const dim3 grid(blocks_for(M, kWBM), blocks_for(N, kWBN));
  const AT* a = static_cast<const AT*>(A.data);
  const BT* b = static_cast<const BT*>(B.data);
  const bool a_vec = vector_loads(a, A.ld), b_vec = vector_loads(b, B.ld);
  auto go = [&](auto kernel) {
    kernel<<<grid, kThreads, 0, stream()>>>(M, N, K, alpha, a, A.ld, a_vec, b, B.ld, b_vec, beta, C, cdtype, ldc);
  };
  if (!A.trans && !B.trans) go(gemm_bf16_wmma<false, false, AT, BT>);
  if (!A.trans && B.trans) go(gemm_bf16_wmma<false, true, AT, BT>);
  if (A.trans && !B.trans) go(gemm_bf16_wmma<true, false, AT, BT>);
  if (A.trans && B.trans) go(gemm_bf16_wmma<true, true, AT, BT>);
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, MatRef B, float beta, void* C, DType cdtype,
          int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (lt::gemm(M, N, K, alpha, A, B, beta, C, cdtype, ldc)) return;  // where libcublasLt is loaded
  if (blocks_for(N, kBN) > 65535) fail("E_ARG", "gemm: N = " + std::to_string(N) + " is too large for the CUDA grid");
  const bool a_bf16 = A.dtype == DType::BF16, b_bf16 = B.dtype == DType::BF16;
  // Tensor cores when both operands are bf16 values (stored, or f32 read rounded).
  if ((a_bf16 || A.round_bf16) && (b_bf16 || B.round_bf16) && tensor_cores_bf16()) {
    if (a_bf16 && b_bf16)
      launch_wmma<uint16_t, uint16_t>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
    else if (a_bf16)
      launch_wmma<uint16_t, float>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
    else if (b_bf16)
      launch_wmma<float, uint16_t>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
    else
      launch_wmma<float, float>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
  } else if (!a_bf16 && !b_bf16)
    launch_sgemm<float, float>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
  else if (a_bf16 && !b_bf16)
    launch_sgemm<uint16_t, float>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
  else if (!a_bf16 && b_bf16)
    launch_sgemm<float, uint16_t>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
  else
    launch_sgemm<uint16_t, uint16_t>(M, N, K, alpha, A, B, beta, C, cdtype, ldc);
  check_launch("gemm");
}

}  // namespace pk::cuda
