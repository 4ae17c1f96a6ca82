// Panel sources for plain operands (MatRef, f32 or bf16, either layout): the packing half of
// the blocked GEMM. bf16 is widened to f32 here, so the f32 micro-kernels never see it. An f32
// operand with round_bf16 (bf16 compute) is rounded here too: to bf16 k-pairs for VDPBF16PS, or,
// where the CPU has no bf16 kernel, to bf16 values widened back into the f32 panel, so every CPU
// computes the same products of bf16 values (subnormals aside: VDPBF16PS flushes them to zero).
#include "gemm.h"
#include "gemm_kernels.h"

namespace pk::cpu {

namespace {


inline bf16 to_bf16(bf16 v) { return v; }
inline bf16 to_bf16(float v) { return f32_to_bf16(v); }

// X(k, x) = data[k·ld + x]: each k is a contiguous run of x.
template <typename T, bool ROUND = false>
void pack_rows(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
               const MatRef& m) {
  const T* src = static_cast<const T*>(m.data) + k0 * m.ld + x0;
  for (int64_t k = 0; k < kc; k++, src += m.ld, dst += width) {
    for (int64_t x = 0; x < nx; x++) dst[x] = scale * operand_value<ROUND>(src[x]);
    for (int64_t x = nx; x < width; x++) dst[x] = 0.f;
  }
}

// X(k, x) = data[x·ld + k]: each x is a contiguous run of k, so this is a transposition. It
// goes 16 k at a time so the reads are whole cache lines and the writes stay within a few.
template <typename T, bool ROUND = false>
void pack_cols(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
               const MatRef& m) {
  const T* src = static_cast<const T*>(m.data) + x0 * m.ld + k0;
  constexpr int64_t KB = 16;
  for (int64_t kb = 0; kb < kc; kb += KB) {
    const int64_t kn = kc - kb < KB ? kc - kb : KB;
    float* d = dst + kb * width;
    for (int64_t x = 0; x < nx; x++) {
      const T* s = src + x * m.ld + kb;
      for (int64_t k = 0; k < kn; k++) d[k * width + x] = scale * operand_value<ROUND>(s[k]);
    }
    for (int64_t k = 0; k < kn; k++)
      for (int64_t x = nx; x < width; x++) d[k * width + x] = 0.f;
  }
}

void pack_f32(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
              const void* ctx) {
  const MatRef& m = *static_cast<const MatRef*>(ctx);
  const GemmPackers& simd = gemm_arch().pack;
  if (m.dtype == DType::F32 && m.round_bf16) {
    // bf16 compute on a CPU without the bf16 kernel (or in a sum with f32 terms).
    if (m.trans) pack_cols<float, true>(dst, width, k0, kc, x0, nx, scale, m);
    else pack_rows<float, true>(dst, width, k0, kc, x0, nx, scale, m);
  } else if (m.dtype == DType::F32) {
    const float* data = static_cast<const float*>(m.data);
    if (m.trans && simd.f32_cols) simd.f32_cols(dst, width, data + x0 * m.ld + k0, m.ld, kc, nx, scale);
    else if (m.trans) pack_cols<float>(dst, width, k0, kc, x0, nx, scale, m);
    else if (simd.f32_rows) simd.f32_rows(dst, width, data + k0 * m.ld + x0, m.ld, kc, nx, scale);
    else pack_rows<float>(dst, width, k0, kc, x0, nx, scale, m);
  } else {
    const bf16* data = static_cast<const bf16*>(m.data);
    if (m.trans && simd.bf16_cols) simd.bf16_cols(dst, width, data + x0 * m.ld + k0, m.ld, kc, nx, scale);
    else if (m.trans) pack_cols<bf16>(dst, width, k0, kc, x0, nx, scale, m);
    else if (simd.bf16_rows) simd.bf16_rows(dst, width, data + k0 * m.ld + x0, m.ld, kc, nx, scale);
    else pack_rows<bf16>(dst, width, k0, kc, x0, nx, scale, m);
  }
}

// dst[(p·width + x)·2 + e] = X(k0 + 2p + e, x0 + x) as bf16 (T = float: rounded to nearest
// even), zero past kc and nx.
template <typename T>
void pack_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, const MatRef& m) {
  const T* data = static_cast<const T*>(m.data);
  const int64_t pairs = (kc + 1) / 2;
  if (m.trans) {
    // k runs are contiguous: a pair is two neighbours.
    for (int64_t x = 0; x < nx; x++) {
      const T* s = data + (x0 + x) * m.ld + k0;
      bf16* d = dst + 2 * x;
      for (int64_t p = 0; p < kc / 2; p++) {
        d[p * width * 2] = to_bf16(s[2 * p]);
        d[p * width * 2 + 1] = to_bf16(s[2 * p + 1]);
      }
      if (kc & 1) {
        d[(pairs - 1) * width * 2] = to_bf16(s[kc - 1]);
        d[(pairs - 1) * width * 2 + 1] = 0;
      }
    }
  } else {
    // x runs are contiguous: interleave two rows.
    for (int64_t p = 0; p < pairs; p++) {
      const T* s0 = data + (k0 + 2 * p) * m.ld + x0;
      const T* s1 = 2 * p + 1 < kc ? s0 + m.ld : nullptr;
      bf16* d = dst + p * width * 2;
      for (int64_t x = 0; x < nx; x++) {
        d[2 * x] = to_bf16(s0[x]);
        d[2 * x + 1] = s1 ? to_bf16(s1[x]) : bf16(0);
      }
    }
  }
  for (int64_t p = 0; p < pairs; p++)
    for (int64_t x = nx; x < width; x++) dst[(p * width + x) * 2] = dst[(p * width + x) * 2 + 1] = 0;
}

void pack_bf16_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, const void* ctx) {
  const MatRef& m = *static_cast<const MatRef*>(ctx);
  const GemmPackers& simd = gemm_arch().pack;
  const bf16* data = static_cast<const bf16*>(m.data);
  if (m.trans && simd.bf16_pair_cols) return simd.bf16_pair_cols(dst, width, data + x0 * m.ld + k0, m.ld, kc, nx);
  if (!m.trans && simd.bf16_pair_rows) return simd.bf16_pair_rows(dst, width, data + k0 * m.ld + x0, m.ld, kc, nx);
  pack_pairs<bf16>(dst, width, k0, kc, x0, nx, m);
}

