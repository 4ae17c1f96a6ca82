// Blockwise 4-bit quantization (QLoRA's NF4 and FP4), byte for byte as bitsandbytes stores it.
#include <cmath>

#include "grain.h"
#include "peftkit/kernels.h"
#include "peftkit/quant_decide.h"

namespace pk::cpu {

namespace {

// max |x|, skipping NaN (a NaN is never > m).
float block_absmax(const float* x, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; i++) {
    const float a = std::fabs(x[i]);
    if (a > m) m = a;
  }
  return m;
}

template <uint8_t (*Code)(float)>
void quantize_blocks(uint8_t* packed, float* absmax, const float* x, int64_t n, int64_t blocksize) {
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const uint8_t zero_code = Code(0.f);
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t i0 = b * blocksize, len = n - i0 < blocksize ? n - i0 : blocksize;
    const float* xb = x + i0;
    const float m = block_absmax(xb, len);
    absmax[b] = m;
    // bitsandbytes multiplies by 1/absmax; for a zero block that is inf and 0·inf = NaN. Scaling
    // by 0 instead gives its zeros the code of 0.0 (and its NaNs still code 0).
    const float r = m == 0.f ? 0.f : 1.f / m;
    uint8_t* out = packed + i0 / 2;  // blocksize is even, so a block starts on a byte
    for (int64_t i = 0; i < len; i += 2) {
      const uint8_t hi = Code(xb[i] * r);
      const uint8_t lo = i + 1 < len ? Code(xb[i + 1] * r) : zero_code;
      out[i / 2] = uint8_t(hi << 4 | lo);
    }
  }
}

template <typename Out>
void dequantize_blocks(Out* out, const float* table, const uint8_t* packed, const float* absmax, int64_t n,
                       int64_t blocksize) {
  const int64_t blocks = (n + blocksize - 1) / blocksize;
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t i0 = b * blocksize, i1 = n - i0 < blocksize ? n : i0 + blocksize;
    const float m = absmax[b];
    for (int64_t i = i0; i < i1; i++) {
      const uint8_t byte = packed[i / 2];
      const float v = table[i % 2 == 0 ? byte >> 4 : byte & 15] * m;
      if constexpr (sizeof(Out) == 4) out[i] = v;
      else out[i] = f32_to_bf16(v);
    }
  }
}

}  // namespace

void quantize_4bit(uint8_t* packed, float* absmax, const float* x, int64_t n, int64_t blocksize, Quant4Type type) {
  if (type == Quant4Type::NF4) quantize_blocks<quant_codes::nf4_code>(packed, absmax, x, n, blocksize);
  else quantize_blocks<quant_codes::fp4_code>(packed, absmax, x, n, blocksize);
}

void dequantize_4bit(void* out, DType out_dtype, const uint8_t* packed, const float* absmax, int64_t n,
                     int64_t blocksize, Quant4Type type) {
  const float* table = type == Quant4Type::NF4 ? quant_codes::kNf4 : quant_codes::kFp4;
  if (out_dtype == DType::F32) dequantize_blocks(static_cast<float*>(out), table, packed, absmax, n, blocksize);
  else dequantize_blocks(static_cast<bf16*>(out), table, packed, absmax, n, blocksize);
}

}  // namespace pk::cpu
