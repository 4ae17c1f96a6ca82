// The dropout mask as a pure function of (seed, element index), shared by the CPU and CUDA
// kernels: every device and thread count draws the same mask, and backward recomputes it
// instead of storing it. Everything here is exact integer or exact float arithmetic, so host
// and device (even under --use_fast_math) agree bit for bit.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define PK_HD __host__ __device__
#else
#define PK_HD
#endif

namespace pk {

// splitmix64's finalizer applied to seed ^ (i · 2^64/φ).
PK_HD inline uint64_t dropout_hash(uint64_t seed, uint64_t i) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Element i is kept with probability 1 - p: the hash's top 24 bits as u in [0, 1) (exact in
// f32), kept when u >= p. p = 0 keeps everything, p = 1 nothing.
PK_HD inline bool dropout_keep(uint64_t seed, uint64_t i, float p) {
  const float u = float(uint32_t(dropout_hash(seed, i) >> 40)) * (1.0f / 16777216.0f);
  return u >= p;
}

}  // namespace pk