// f32 rounded to bf16 k-pairs (bf16 compute): the cast happens here, in the pack, so no
// rounded copy of the operand is ever written to memory.
void pack_f32_rounded_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx,
                            const void* ctx) {
  const MatRef& m = *static_cast<const MatRef*>(ctx);
  const GemmPackers& simd = gemm_arch().pack;
  const float* data = static_cast<const float*>(m.data);
  if (m.trans && simd.f32_pair_cols) return simd.f32_pair_cols(dst, width, data + x0 * m.ld + k0, m.ld, kc, nx);
  if (!m.trans && simd.f32_pair_rows) return simd.f32_pair_rows(dst, width, data + k0 * m.ld + x0, m.ld, kc, nx);
  pack_pairs<float>(dst, width, k0, kc, x0, nx, m);
}

}  // namespace

PanelSource matref_source(const MatRef* m) {
  PanelSource s;
  s.pack = pack_f32;
  s.ctx = m;
  if (m->dtype == DType::BF16) {
    s.pack_bf16_pairs = pack_bf16_pairs;
  } else if (m->round_bf16) {
    s.pack_bf16_pairs = pack_f32_rounded_pairs;  // the values are rounded, so never read in place
  } else {
    s.direct = static_cast<const float*>(m->data);
    s.k_stride = m->trans ? 1 : m->ld;
    s.x_stride = m->trans ? m->ld : 1;
  }
  return s;
}

}  // namespace pk::cpu
