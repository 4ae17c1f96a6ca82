// The GEMM with a quantized frozen weight (QLoRA's NF4/FP4, LLM.int8) as its B operand: panel
// sources (gemm.h) that dequantize while they pack, so the full-precision weight never exists.
// Each packed value is scale·v with v the exact f32 value dequantize_4bit / dequantize_int8_rowwise
// would store, so the product is the f32 GEMM of the dequantized weight. With round_bf16 (bf16
// compute) v is rounded to bf16 first: into the f32 panel, or as bf16 k-pairs for VDPBF16PS.
#include <algorithm>

#include "gemm_quant.h"

#include "peftkit/kernels.h"
#include "peftkit/quant_codes.h"

namespace pk::cpu {

namespace {

struct QuantCtx {
  const QuantWeight* w;
  const float* table;  // 4-bit code values
  int shift;           // log2(blocksize)
};

// A dequantized value as the GEMM reads it.
inline float value(float v, bool round) { return round ? round_to_bf16(v) : v; }

int log2_of(int64_t v) {
  int s = 0;
  while ((int64_t(1) << s) < v) s++;
  return s;
}

// The source's ctx is the QuantWeight itself (so a source needs no storage of its own); the
// table and shift are derived per panel, a negligible cost next to decoding kc·nx values.
QuantCtx ctx_of(const void* ctx) {
  const QuantWeight* w = static_cast<const QuantWeight*>(ctx);
  return QuantCtx{w, w->format == QuantFormat::FP4 ? quant_codes::kFp4 : quant_codes::kNf4,
                  w->format == QuantFormat::INT8 ? 0 : log2_of(w->blocksize)};
}

// out[j·stride] = scale·v(i + j) for j < len, v the dequantized element i + j of the flattened
// weight. Per block, a 16-entry table of scale·(code·absmax) turns each byte into two floats.
template <bool CONTIG>
void decode_4bit(float* out, int64_t stride, const QuantCtx& q, int64_t i, int64_t len, float scale) {
  const uint8_t* packed = static_cast<const uint8_t*>(q.w->codes);
  const int64_t end = i + len;
  const int64_t step = CONTIG ? 1 : stride;
  while (i < end) {
    const int64_t b = i >> q.shift;
    const int64_t seg_end = std::min(end, (b + 1) << q.shift);
    const float m = q.w->scales[b];
    float lut[16];
    for (int c = 0; c < 16; c++) lut[c] = scale * value(q.table[c] * m, q.w->round_bf16);
    if (i & 1) {  // a run starting on a low nibble (blocks themselves start on a byte)
      *out = lut[packed[i >> 1] & 15];
      out += step;
      i++;
    }
    const uint8_t* p = packed + (i >> 1);
    const int64_t pairs = (seg_end - i) >> 1;
    for (int64_t j = 0; j < pairs; j++) {
      out[2 * j * step] = lut[p[j] >> 4];
      out[(2 * j + 1) * step] = lut[p[j] & 15];
    }
    out += 2 * pairs * step;
    i += 2 * pairs;
    if (i < seg_end) {
      *out = lut[packed[i >> 1] >> 4];
      out += step;
      i++;
    }
  }
}

// bitsandbytes' int8_vectorwise_dequant: f32(f32(cb·scb)·f32(1/127)).
constexpr float kInv127 = 1.f / 127.f;

// B = Wᵀ: X(k, x) = W[x0 + x, k0 + k], each panel column a run of one weight row.
void pack_4bit_trans(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                     const void* ctx) {
  const QuantCtx q = ctx_of(ctx);
  for (int64_t x = 0; x < nx; x++) decode_4bit<false>(dst + x, width, q, (x0 + x) * q.w->cols + k0, kc, scale);
  for (int64_t k = 0; k < kc; k++)
    for (int64_t x = nx; x < width; x++) dst[k * width + x] = 0.f;
}

// B = W: X(k, x) = W[k0 + k, x0 + x], each panel row a run of one weight row.
void pack_4bit_rows(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                    const void* ctx) {
  const QuantCtx q = ctx_of(ctx);
  for (int64_t k = 0; k < kc; k++, dst += width) {
    decode_4bit<true>(dst, 1, q, (k0 + k) * q.w->cols + x0, nx, scale);
    for (int64_t x = nx; x < width; x++) dst[x] = 0.f;
  }
}

void pack_int8_trans(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                     const void* ctx) {
  const QuantWeight& w = *static_cast<const QuantWeight*>(ctx);
  const int8_t* cb = static_cast<const int8_t*>(w.codes);
  for (int64_t x = 0; x < nx; x++) {
    const int8_t* row = cb + (x0 + x) * w.cols + k0;
    const float s = w.scales[x0 + x];
    for (int64_t k = 0; k < kc; k++) dst[k * width + x] = scale * value((float(row[k]) * s) * kInv127, w.round_bf16);
  }
  for (int64_t k = 0; k < kc; k++)
    for (int64_t x = nx; x < width; x++) dst[k * width + x] = 0.f;
}

void pack_int8_rows(float* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, float scale,
                    const void* ctx) {
  const QuantWeight& w = *static_cast<const QuantWeight*>(ctx);
  const int8_t* cb = static_cast<const int8_t*>(w.codes);
  for (int64_t k = 0; k < kc; k++, dst += width) {
    const int8_t* row = cb + (k0 + k) * w.cols + x0;
    const float s = w.scales[k0 + k];
    for (int64_t x = 0; x < nx; x++) dst[x] = scale * value((float(row[x]) * s) * kInv127, w.round_bf16);
    for (int64_t x = nx; x < width; x++) dst[x] = 0.f;
  }
}

// bf16 k-pairs of the rounded int8 values: 16 k at a time decoded into an f32 scratch panel by
// the source's own f32 pack (which rounds), then interleaved; the rounded values are exact in bf16.
template <void (*PACK)(float*, int64_t, int64_t, int64_t, int64_t, int64_t, float, const void*)>
void pack_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, const void* ctx) {
  constexpr int64_t KB = 16, kMaxWidth = 64;  // panels are at most nr = 32 (B) or mr = 28 (A, AMX) wide
  float tmp[KB * kMaxWidth];
  for (int64_t kb = 0; kb < kc; kb += KB) {
    const int64_t kn = std::min(KB, kc - kb);
    PACK(tmp, width, k0 + kb, kn, x0, nx, 1.f, ctx);
    bf16* d = dst + (kb / 2) * width * 2;
    for (int64_t p = 0; p < (kn + 1) / 2; p++)
      for (int64_t x = 0; x < width; x++) {
        d[(p * width + x) * 2] = f32_to_bf16(tmp[2 * p * width + x]);
        d[(p * width + x) * 2 + 1] = 2 * p + 1 < kn ? f32_to_bf16(tmp[(2 * p + 1) * width + x]) : bf16(0);
      }
  }
}

// ---- 4-bit straight to bf16 k-pairs (bf16 compute) -------------------------------------------
// Per block a 16-entry table of the rounded values as bf16 (exact: they are bf16 already), so a
// code becomes its bf16 without an f32 panel in between.
struct Bf16Lut {
  bf16 v[16];
  void fill(const QuantCtx& q, int64_t block) {
    const float m = q.w->scales[block];
    for (int c = 0; c < 16; c++) v[c] = f32_to_bf16(round_to_bf16(q.table[c] * m));
  }
};

inline uint8_t nibble(const uint8_t* packed, int64_t i) {
  const uint8_t byte = packed[i >> 1];
  return (i & 1) ? byte & 15 : byte >> 4;  // the first element in the high nibble
}

// B = Wᵀ (the forward X·Wᵀ): panel column x is a run of weight row x0 + x along k, so k-pair p
// is elements (2p, 2p+1) of the run. When the run starts on a byte, each byte is one pair.
void pack_4bit_trans_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, const void* ctx) {
  const QuantCtx q = ctx_of(ctx);
  const uint8_t* packed = static_cast<const uint8_t*>(q.w->codes);
  const int64_t npairs = (kc + 1) / 2, pair_stride = 2 * width;
  Bf16Lut lut;
  for (int64_t x = 0; x < nx; x++) {
    const int64_t start = (x0 + x) * q.w->cols + k0;
    bf16* out = dst + 2 * x;
    int64_t k = 0;
    while (k < kc) {
      const int64_t b = (start + k) >> q.shift;
      const int64_t seg = std::min(kc, ((b + 1) << q.shift) - start);
      lut.fill(q, b);
      if (((start | k) & 1) == 0) {
        // Byte-aligned with k even: whole bytes are whole pairs while two elements remain.
        const uint8_t* p = packed + ((start + k) >> 1);
        for (; k + 1 < seg; k += 2, p++) {
          bf16* o = out + (k >> 1) * pair_stride;
          o[0] = lut.v[*p >> 4];
          o[1] = lut.v[*p & 15];
        }
      }
      for (; k < seg; k++) out[(k >> 1) * pair_stride + (k & 1)] = lut.v[nibble(packed, start + k)];
    }
    if (kc & 1) out[(npairs - 1) * pair_stride + 1] = bf16(0);
  }
  for (int64_t p = 0; p < npairs; p++)
    for (int64_t x = nx; x < width; x++) dst[(p * width + x) * 2] = dst[(p * width + x) * 2 + 1] = bf16(0);
}

