// A CPU emulation of the CUDA subset native/cuda uses, to check the kernels' index math,
// bounds, barriers and warp exchanges on a machine without a GPU. Every CUDA thread is an OS
// thread; the blocks of a launch run one after another, so `static` stands in for __shared__.
// Not covered: timing, memory-model subtleties beyond barriers, fast-math precision (host math
// is used), real tensor-core numerics (WMMA is emulated in f32, which bf16 products are).
#pragma once
#include <math.h>

#include <array>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct emu_uint3 {
  unsigned x, y, z;
};
inline thread_local emu_uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- runtime API ------------------------------------------------------------------------
#define CUDART_VERSION 13000
using cudaStream_t = void*;
#define cudaStreamPerThread (reinterpret_cast<cudaStream_t>(2))
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2 };

namespace emu {
inline cudaError_t& last_error() {
  static thread_local cudaError_t e = cudaSuccess;
  return e;
}
inline std::map<const void*, int>& smem_opt_in() {
  static std::map<const void*, int> m;
  return m;
}
inline int& launches() {
  static int n = 0;
  return n;
}
}  // namespace emu

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidValue ? "invalid argument" : "invalid configuration argument";
}
inline cudaError_t cudaGetLastError() {
  cudaError_t e = emu::last_error();
  emu::last_error() = cudaSuccess;
  return e;
}
template <typename T>
cudaError_t cudaFuncSetAttribute(T* fn, cudaFuncAttribute, int value) {
  if (value > 227 * 1024) return cudaErrorInvalidValue;
  emu::smem_opt_in()[reinterpret_cast<const void*>(fn)] = value;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
// EMU_SM_MAJOR=7 exercises the pre-Ampere fallbacks.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  const char* s = getenv("EMU_SM_MAJOR");
  *v = s ? atoi(s) : 9;
  return cudaSuccess;
}
inline cudaError_t cudaMalloc(void* p, size_t n) {
  *static_cast<void**>(p) = malloc(n ? n : 1);
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  free(p);
  return cudaSuccess;
}
// Stream-ordered allocation: every emulated launch has finished when it returns, so the
// stream order is the program order.
template <typename T>
cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ---- blocks, barriers, warps --------------------------------------------------------------
namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<std::array<uint64_t, 32>> slots;  // per-warp shuffle exchange
  void* dyn = nullptr;
};
inline thread_local Block* block;
inline thread_local int lane, warp;

template <typename T>
T* dynamic_smem() {
  return static_cast<T*>(block->dyn);
}

inline void fail(const char* what) {
  fprintf(stderr, "emu: %s\n", what);
  abort();
}

template <typename F>
struct Launcher {
  F fn;
  dim3 grid, blk;
  size_t smem;
  Launcher(F f, dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : fn(f), grid(g), blk(b), smem(s) {}

  template <typename... A>
  void operator()(A... args) {
    launches()++;
    const unsigned threads = blk.x * blk.y * blk.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
        threads > 1024) {
      last_error() = cudaErrorInvalidConfiguration;
      return;
    }
    if (threads % 32) fail("block size is not a multiple of 32 (the emulated warps assume it)");
    if (smem > 48 * 1024) {
      auto it = smem_opt_in().find(reinterpret_cast<const void*>(fn));
      if (it == smem_opt_in().end() || size_t(it->second) < smem) {
        last_error() = cudaErrorInvalidValue;
        return;
      }
    }
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) run_block({x, y, z}, threads, args...);
  }

  template <typename... A>
  void run_block(emu_uint3 bid, unsigned threads, A... args) {
    Block b;
    b.all = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < threads / 32; w++) b.warps.push_back(std::make_unique<std::barrier<>>(32));
    b.slots.resize(threads / 32);
    // Exactly `smem` bytes, so AddressSanitizer (EMU_ASAN=1) catches an overrun.
    std::unique_ptr<void, void (*)(void*)> dyn(::operator new(smem ? smem : 1, std::align_val_t(128)), [](void* p) {
      ::operator delete(p, std::align_val_t(128));
    });
    b.dyn = dyn.get();
    // Poison dynamic shared memory: a read before a write shows up as NaN.
    for (size_t i = 0; i + 4 <= smem; i += 4) memcpy(static_cast<char*>(b.dyn) + i, "\xff\xff\xff\x7f", 4);
    std::vector<std::thread> ts;
    ts.reserve(threads);
    for (unsigned t = 0; t < threads; t++)
      ts.emplace_back([&, t] {
        threadIdx = {t % blk.x, (t / blk.x) % blk.y, t / (blk.x * blk.y)};
        blockIdx = bid;
        blockDim = blk;
        gridDim = grid;
        block = &b;
        lane = int(t % 32);
        warp = int(t / 32);
        fn(args...);
        b.all->arrive_and_drop();
        b.warps[warp]->arrive_and_drop();
      });
    for (auto& t : ts) t.join();
  }
};
template <typename F>
Launcher(F, dim3, dim3, size_t, cudaStream_t) -> Launcher<F>;

inline std::mutex& atomic_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace emu

inline void __syncthreads() { emu::block->all->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::block->warps[emu::warp]->arrive_and_wait(); }

template <typename T>
T emu_shuffle(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  auto& s = emu::block->slots[emu::warp];
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  s[emu::lane] = bits;
  __syncwarp();
  const uint64_t r = s[src & 31];
  __syncwarp();
  T out;
  memcpy(&out, &r, sizeof(T));
  return out;
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle masks are not emulated");
  return emu_shuffle(v, src);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int o) {
  if (mask != 0xffffffffu) emu::fail("partial shuffle masks are not emulated");
  return emu_shuffle(v, emu::lane ^ o);
}

template <typename T>
T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex());
  T old = *p;
  *p = old + v;
  return old;
}

template <typename T>
T atomicCAS(T* p, T compare, T v) {
  std::lock_guard<std::mutex> g(emu::atomic_mutex());
  T old = *p;
  if (old == compare) *p = v;
  return old;
}

// ---- math ---------------------------------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __frcp_rn(float a) { return 1.f / a; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dsub_rn(double a, double b) { return a - b; }
// Round half to even, as the GPU's cvt.rni (the host's default rounding mode).
inline int __float2int_rn(float a) { return int(nearbyintf(a)); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline void __trap() { emu::fail("__trap"); }

// ---- bf16 and WMMA ------------------------------------------------------------------------
struct __nv_bfloat16 {
  uint16_t bits;
};
// Round to nearest even; NaN stays a NaN.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};
  return {uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float v[16][16];
};

inline void check_ptr(const void* p, unsigned ldm, unsigned elem_bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32) emu::fail("WMMA pointer not 256-bit aligned");
  if ((ldm * elem_bytes) % 16) emu::fail("WMMA ldm not a multiple of 16 bytes");
}

template <typename Use, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p, unsigned ldm) {
  check_ptr(p, ldm, 2);
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      const __nv_bfloat16 h = std::is_same<Layout, row_major>::value ? p[i * ldm + j] : p[i + j * ldm];
      f.v[i][j] = __uint_as_float(unsigned(h.bits) << 16);
    }
}
template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, float x) {
  for (auto& r : f.v)
    for (float& e : r) e = x;
}
template <typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      float s = c.v[i][j];
      for (int k = 0; k < 16; k++) s += a.v[i][k] * b.v[k][j];
      out[i][j] = s;
    }
  memcpy(d.v, out, sizeof(out));
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  check_ptr(p, ldm, 4);
  if (emu::lane == 0)
    for (int i = 0; i < 16; i++)
      for (int j = 0; j < 16; j++) (l == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.v[i][j];
}
}  // namespace nvcuda::wmma
