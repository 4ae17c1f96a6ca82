// Causal attention with grouped-query heads, flash style: scores are formed one tile at a time
// in shared memory with an online softmax, never Tq×Tk at once; the backward pass recomputes
// them from q, k and the saved log-sum-exp.
//
// Layouts: q, out, dout, dq [B, Tq, Hq, D]; k, v, dk, dv [B, Tk, Hkv, D]; lse [B, Hq, Tq].
// Query i sees key j when j <= i + (Tk - Tq). Query head h reads kv head h / (Hq / Hkv).
//
// Work split (all kernels: 4 warps; each warp owns kRows rows of its block; lane l owns the
// feature columns l, l + 32, ... of those rows, so D <= 32·kDPL):
// - forward and dq: a block owns 16 queries of one (b, h) and walks 32-key tiles; in a tile,
//   lane l scores key l against the warp's rows.
// - dk/dv: a block owns 16 keys of one (b, kv head) and walks every query head of the group in
//   32-query tiles; lane l scores query l against the warp's keys. Each key is owned by one
//   block, so dk and dv are written once, without atomics.
// Δ_i = rowsum(dO_i ⊙ O_i) is recomputed where it is needed (D multiply-adds per query and
// tile, small next to the scores), so the backward needs no scratch memory.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
constexpr int kWarps = 4, kThreadsAttn = kWarps * 32, kRows = 4;
constexpr int kBlockRows = kWarps * kRows;  // queries (forward, dq) or keys (dk/dv) per block
constexpr int kTile = 32;                   // keys (forward, dq) or queries (dk/dv) per tile

struct AttnShape {
  int64_t Tq, Tk;
  int Hq, Hkv, D;
  float scale;
  __host__ __device__ int64_t q_at(int64_t b, int64_t i, int h) const { return ((b * Tq + i) * Hq + h) * D; }
  __host__ __device__ int64_t kv_at(int64_t b, int64_t j, int hk) const { return ((b * Tk + j) * Hkv + hk) * D; }
  __host__ __device__ int64_t lse_at(int64_t b, int h, int64_t i) const { return (int64_t(b) * Hq + h) * Tq + i; }
  // Causal mask with the cache offset; also false for padding rows and keys.
  __device__ bool visible(int64_t i, int64_t j) const { return i < Tq && j < Tk && j <= i + (Tk - Tq); }
};

// Copies rows [r0, r0 + n) of a [*, H, D] tensor (at base, stride H·D between rows) into
// shared memory with row pitch `pitch`; rows past `limit` are zeros.
__device__ void load_rows(float* dst, int pitch, const float* src, int64_t row_stride, int64_t r0, int n,
                          int64_t limit, int D) {
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    dst[r * pitch + d] = r0 + r < limit ? src[(r0 + r) * row_stride + d] : 0.f;
  }
}

// Δ = dO·O for one row, by one warp.
__device__ float row_delta(const float* dout_row, const float* out_row, int D) {
  float s = 0.f;
  for (int d = threadIdx.x % 32; d < D; d += 32) s += dout_row[d] * out_row[d];
  return warp_sum(s);
}

template <int kDPL>
__global__ void __launch_bounds__(kThreadsAttn)
    attention_fwd_kernel(float* out, float* lse, const float* q, const float* k, const float* v, AttnShape sh) {
  extern __shared__ float smem[];
  const int D = sh.D, kp = D + 1;  // key rows padded: lane l reads row l without bank conflicts
  float* Qs = smem;                // [kBlockRows][D]
  float* Ks = Qs + kBlockRows * D;  // [kTile][D + 1]
  float* Vs = Ks + kTile * kp;      // [kTile][D]
  const int64_t b = blockIdx.z, i0 = int64_t(blockIdx.x) * kBlockRows;
  const int h = blockIdx.y, hk = h / (sh.Hq / sh.Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride_q = int64_t(sh.Hq) * D, row_stride_kv = int64_t(sh.Hkv) * D;

  load_rows(Qs, D, q + sh.q_at(b, 0, h), row_stride_q, i0, kBlockRows, sh.Tq, D);

  float m[kRows], l[kRows], o[kRows][kDPL];
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int t = 0; t < kDPL; t++) o[r][t] = 0.f;
  }

  // Keys past the last visible one of the block's last query are never loaded.
  const int64_t last_q = (i0 + kBlockRows < sh.Tq ? i0 + kBlockRows : sh.Tq) - 1;
  const int64_t key_end = last_q + (sh.Tk - sh.Tq) + 1 < sh.Tk ? last_q + (sh.Tk - sh.Tq) + 1 : sh.Tk;
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();  // the previous tile has been read (and Qs written, the first time)
    load_rows(Ks, kp, k + sh.kv_at(b, 0, hk), row_stride_kv, j0, kTile, sh.Tk, D);
    load_rows(Vs, D, v + sh.kv_at(b, 0, hk), row_stride_kv, j0, kTile, sh.Tk, D);
    __syncthreads();

    float s[kRows] = {};
    for (int d = 0; d < D; d++) {
      const float kd = Ks[lane * kp + d];
#pragma unroll
      for (int r = 0; r < kRows; r++) s[r] += Qs[(warp * kRows + r) * D + d] * kd;
    }
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      const int64_t i = i0 + warp * kRows + r;
      const bool vis = sh.visible(i, j);
      const float sr = vis ? s[r] * sh.scale : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sr));
      if (m_new == -INFINITY) continue;  // nothing visible yet; uniform across the warp
      const float corr = __expf(m[r] - m_new), p = vis ? __expf(sr - m_new) : 0.f;
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int t = 0; t < kDPL; t++) o[r][t] *= corr;
      for (int jj = 0; jj < kTile; jj++) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
        for (int t = 0; t < kDPL; t++) {
          const int d = lane + 32 * t;
          if (d < D) o[r][t] += pj * Vs[jj * D + d];
        }
      }
    }
  }

  // A query that sees no key at all (only when Tk < Tq) gets out = 0 and lse = -inf.
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t i = i0 + warp * kRows + r;
    if (i >= sh.Tq) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    float* orow = out + sh.q_at(b, i, h);
