// The dropout mask as a pure function of (seed, element index), shared by the CPU and CUDA
// kernels so that both devices, at any thread or block count, drop exactly the same elements.
// Any change here changes every mask ever drawn: keep it in sync with the tests and never
// make it depend on anything but its two arguments.
//
// The bits are splitmix64 (Steele, Lea & Flood 2014; the finalizer is Stafford's "Mix13"):
//   key  = mix64(seed)                     a seed becomes a well-spread 64-bit key
//   bits = mix64(key + index·0x9E3779B97F4A7C15)
// i.e. element i of stream `seed` is output i of a splitmix64 generator started at key. Two
// seeds give the same stream shifted by a pseudo-random 64-bit amount, so masks of different
// seeds only overlap for offsets ~2^63 apart. The top 24 bits become u = bits>>40 · 2^-24, a
// float in [0, 1) that is exact in f32 on every device (integer below 2^24 times a power of
// two), and an element is kept when u >= p. So P(keep) = 1 - p rounded to a multiple of 2^-24.
//
// The functions are `static`: each translation unit gets its own copy, so the CPU kernels
// compiled per ISA (native/cpu/pointwise_*.cc) never share one built with other instructions.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define PK_DROPOUT_HD __host__ __device__
#else
#define PK_DROPOUT_HD
#endif

namespace pk {

PK_DROPOUT_HD static inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Computed once per call; each element then costs one multiply-add and one mix.
PK_DROPOUT_HD static inline uint64_t dropout_key(uint64_t seed) { return splitmix64_mix(seed); }

// u in [0, 1) with 24 random bits, for element `index` (offset + i) of the stream `key`.
PK_DROPOUT_HD static inline float dropout_uniform(uint64_t key, uint64_t index) {
  const uint64_t bits = splitmix64_mix(key + index * 0x9E3779B97F4A7C15ull);
  return float(uint32_t(bits >> 40)) * (1.0f / 16777216.0f);
}

PK_DROPOUT_HD static inline bool dropout_keep(uint64_t key, uint64_t index, float p) {
  return dropout_uniform(key, index) >= p;
}

// The factor applied to kept elements: 1/(1-p), and 0 when p >= 1 (everything is dropped).
// Compute it once on the host: nvcc's --use_fast_math would make a device division inexact.
PK_DROPOUT_HD static inline float dropout_scale(float p) { return p < 1.0f ? 1.0f / (1.0f - p) : 0.0f; }

}  // namespace pk

#undef PK_DROPOUT_HD
