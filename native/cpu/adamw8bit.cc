// AdamW with 8-bit blockwise states (bitsandbytes' "8-bit Adam"): each moment is stored as one
// byte per element, the index of a code in a 256-entry dynamic map, scaled by one f32 absmax
// per block of 256 elements. A step decodes a block into f32, runs the f32 AdamW update of
// adamw.cc, takes the block's new absmax and encodes it again: 2 bytes of state per parameter
// instead of 8.
//
// Work is cut into items of whole blocks (up to kItem elements of one tensor) so that a block
// never straddles two threads, and results do not depend on the thread count.
#include <cmath>
#include <cstring>
#include <vector>

#include "peftkit/dynamic_maps.h"
#include "peftkit/adamw_scalars.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {

constexpr int64_t kBlock = kAdamW8bitBlock;
constexpr int64_t kItem = 128 * kBlock;  // elements per work item: 32k, as adamw.cc's blocks

struct Item {
  int64_t tensor, lo, hi;
};

// AdamW over n elements in torch.optim.AdamW's order of f32 operations, the same as adamw.cc:
// m.lerp_(g, 1 - b1), v·b2 + (1 - b2)·g·g, p·(1 - lr·wd) + (-step_size·m) / (sqrt(v)/sqrt(bc2) + eps).
void update(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g, int64_t n,
            const AdamWScalars& k, float decay) {
  const float step = -k.step_size, bc2_sqrt = k.bc2_sqrt, w1 = k.w1, w1c = k.w1c, b2 = k.b2, w2 = k.w2, eps = k.eps;
  if (w1 < 0.5f) {  // torch's lerp: m + w·(g - m) for w < 0.5, else g - (g - m)·(1 - w)
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
      m[j] = m[j] + w1 * (g[j] - m[j]);
      v[j] = v[j] * b2 + w2 * g[j] * g[j];
      p[j] = p[j] * decay + step * m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; j++) {
      m[j] = g[j] - (g[j] - m[j]) * w1c;
      v[j] = v[j] * b2 + w2 * g[j] * g[j];
      p[j] = p[j] * decay + step * m[j] / (std::sqrt(v[j]) / bc2_sqrt + eps);
    }
  }
}

// Nearest code, exactly: code c is nearest to x when x lies between the midpoints (in double,
// where the mean of two floats is exact) on either side of it, so the code is the number of
// midpoints below x, a tie going to the lower code. A binary search over them costs eight
// badly predicted branches per value; instead the top 16 bits of x (sign, exponent, 7
// mantissa bits: buckets 1/128 of an octave wide) index a table of the count at the bucket's
// lowest value, and a fixed number of branch-free steps (the most any bucket needs: 1 for
// these maps) finishes the count.
constexpr int kBucketShift = 16;
constexpr int kBuckets = 1 << (32 - kBucketShift);

struct CodeIndex {
  double mid[256];          // mid[i] between codes i and i + 1; mid[255] = +inf
  uint8_t start[kBuckets];  // midpoints below the lowest value of the bucket
  int walk;                 // further midpoints any bucket's values can pass
};

float float_of(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

int midpoints_below(const CodeIndex& ix, double x) {
  int i = 0;
  while (i < 255 && ix.mid[i] < x) i++;
  return i;
}

CodeIndex make_index(const float* map) {
  CodeIndex ix;
  for (int i = 0; i < 255; i++) ix.mid[i] = (double(map[i]) + double(map[i + 1])) / 2;
  ix.mid[255] = INFINITY;
  ix.walk = 0;
  for (uint32_t b = 0; b < uint32_t(kBuckets); b++) {
    // The bucket's values run from its first to its last bit pattern; with the sign bit set
    // the last pattern is the lowest value.
    const float first = float_of(b << kBucketShift), last = float_of(((b + 1) << kBucketShift) - 1);
    const bool negative = b >> (31 - kBucketShift);
    const float lo = negative ? last : first, hi = negative ? first : last;
    if (std::isnan(lo) || std::isnan(hi)) {  // NaN patterns: never looked up
      ix.start[b] = 0;
      continue;
    }
    const int s = midpoints_below(ix, lo), e = midpoints_below(ix, hi);
    ix.start[b] = uint8_t(s);
    ix.walk = e - s > ix.walk ? e - s : ix.walk;
  }
  return ix;
}

// Built on first use and never written again (C++ static initialization is thread-safe).
const CodeIndex& signed_index() {
  static const CodeIndex ix = make_index(kDynamicSigned256);
  return ix;
}
const CodeIndex& unsigned_index() {
  static const CodeIndex ix = make_index(kDynamicUnsigned256);
  return ix;
}

// The codes nearest to x[0, n) (finite values).
void encode(uint8_t* __restrict code, const float* __restrict x, int64_t n, const CodeIndex& ix) {
  for (int64_t j = 0; j < n; j++) {
    uint32_t bits;
    std::memcpy(&bits, &x[j], sizeof bits);
    const double xd = x[j];
    int i = ix.start[bits >> kBucketShift];
    for (int k = 0; k < ix.walk; k++) i += ix.mid[i] < xd;
    code[j] = uint8_t(i);
  }
}

// Does g[0, n) hold only finite values? g - g is 0 for finite g and NaN for NaN or ±inf.
bool all_finite(const float* g, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; j++) acc += g[j] - g[j];
  return acc == 0.f;
}