#pragma unroll
    for (int t = 0; t < kDPL; t++) {
      const int d = lane + 32 * t;
      if (d < D) orow[d] = o[r][t] * inv;
    }
    if (lane == 0) lse[sh.lse_at(b, h, i)] = l[r] > 0.f ? m[r] + __logf(l[r]) : -INFINITY;
  }
}

// dq_i = scale · Σ_j P_ij (dP_ij - Δ_i) k_j, with P = exp(scale·q·k - lse), dP = dO·v.
template <int kDPL>
__global__ void __launch_bounds__(kThreadsAttn)
    attention_dq_kernel(float* dq, const float* dout, const float* q, const float* k, const float* v, const float* out,
                        const float* lse, AttnShape sh) {
  extern __shared__ float smem[];
  const int D = sh.D, kp = D + 1;
  float* Qs = smem;                    // [kBlockRows][D]
  float* dOs = Qs + kBlockRows * D;    // [kBlockRows][D]
  float* Ks = dOs + kBlockRows * D;    // [kTile][D + 1]
  float* Vs = Ks + kTile * kp;         // [kTile][D + 1]
  const int64_t b = blockIdx.z, i0 = int64_t(blockIdx.x) * kBlockRows;
  const int h = blockIdx.y, hk = h / (sh.Hq / sh.Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride_q = int64_t(sh.Hq) * D, row_stride_kv = int64_t(sh.Hkv) * D;

  load_rows(Qs, D, q + sh.q_at(b, 0, h), row_stride_q, i0, kBlockRows, sh.Tq, D);
  load_rows(dOs, D, dout + sh.q_at(b, 0, h), row_stride_q, i0, kBlockRows, sh.Tq, D);
  float row_lse[kRows], delta[kRows], acc[kRows][kDPL];
#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t i = i0 + warp * kRows + r;
    row_lse[r] = i < sh.Tq ? lse[sh.lse_at(b, h, i)] : 0.f;
    delta[r] = i < sh.Tq ? row_delta(dout + sh.q_at(b, i, h), out + sh.q_at(b, i, h), D) : 0.f;
#pragma unroll
    for (int t = 0; t < kDPL; t++) acc[r][t] = 0.f;
  }

  const int64_t last_q = (i0 + kBlockRows < sh.Tq ? i0 + kBlockRows : sh.Tq) - 1;
  const int64_t key_end = last_q + (sh.Tk - sh.Tq) + 1 < sh.Tk ? last_q + (sh.Tk - sh.Tq) + 1 : sh.Tk;
  for (int64_t j0 = 0; j0 < key_end; j0 += kTile) {
    __syncthreads();
    load_rows(Ks, kp, k + sh.kv_at(b, 0, hk), row_stride_kv, j0, kTile, sh.Tk, D);
    load_rows(Vs, kp, v + sh.kv_at(b, 0, hk), row_stride_kv, j0, kTile, sh.Tk, D);
    __syncthreads();

    float s[kRows] = {}, dp[kRows] = {};
    for (int d = 0; d < D; d++) {
      const float kd = Ks[lane * kp + d], vd = Vs[lane * kp + d];
#pragma unroll
      for (int r = 0; r < kRows; r++) {
        s[r] += Qs[(warp * kRows + r) * D + d] * kd;
        dp[r] += dOs[(warp * kRows + r) * D + d] * vd;
      }
    }
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRows; r++) {
      const bool vis = sh.visible(i0 + warp * kRows + r, j);
      const float p = vis ? __expf(s[r] * sh.scale - row_lse[r]) : 0.f;
      const float ds = p * (dp[r] - delta[r]);
      for (int jj = 0; jj < kTile; jj++) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
        for (int t = 0; t < kDPL; t++) {
          const int d = lane + 32 * t;
          if (d < D) acc[r][t] += dsj * Ks[jj * kp + d];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t i = i0 + warp * kRows + r;
    if (i >= sh.Tq) continue;
    float* row = dq + sh.q_at(b, i, h);
#pragma unroll
    for (int t = 0; t < kDPL; t++) {
      const int d = lane + 32 * t;
      if (d < D) row[d] = acc[r][t] * sh.scale;
    }
  }
}

// dv_j = Σ_i P_ij dO_i and dk_j = scale · Σ_i P_ij (dP_ij - Δ_i) q_i, summed over every query
// head of the kv head's group.
template <int kDPL>
__global__ void __launch_bounds__(kThreadsAttn)
    attention_dkdv_kernel(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                          const float* out, const float* lse, AttnShape sh) {
  extern __shared__ float smem[];
  const int D = sh.D, qp = D + 1;  // query rows padded: lane l reads row l
  float* Ks = smem;                 // [kBlockRows][D]
  float* Vs = Ks + kBlockRows * D;  // [kBlockRows][D]
  float* Qs = Vs + kBlockRows * D;  // [kTile][D + 1]
  float* dOs = Qs + kTile * qp;     // [kTile][D + 1]
  float* lse_s = dOs + kTile * qp;  // [kTile]
  float* delta_s = lse_s + kTile;   // [kTile]
  const int64_t b = blockIdx.z, j0 = int64_t(blockIdx.x) * kBlockRows;
  const int hk = blockIdx.y, group = sh.Hq / sh.Hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_stride_q = int64_t(sh.Hq) * D, row_stride_kv = int64_t(sh.Hkv) * D;

  load_rows(Ks, D, k + sh.kv_at(b, 0, hk), row_stride_kv, j0, kBlockRows, sh.Tk, D);
  load_rows(Vs, D, v + sh.kv_at(b, 0, hk), row_stride_kv, j0, kBlockRows, sh.Tk, D);
  float dk_acc[kRows][kDPL], dv_acc[kRows][kDPL];
#pragma unroll
  for (int r = 0; r < kRows; r++)
#pragma unroll
    for (int t = 0; t < kDPL; t++) dk_acc[r][t] = dv_acc[r][t] = 0.f;

  // The first query that sees key j0 is j0 - (Tk - Tq); earlier ones are skipped.
  const int64_t first_q = j0 - (sh.Tk - sh.Tq) > 0 ? j0 - (sh.Tk - sh.Tq) : 0;
  for (int h = hk * group; h < (hk + 1) * group; h++) {
    for (int64_t i0 = first_q; i0 < sh.Tq; i0 += kTile) {
      __syncthreads();  // the previous tile has been read (and Ks, Vs written, the first time)
      load_rows(Qs, qp, q + sh.q_at(b, 0, h), row_stride_q, i0, kTile, sh.Tq, D);
      load_rows(dOs, qp, dout + sh.q_at(b, 0, h), row_stride_q, i0, kTile, sh.Tq, D);
      for (int ii = warp; ii < kTile; ii += kWarps) {
        const int64_t i = i0 + ii;
        const float dl = i < sh.Tq ? row_delta(dout + sh.q_at(b, i, h), out + sh.q_at(b, i, h), D) : 0.f;
        if (lane == 0) {
          delta_s[ii] = dl;
          lse_s[ii] = i < sh.Tq ? lse[sh.lse_at(b, h, i)] : 0.f;
        }
      }
      __syncthreads();

      float s[kRows] = {}, dp[kRows] = {};
      for (int d = 0; d < D; d++) {
        const float qd = Qs[lane * qp + d], dod = dOs[lane * qp + d];
#pragma unroll
        for (int r = 0; r < kRows; r++) {
          s[r] += qd * Ks[(warp * kRows + r) * D + d];
          dp[r] += dod * Vs[(warp * kRows + r) * D + d];
        }
      }
      const int64_t i = i0 + lane;
#pragma unroll
      for (int r = 0; r < kRows; r++) {
        const bool vis = sh.visible(i, j0 + warp * kRows + r);
        const float p = vis ? __expf(s[r] * sh.scale - lse_s[lane]) : 0.f;
        const float ds = p * (dp[r] - delta_s[lane]);
        for (int ii = 0; ii < kTile; ii++) {
          const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
          for (int t = 0; t < kDPL; t++) {
            const int d = lane + 32 * t;
            if (d < D) {
              dv_acc[r][t] += pi * dOs[ii * qp + d];
              dk_acc[r][t] += dsi * Qs[ii * qp + d];
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; r++) {
    const int64_t j = j0 + warp * kRows + r;
    if (j >= sh.Tk) continue;
    float *dkr = dk + sh.kv_at(b, j, hk), *dvr = dv + sh.kv_at(b, j, hk);
#pragma unroll
    for (int t = 0; t < kDPL; t++) {
      const int d = lane + 32 * t;
      if (d < D) {
        dkr[d] = dk_acc[r][t] * sh.scale;
        dvr[d] = dv_acc[r][t];
      }
    }
  }
}

// Features per lane, rounded up to a power of two: 1, 2, 4 or 8 (D up to 256).
// Heads and batch are grid dimensions y and z, at most 65535 each.
void check_grid(int64_t B, int64_t H) {
  if (B > 65535 || H > 65535)
    fail("E_ARG", "attention: batch " + std::to_string(B) + " x heads " + std::to_string(H) +
                      " exceeds the CUDA kernels' 65535 per grid dimension");
}

int features_per_lane(int64_t D) {
  if (D > 256) fail("E_ARG", "attention: head dim D = " + std::to_string(D) + " exceeds the CUDA kernels' 256");
  return D <= 32 ? 1 : D <= 64 ? 2 : D <= 128 ? 4 : 8;
}

template <int kDPL>
void launch_forward(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                    const AttnShape& sh) {
  const size_t bytes = sizeof(float) * (size_t(kBlockRows) * sh.D + size_t(kTile) * (sh.D + 1) + size_t(kTile) * sh.D);
  check_grid(B, sh.Hq);
  allow_shared(attention_fwd_kernel<kDPL>, bytes, "attention_forward shared memory");
  const dim3 grid(blocks_for(sh.Tq, kBlockRows), unsigned(sh.Hq), unsigned(B));
  attention_fwd_kernel<kDPL><<<grid, kThreadsAttn, bytes, stream()>>>(out, lse, q, k, v, sh);
  check_launch("attention_forward");
}

template <int kDPL>
void launch_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                     const float* out, const float* lse, int64_t B, const AttnShape& sh) {
  check_grid(B, sh.Hq);
  if (sh.Tq > 0) {
    const size_t bytes = sizeof(float) * (2 * size_t(kBlockRows) * sh.D + 2 * size_t(kTile) * (sh.D + 1));
    allow_shared(attention_dq_kernel<kDPL>, bytes, "attention_backward dq shared memory");
    const dim3 grid(blocks_for(sh.Tq, kBlockRows), unsigned(sh.Hq), unsigned(B));
    attention_dq_kernel<kDPL><<<grid, kThreadsAttn, bytes, stream()>>>(dq, dout, q, k, v, out, lse, sh);
    check_launch("attention_backward dq");
  }
  if (sh.Tk > 0) {
    const size_t bytes =
        sizeof(float) * (2 * size_t(kBlockRows) * sh.D + 2 * size_t(kTile) * (sh.D + 1) + 2 * size_t(kTile));
    allow_shared(attention_dkdv_kernel<kDPL>, bytes, "attention_backward dk/dv shared memory");
    const dim3 grid(blocks_for(sh.Tk, kBlockRows), unsigned(sh.Hkv), unsigned(B));
    attention_dkdv_kernel<kDPL><<<grid, kThreadsAttn, bytes, stream()>>>(dk, dv, dout, q, k, v, out, lse, sh);
    check_launch("attention_backward dk/dv");
  }
}
}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t Tq,
                       int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, float scale) {
  if (B == 0 || Tq == 0 || Hq == 0 || D == 0) return;
  const AttnShape sh{Tq, Tk, int(Hq), int(Hkv), int(D), scale};
  switch (features_per_lane(D)) {
    case 1: launch_forward<1>(out, lse, q, k, v, B, sh); break;
    case 2: launch_forward<2>(out, lse, q, k, v, B, sh); break;
    case 4: launch_forward<4>(out, lse, q, k, v, B, sh); break;
    default: launch_forward<8>(out, lse, q, k, v, B, sh); break;
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t Tq, int64_t Tk,
                        int64_t Hq, int64_t Hkv, int64_t D, float scale) {
  if (B == 0 || Hq == 0 || D == 0) return;
  const AttnShape sh{Tq, Tk, int(Hq), int(Hkv), int(D), scale};
  switch (features_per_lane(D)) {
    case 1: launch_backward<1>(dq, dk, dv, dout, q, k, v, out, lse, B, sh); break;
    case 2: launch_backward<2>(dq, dk, dv, dout, q, k, v, out, lse, B, sh); break;
    case 4: launch_backward<4>(dq, dk, dv, dout, q, k, v, out, lse, B, sh); break;
    default: launch_backward<8>(dq, dk, dv, dout, q, k, v, out, lse, B, sh); break;
  }
}

}  // namespace pk::cuda
