// 8-bit blockwise AdamW on the GPU: one CUDA block of 256 threads per block of 256 state
// elements, so each block's absmax is one in-block reduction. Every f32 operation is an
// explicitly rounded intrinsic (no FMA contraction, no --use_fast_math approximation), in the
// CPU kernel's order, and codes are picked by the same exact midpoints, so both devices store
// the same bits.
#include <cmath>
#include <cstring>
#include <vector>

#include "adamw_element.cuh"
#include "common.cuh"
#include "peftkit/adamw_scalars.h"
#include "peftkit/dynamic_maps.h"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {

constexpr int kThreads = int(kAdamW8bitBlock);
constexpr int64_t kMaxGrid = int64_t(1) << 30;  // blocks per launch (gridDim.x allows 2^31 - 1)

// The step's scalars (adamw_scalars.h) and lr, for each tensor's 1 - lr·weight_decay.
struct Coeffs : AdamWScalars {
  double lr;
};

// Passed by value (2 KB of kernel parameters) and copied to shared memory by each block.
struct Maps {
  float signed_map[256];
  float unsigned_map[256];
};

// The tensor that state block b belongs to: the last t with first[t] <= b.
__device__ int64_t tensor_of(const int64_t* first, int64_t count, int64_t b) {
  int64_t lo = 0, hi = count;  // first[lo] <= b < first[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first[mid] <= b) lo = mid;
    else hi = mid;
  }
  return lo;
}

// As the CPU's encode: the nearest code is the number of midpoints between codes (exact in
// double) below x, a tie going to the lower code. Eight halvings over mid[0, 255).
__device__ __forceinline__ uint8_t nearest_code(const double* mid, float x) {
  const double xd = x;
  int i = 0;
  for (int s = 128; s > 0; s >>= 1)
    if (mid[i + s - 1] < xd) i += s;
  return uint8_t(i);
}

// The maximum over the block, returned to every thread (every thread must call it).
__device__ float max_over_block(float x, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < kThreads / 32 ? scratch[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();
  return x;
}

__global__ void find_nonfinite(const AdamW8bitRef* refs, const int64_t* first, int64_t count, int64_t block0, int* bad) {
  const int64_t b = block0 + blockIdx.x, t = tensor_of(first, count, b);
  const int64_t j = (b - first[t]) * kThreads + threadIdx.x;
  if (j < refs[t].n && !isfinite(refs[t].grad[j])) bad[t] = 1;
}

__global__ void update(const AdamW8bitRef* refs, const int64_t* first, int64_t count, int64_t block0, const int* bad,
                       Coeffs k, Maps maps) {
  __shared__ float signed_map[256], unsigned_map[256], scratch[kThreads / 32];
  __shared__ double signed_mid[255], unsigned_mid[255];
  const int tid = threadIdx.x;
  const int64_t b = block0 + blockIdx.x, t = tensor_of(first, count, b);
  if (bad[t]) return;  // the whole block leaves together
  const AdamW8bitRef r = refs[t];
  const int64_t blk = b - first[t], j = blk * kThreads + tid;
  const bool in = j < r.n;
  const float decay = float(__dsub_rn(1.0, __dmul_rn(k.lr, double(r.weight_decay))));
  if (!r.m_code) {
    if (in) adamw_element(r.param[j], r.m[j], r.v[j], r.grad[j], k, decay);
    return;
  }
  signed_map[tid] = maps.signed_map[tid];
  unsigned_map[tid] = maps.unsigned_map[tid];
  if (tid < 255) {  // the mean of two floats is exact in double
    signed_mid[tid] = (double(maps.signed_map[tid]) + double(maps.signed_map[tid + 1])) * 0.5;
    unsigned_mid[tid] = (double(maps.unsigned_map[tid]) + double(maps.unsigned_map[tid + 1])) * 0.5;
  }
  const float am = r.m_absmax[blk], av = r.v_absmax[blk];
  __syncthreads();
  float m = 0.f, v = 0.f;
  if (in) {
    float p = r.param[j];
    m = __fmul_rn(signed_map[r.m_code[j]], am);
    v = __fmul_rn(unsigned_map[r.v_code[j]], av);
    adamw_element(p, m, v, r.grad[j], k, decay);
    r.param[j] = p;
  }
  const float max_m = max_over_block(fabsf(m), scratch), max_v = max_over_block(v, scratch);
  if (tid == 0) {  // every thread has read the old absmax before the reductions' barriers
    r.m_absmax[blk] = max_m;
    r.v_absmax[blk] = max_v;
  }
  if (in) {
    r.m_code[j] = nearest_code(signed_mid, max_m > 0.f ? __fdiv_rn(m, max_m) : 0.f);
    r.v_code[j] = nearest_code(unsigned_mid, max_v > 0.f ? __fdiv_rn(v, max_v) : 0.f);
  }
}

}  // namespace