// B = W (the input gradient dY·W): k-pair p is weight rows k0 + 2p and k0 + 2p + 1, each decoded
// along x into every other bf16 of the pair row.
void pack_4bit_rows_pairs(bf16* dst, int64_t width, int64_t k0, int64_t kc, int64_t x0, int64_t nx, const void* ctx) {
  const QuantCtx q = ctx_of(ctx);
  const uint8_t* packed = static_cast<const uint8_t*>(q.w->codes);
  const int64_t npairs = (kc + 1) / 2;
  Bf16Lut lut;
  for (int64_t k = 0; k < 2 * npairs; k++) {
    bf16* out = dst + (k >> 1) * 2 * width + (k & 1);
    int64_t x = 0;
    if (k < kc) {
      const int64_t start = (k0 + k) * q.w->cols + x0;
      while (x < nx) {
        const int64_t b = (start + x) >> q.shift;
        const int64_t seg = std::min(nx, ((b + 1) << q.shift) - start);
        lut.fill(q, b);
        for (; x < seg; x++) out[2 * x] = lut.v[nibble(packed, start + x)];
      }
    }
    for (; x < width; x++) out[2 * x] = bf16(0);  // panel padding, and the pad row of an odd kc
  }
}

}  // namespace

PanelSource quant_weight_source(const QuantWeight* w, bool trans) {
  const bool int8 = w->format == QuantFormat::INT8;
  PanelSource src;
  src.pack = int8 ? (trans ? pack_int8_trans : pack_int8_rows) : (trans ? pack_4bit_trans : pack_4bit_rows);
  // Pairs only under bf16 compute: a bf16 A times an unrounded W stays an f32 product.
  if (w->round_bf16)
    src.pack_bf16_pairs = int8 ? (trans ? pack_pairs<pack_int8_trans> : pack_pairs<pack_int8_rows>)
                               : (trans ? pack_4bit_trans_pairs : pack_4bit_rows_pairs);
  src.ctx = w;
  return src;
}

void gemm_quant(int64_t M, int64_t N, int64_t K, float alpha, MatRef A, QuantWeight W, bool w_trans, float beta,
                float* C, int64_t ldc) {
  MatRef a_view = A;  // the A source reads op(A)ᵀ
  a_view.trans = !A.trans;
  const PanelTerm term{matref_source(&a_view), quant_weight_source(&W, w_trans), K, alpha};
  gemm_panels(M, N, &term, 1, beta, C, DType::F32, ldc);
}

}  // namespace pk::cpu