// Blocks of [lo, hi): lo is a multiple of kBlock, hi one too or the tensor's end.
void update_8bit(const AdamW8bitRef& r, int64_t lo, int64_t hi, const AdamWScalars& k, float decay) {
  const CodeIndex &six = signed_index(), &uix = unsigned_index();
  float m[kBlock], v[kBlock];
  for (int64_t b0 = lo; b0 < hi; b0 += kBlock) {
    const int64_t n = hi - b0 < kBlock ? hi - b0 : kBlock, blk = b0 / kBlock;
    uint8_t *mc = r.m_code + b0, *vc = r.v_code + b0;
    const float am = r.m_absmax[blk], av = r.v_absmax[blk];
    for (int64_t j = 0; j < n; j++) {
      m[j] = kDynamicSigned256[mc[j]] * am;
      v[j] = kDynamicUnsigned256[vc[j]] * av;
    }
    update(r.param + b0, m, v, r.grad + b0, n, k, decay);
    float max_m = 0.f, max_v = 0.f;
#pragma omp simd reduction(max : max_m, max_v)
    for (int64_t j = 0; j < n; j++) {
      max_m = std::fabs(m[j]) > max_m ? std::fabs(m[j]) : max_m;
      max_v = v[j] > max_v ? v[j] : max_v;
    }
    r.m_absmax[blk] = max_m;
    r.v_absmax[blk] = max_v;
    // Normalized in place; an all-zero block stays 0 (the zero code) with absmax 0.
    if (max_m > 0.f) {
#pragma omp simd
      for (int64_t j = 0; j < n; j++) m[j] = m[j] / max_m;
    }
    if (max_v > 0.f) {
#pragma omp simd
      for (int64_t j = 0; j < n; j++) v[j] = v[j] / max_v;
    }
    encode(mc, m, n, six);
    encode(vc, v, n, uix);
  }
}

}  // namespace

int64_t adamw8bit(const AdamW8bitRef* params, int64_t count, AdamWHyper h, bool count_skipped) {
  std::vector<Item> items;
  for (int64_t t = 0; t < count; t++)
    for (int64_t lo = 0; lo < params[t].n; lo += kItem)
      items.push_back(Item{t, lo, lo + kItem < params[t].n ? lo + kItem : params[t].n});
  const int64_t ni = int64_t(items.size());
  [[maybe_unused]] const int threads = int(ni < num_threads() ? (ni > 0 ? ni : 1) : num_threads());

  // A non-finite gradient anywhere in a tensor skips the whole tensor, so every item is checked
  // before any is updated.
  std::vector<uint8_t> item_ok(size_t(ni), 1);
#pragma omp parallel for schedule(static) num_threads(threads) if (ni > 1)
  for (int64_t i = 0; i < ni; i++) {
    const Item& it = items[size_t(i)];
    item_ok[size_t(i)] = all_finite(params[it.tensor].grad + it.lo, it.hi - it.lo);
  }
  std::vector<uint8_t> ok(size_t(count), 1);
  for (int64_t i = 0; i < ni; i++) ok[size_t(items[size_t(i)].tensor)] &= item_ok[size_t(i)];

  const AdamWScalars k = adamw_scalars(h);
#pragma omp parallel for schedule(static) num_threads(threads) if (ni > 1)
  for (int64_t i = 0; i < ni; i++) {
    const Item& it = items[size_t(i)];
    if (!ok[size_t(it.tensor)]) continue;
    const AdamW8bitRef& r = params[it.tensor];
    const float decay = float(1.0 - h.lr * double(r.weight_decay));
    if (r.m_code) update_8bit(r, it.lo, it.hi, k, decay);
    else update(r.param + it.lo, r.m + it.lo, r.v + it.lo, r.grad + it.lo, it.hi - it.lo, k, decay);
  }

  int64_t skipped = 0;
  for (uint8_t o : ok) skipped += !o;
  return count_skipped ? skipped : -1;
}

}  // namespace pk::cpu
