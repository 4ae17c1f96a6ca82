// Shared by the CUDA kernels: error checks, launch sizes, the stream every kernel uses, bf16
// conversion and the warp/block reductions.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "peftkit/dtype.h"
#include "peftkit/error.h"
#include "peftkit/kernels.h"

namespace pk::cuda {

// The device every thread of this process uses: -1 until chosen, by use_device (a rank of a
// distributed run, memory.cu) or by the first CUDA work, which takes the runtime's default, 0.
// Set once, never changed after.
inline std::atomic<int> g_device{-1};

// cudaSetDevice holds for the calling host thread only, and CUDA work comes from many: the JS
// thread, Node's worker threads (training runs in one), libuv's pool (async ops, NCCL's
// init), NCCL's own. So every entry into CUDA — stream() below, which every kernel launch and
// stream-ordered call takes, and each function of memory.cu — makes the process's device
// current on its thread, once per thread (a thread_local compare after that).
inline void bind_device() {
  thread_local int bound = -1;
  int d = g_device.load(std::memory_order_acquire);
  if (d < 0) {
    int unset = -1;
    d = g_device.compare_exchange_strong(unset, 0, std::memory_order_acq_rel) ? 0 : unset;
  }
  if (d == bound) return;
  const cudaError_t e = cudaSetDevice(d);
  if (e != cudaSuccess) fail("E_CUDA", "CUDA set device " + std::to_string(d) + ": " + cudaGetErrorString(e));
  bound = d;
}

// Kernels run on the per-thread default stream: calls from different Node workers do not
// serialize against each other, and ops from one thread stay ordered.
inline cudaStream_t stream() {
  bind_device();
  return cudaStreamPerThread;
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("E_CUDA", std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Host<->device copies made so far (cuda_memory.h copy_counts): every copy site calls count_copy.
struct CopyCounter {
  std::atomic<uint64_t> to_host{0}, to_host_bytes{0}, to_device{0}, to_device_bytes{0};
};
inline CopyCounter& copy_counter() {
  static CopyCounter c;
  return c;
}
inline void count_copy(bool to_host, size_t bytes) {
  CopyCounter& c = copy_counter();
  (to_host ? c.to_host : c.to_device)++;
  (to_host ? c.to_host_bytes : c.to_device_bytes) += bytes;
}

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Grid size for a grid-stride elementwise loop over n items: enough blocks to fill the GPU,
// never more than the items need (and never 0: callers return early on n == 0).
constexpr int kEltThreads = 256;
inline unsigned elt_blocks(int64_t n) {
  const int64_t b = (n + kEltThreads - 1) / kEltThreads;
  return unsigned(b < 65536 ? b : 65536);
}

// Kernels that need more than the default 48 KB of dynamic shared memory must say so first.
template <typename Kernel>
inline void allow_shared(Kernel kernel, size_t bytes, const char* what) {
  bind_device();  // the attribute is the current device's
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}

// bf16 <-> f32 with the same bits as pk::bf16_to_f32 / pk::f32_to_bf16 (dtype.h): round to
// nearest even, NaN stays a quiet NaN.
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// Element idx of an f32 or bf16 array, widened to f32.
__device__ __forceinline__ float load_as_f32(const void* p, DType t, int64_t idx) {
  return t == DType::F32 ? static_cast<const float*>(p)[idx] : bf16_bits_to_f32(static_cast<const uint16_t*>(p)[idx]);
}

// Records an out-of-range index in a fault record (IndexFault, kernels.h) unless one is
// already there: the first thread to swap the flag from 0 to 1.0 writes the details.
__device__ inline void record_index_fault(double* fault, IndexFaultOp op, int64_t pos, int32_t index, int64_t limit,
                                          int32_t ignore_index = 0) {
  if (!fault) return;
  constexpr unsigned long long kOne = 0x3FF0000000000000ull;  // the bits of 1.0
  if (atomicCAS(reinterpret_cast<unsigned long long*>(fault), 0ull, kOne) != 0ull) return;
  fault[1] = double(int(op));
  fault[2] = double(pos);
  fault[3] = double(index);
  fault[4] = double(limit);
  fault[5] = double(ignore_index);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block, returned to every thread. blockDim.x must be a multiple of 32
// (at most 1024); every thread of the block must call it (it synchronizes twice, so it can be
// called again right away with the same scratch).
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = lane < warps ? partial[lane] : T(0);
  total = warp_sum(total);
  __syncthreads();  // partial may be reused by the next call
  return total;
}

__device__ inline float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float m = lane < warps ? partial[lane] : -INFINITY;
  m = warp_max(m);
  __syncthreads();
  return m;
}

}  // namespace pk::cuda
