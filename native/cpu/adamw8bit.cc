// AdamW with 8-bit blockwise states (bitsandbytes' "8-bit Adam"): each moment is stored as one
// byte per element, the index of a code in a 256-entry dynamic map, scaled by one f32 absmax
// per block of 256 elements. A step decodes a block into f32, runs the f32 AdamW update of
// adamw.cc, takes the block's new absmax and encodes it again: 2 bytes of state per parameter
// instead of 8.
//
// Work is cut into items of whole blocks (up to kItem elements of one tensor) so that a block
// never straddles two threads, and results do not depend on the thread count.
#include <cmath>
#include <vector>

#include "peftkit/dynamic_maps.h"
#include "peftkit/kernels.h"
#include "peftkit/parallel.h"

namespace pk::cpu {

namespace {

constexpr int64_t kBlock = kAdamW8bitBlock;
constexpr int64_t kItem = 128 * kBlock;  // elements per work item: 32k, as adamw.cc's blocks

struct Item {
  int64_t tensor, lo, hi;
};

// AdamW's f32 scalars for one step, formed as adamw.cc forms them.
struct Coeffs {
  float step_size, bc2_sqrt, w1, w1c, b2, w2, eps;
};

Coeffs coeffs(const AdamWHyper& h) {
  const double t = double(h.step);
  Coeffs k;
  k.step_size = float(h.lr / (1.0 - std::pow(h.beta1, t)));
  k.bc2_sqrt = float(std::sqrt(1.0 - std::pow(h.beta2, t)));
  k.w1 = float(1.0 - h.beta1);
  k.w1c = 1.f - k.w1;
  k.b2 = float(h.beta2);
  k.w2 = float(1.0 - h.beta2);
  k.eps = float(h.eps);
  return k;
}

// One element in torch.optim.AdamW's order of f32 operations (the same as adamw.cc's loop):
// m.lerp_(g, 1 - b1), v·b2 + (1 - b2)·g·g, p·(1 - lr·wd) + (-step_size·m) / (sqrt(v)/sqrt(bc2) + eps).
inline void adamw_element(float& p, float& m, float& v, float g, const Coeffs& k, float decay) {
  m = k.w1 < 0.5f ? m + k.w1 * (g - m) : g - (g - m) * k.w1c;
  v = v * k.b2 + k.w2 * g * g;
  p = p * decay + -k.step_size * m / (std::sqrt(v) / k.bc2_sqrt + k.eps);
}

// The index of the code nearest to x in a strictly increasing 256-entry map; ties go to the
// lower code. Eight halvings find the last code <= x, then its upper neighbour may be nearer.
inline uint8_t nearest_code(const float* map, float x) {
  int i = 0;
  for (int s = 128; s > 0; s >>= 1)
    if (map[i + s] <= x) i += s;
  if (i < 255 && map[i + 1] - x < x - map[i]) i++;
  return uint8_t(i);
}

// Does g[0, n) hold only finite values? g - g is 0 for finite g and NaN for NaN or ±inf.
bool all_finite(const float* g, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; j++) acc += g[j] - g[j];
  return acc == 0.f;
}

void update_f32(const AdamW8bitRef& r, int64_t lo, int64_t hi, const Coeffs& k, float decay) {
  for (int64_t j = lo; j < hi; j++) adamw_element(r.param[j], r.m[j], r.v[j], r.grad[j], k, decay);
}

// Blocks of [lo, hi): lo is a multiple of kBlock, hi one too or the tensor's end.
void update_8bit(const AdamW8bitRef& r, int64_t lo, int64_t hi, const Coeffs& k, float decay) {
  float mb[kBlock], vb[kBlock];
  for (int64_t b0 = lo; b0 < hi; b0 += kBlock) {
    const int64_t n = hi - b0 < kBlock ? hi - b0 : kBlock, blk = b0 / kBlock;
    float* p = r.param + b0;
    const float* g = r.grad + b0;
    uint8_t *mc = r.m_code + b0, *vc = r.v_code + b0;
    const float am = r.m_absmax[blk], av = r.v_absmax[blk];
    float max_m = 0.f, max_v = 0.f;
    for (int64_t j = 0; j < n; j++) {
      float m = kDynamicSigned256[mc[j]] * am, v = kDynamicUnsigned256[vc[j]] * av;
      adamw_element(p[j], m, v, g[j], k, decay);
      mb[j] = m;
      vb[j] = v;
      max_m = std::fabs(m) > max_m ? std::fabs(m) : max_m;
      max_v = v > max_v ? v : max_v;
    }
    r.m_absmax[blk] = max_m;
    r.v_absmax[blk] = max_v;
    for (int64_t j = 0; j < n; j++) {
      mc[j] = nearest_code(kDynamicSigned256, max_m > 0.f ? mb[j] / max_m : 0.f);
      vc[j] = nearest_code(kDynamicUnsigned256, max_v > 0.f ? vb[j] / max_v : 0.f);
    }
  }
}

}  // namespace

int64_t adamw8bit(const AdamW8bitRef* params, int64_t count, AdamWHyper h) {
  std::vector<Item> items;
  for (int64_t t = 0; t < count; t++)
    for (int64_t lo = 0; lo < params[t].n; lo += kItem)
      items.push_back(Item{t, lo, lo + kItem < params[t].n ? lo + kItem : params[t].n});
  const int64_t ni = int64_t(items.size());
  const int threads = int(ni < num_threads() ? (ni > 0 ? ni : 1) : num_threads());

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

  const Coeffs k = coeffs(h);
#pragma omp parallel for schedule(static) num_threads(threads) if (ni > 1)
  for (int64_t i = 0; i < ni; i++) {
    const Item& it = items[size_t(i)];
    if (!ok[size_t(it.tensor)]) continue;
    const AdamW8bitRef& r = params[it.tensor];
    const float decay = float(1.0 - h.lr * double(r.weight_decay));
    if (r.m_code) update_8bit(r, it.lo, it.hi, k, decay);
    else update_f32(r, it.lo, it.hi, k, decay);
  }

  int64_t skipped = 0;
  for (uint8_t o : ok) skipped += !o;
  return skipped;
}

}  // namespace pk::cpu
