// Element types the engine stores. Compute is f32 (or f32 accumulation over bf16 storage).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pk {

// F64 holds a step's scalars on the device (sums, norms, index faults), never a weight.
enum class DType : int { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, I64 = 4, U8 = 5, I8 = 6, F64 = 7 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: return 2;
    case DType::I64: case DType::F64: return 8;
    case DType::U8: case DType::I8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::I8: return "i8";
    case DType::F64: return "f64";
  }
  return "?";
}

// bf16 is the top half of an f32. Rounding is to nearest even, as PyTorch does; NaN stays NaN.
using bf16 = uint16_t;

inline float bf16_to_f32(bf16 h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16(u >> 16);
}

// bf16_to_f32(f32_to_bf16(f)) without a branch, so loops that round (bf16 compute) vectorize.
inline float round_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const uint32_t quiet_nan = (u | 0x00400000u) & 0xffff0000u;
  const uint32_t r = (u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : nearest;
  float out;
  std::memcpy(&out, &r, 4);
  return out;
}

// IEEE half -> f32, exact (every half is an f32): subnormals are normalized, NaN keeps its payload.
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {
    // A subnormal half: shift the mantissa up to its leading 1 and lower the exponent to match.
    int e = 113;
    while (!(man & 0x400u)) {
      man <<= 1;
      e--;
    }
    u = sign | (uint32_t(e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace pk
