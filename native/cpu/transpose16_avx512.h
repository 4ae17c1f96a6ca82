// A 16×16 transpose of 32-bit values in AVX-512 registers, shared by the GEMM packers and the
// attention key tiles. Include it only from *_avx512.cc files, INSIDE their anonymous namespace:
// each includer then gets a private copy compiled with its own flags (the ISA-file rule).
// (No include guard on purpose: one copy per anonymous namespace.)

__attribute__((always_inline)) inline __m512 unpacklo_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
__attribute__((always_inline)) inline __m512 unpackhi_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// r[i] = row i of a 16×16 block of 32-bit values  →  r[j] = column j. Pure data movement, so it
// serves bf16 pairs as well as floats.
__attribute__((always_inline)) inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane l: column 4l + c of rows 4i..4i+3.
  __m512 u[16];
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    u[4 * i] = unpacklo_pd(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = unpackhi_pd(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = unpacklo_pd(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = unpackhi_pd(t[4 * i + 1], t[4 * i + 3]);
  }
  // Column 4l + c gathers lane l of u[c], u[4 + c], u[8 + c], u[12 + c]: a 4×4 lane transpose.
#pragma GCC unroll 4
  for (int c = 0; c < 4; c++) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}