int64_t adamw8bit(const AdamW8bitRef* params, int64_t count, AdamWHyper h, bool count_skipped) {
  if (count == 0) return count_skipped ? 0 : -1;
  std::vector<int64_t> first(size_t(count) + 1, 0);
  for (int64_t t = 0; t < count; t++)
    first[size_t(t) + 1] = first[size_t(t)] + (params[t].n + kAdamW8bitBlock - 1) / kAdamW8bitBlock;
  const int64_t total = first.back();
  if (total == 0) return count_skipped ? 0 : -1;

  Coeffs k;
  static_cast<AdamWScalars&>(k) = adamw_scalars(h);
  k.lr = h.lr;
  Maps maps;
  std::memcpy(maps.signed_map, kDynamicSigned256, sizeof maps.signed_map);
  std::memcpy(maps.unsigned_map, kDynamicUnsigned256, sizeof maps.unsigned_map);

  // One device buffer: the refs (pointers into device memory), the block offsets, the flags.
  const size_t refs_bytes = sizeof(AdamW8bitRef) * size_t(count), first_bytes = sizeof(int64_t) * first.size();
  const size_t bad_bytes = sizeof(int) * size_t(count);
  char* buf = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&buf), refs_bytes + first_bytes + bad_bytes, stream()), "adamw8bit alloc");
  auto* d_refs = reinterpret_cast<AdamW8bitRef*>(buf);
  auto* d_first = reinterpret_cast<int64_t*>(buf + refs_bytes);
  auto* d_bad = reinterpret_cast<int*>(buf + refs_bytes + first_bytes);
  std::vector<int> bad(size_t(count), 0);
  try {
    // From pageable memory these copies return once the bytes are staged: the vectors may go.
    count_copy(false, refs_bytes);
    count_copy(false, first_bytes);
    check(cudaMemcpyAsync(d_refs, params, refs_bytes, cudaMemcpyHostToDevice, stream()), "adamw8bit refs");
    check(cudaMemcpyAsync(d_first, first.data(), first_bytes, cudaMemcpyHostToDevice, stream()), "adamw8bit offsets");
    check(cudaMemsetAsync(d_bad, 0, bad_bytes, stream()), "adamw8bit flags");
    // Every block is checked before any is updated: a bad gradient skips its whole tensor.
    for (int64_t b0 = 0; b0 < total; b0 += kMaxGrid) {
      const unsigned grid = unsigned(total - b0 < kMaxGrid ? total - b0 : kMaxGrid);
      find_nonfinite<<<grid, kThreads, 0, stream()>>>(d_refs, d_first, count, b0, d_bad);
      check_launch("adamw8bit find_nonfinite");
    }
    for (int64_t b0 = 0; b0 < total; b0 += kMaxGrid) {
      const unsigned grid = unsigned(total - b0 < kMaxGrid ? total - b0 : kMaxGrid);
      update<<<grid, kThreads, 0, stream()>>>(d_refs, d_first, count, b0, d_bad, k, maps);
      check_launch("adamw8bit update");
    }
    if (count_skipped) {
      count_copy(true, bad_bytes);
      check(cudaMemcpyAsync(bad.data(), d_bad, bad_bytes, cudaMemcpyDeviceToHost, stream()), "adamw8bit flags back");
      check(cudaStreamSynchronize(stream()), "adamw8bit sync");
    }
  } catch (...) {
    cudaFreeAsync(buf, stream());
    throw;
  }
  check(cudaFreeAsync(buf, stream()), "adamw8bit free");
  if (!count_skipped) return -1;
  int64_t skipped = 0;
  for (int f : bad) skipped += f != 0;
  return skipped;
}

}  // namespace pk::cuda
