// e^x for x <= 0 that GCC's auto-vectorizer can vectorize (libm's expf does not without
// -ffast-math, and float compares are not if-converted under the default -ftrapping-math, so
// the selects are done on the bits). Used by the pointwise activations and the cross-entropy.
//
// x = n·ln2 + r with |r| <= ln2/2 (Cody–Waite: ln2 split so n·ln2_hi is exact), e^r by its Taylor
// series to r^7 (truncation under 1e-8 relative), 2^n built in the exponent bits: within ~2 ulp.
// Below -87 (where e^x leaves f32's normal range) and at -inf the result is 0; NaN stays NaN.
//
// Include it only INSIDE an anonymous namespace: each includer (portable and per-ISA files) gets
// a private copy compiled with its own flags. (No include guard on purpose.)

inline float exp_nonpositive(float x) {
  int32_t xb;
  __builtin_memcpy(&xb, &x, 4);
  // All ones unless 87 < |x| <= inf (NaN keeps its bits and propagates).
  const int32_t keep = -int32_t(uint32_t((xb & 0x7fffffff) - 0x42ae0001) >= uint32_t(0x7f800000 - 0x42ae0000));
  const int32_t xcb = (xb & keep) | (int32_t(0xc2ae0000) & ~keep);  // 0xc2ae0000 is -87.f
  float xc;
  __builtin_memcpy(&xc, &xcb, 4);
  const float kRound = 12582912.f;  // 1.5·2^23: adding and subtracting it rounds to an integer
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t scale_bits = (int32_t(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &scale_bits, 4);
  const float e = p * scale;
  int32_t eb;
  __builtin_memcpy(&eb, &e, 4);
  eb &= keep;
  float out;
  __builtin_memcpy(&out, &eb, 4);
  return out;
}
