// The AMX-BF16 GEMM kernel (gemm_amx_kernel.inc) on a software model of the tiles, for
// PEFTKIT_ISA=amx-emulated: the tile program, tile configuration and panel layouts are tested on
// CPUs without AMX, through the whole GEMM driver and every operand source. Slow (scalar) and
// never picked unless asked for.
//
// The model follows the instruction definitions in Intel's SDM, and enforces what the hardware
// faults on, as an abort naming the fault: palette 1 only, reserved bytes zero, a tile used
// beyond its configured shape, TDPBF16PS operands whose shapes disagree (A's columns / 4 must be
// B's rows, C and A the same rows, C and B the same columns) or that alias. TDPBF16PS is modelled
// on the SDM's pseudo-code (which is more specific than the intrinsics guide's): per row of C,
// even and odd products accumulate in two f32 lanes per column over all k-pairs of the
// instruction (FMA, round to nearest even), then the two lanes are added and the sum added to C;
// inputs and results that are subnormal are taken as zero (DAZ / FTZ). Hardware may still sum in
// another order within those rules: the tests compare with tolerances, never bit for bit.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "gemm_kernels.h"

namespace pk::cpu {

namespace {

#include "transpose16_avx512.h"

struct TileFile {
  bool configured = false;
  uint16_t colsb[8] = {};
  uint8_t rows[8] = {};
  alignas(64) unsigned char data[8][16][64] = {};
};
// Per thread, as the hardware's tiles are (each OpenMP thread configures its own).
thread_local TileFile tiles;

[[noreturn]] void fault(const char* what, int t) {
  std::fprintf(stderr, "peftkit AMX emulator: %s (tmm%d)\n", what, t);
  std::abort();
}

void emu_config(const void* cfg) {
  const unsigned char* b = static_cast<const unsigned char*>(cfg);
  if (b[0] != 1) fault("ldtilecfg: palette other than 1", -1);
  for (int i = 1; i < 16; i++)
    if (b[i]) fault("ldtilecfg: start_row or reserved byte not zero", -1);
  for (int t = 0; t < 16; t++) {
    uint16_t colsb;
    std::memcpy(&colsb, b + 16 + 2 * t, 2);
    const uint8_t rows = b[48 + t];
    if (t >= 8) {
      if (colsb || rows) fault("ldtilecfg: palette 1 has 8 tiles", t);
      continue;
    }
    if (colsb > 64 || rows > 16 || (colsb == 0) != (rows == 0)) fault("ldtilecfg: tile shape out of range", t);
    tiles.colsb[t] = colsb;
    tiles.rows[t] = rows;
  }
  std::memset(tiles.data, 0, sizeof tiles.data);
  tiles.configured = true;
}

void check_tile(int t) {
  if (!tiles.configured) fault("tile instruction without a tile configuration", t);
  if (tiles.rows[t] == 0) fault("tile not configured", t);
}

void emu_zero(int t) {
  check_tile(t);
  std::memset(tiles.data[t], 0, sizeof tiles.data[t]);
}

void emu_load(int t, const void* p, int64_t stride) {
  check_tile(t);
  emu_zero(t);
  for (int r = 0; r < tiles.rows[t]; r++)
    std::memcpy(tiles.data[t][r], static_cast<const unsigned char*>(p) + r * stride, tiles.colsb[t]);
}

void emu_store(int t, void* p, int64_t stride) {
  check_tile(t);
  for (int r = 0; r < tiles.rows[t]; r++)
    std::memcpy(static_cast<unsigned char*>(p) + r * stride, tiles.data[t][r], tiles.colsb[t]);
}

float bf16_daz(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  if ((h & 0x7f80) == 0) h &= 0x8000;
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float ftz(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.f, v) : v; }

void emu_dp(int c, int a, int b) {
  check_tile(c);
  check_tile(a);
  check_tile(b);
  if (c == a || c == b || a == b) fault("tdpbf16ps: operands alias", c);
  if (tiles.colsb[a] % 4 || tiles.colsb[a] / 4 != tiles.rows[b]) fault("tdpbf16ps: A columns / 4 != B rows", a);
  if (tiles.colsb[c] != tiles.colsb[b]) fault("tdpbf16ps: C and B columns differ", c);
  if (tiles.rows[c] != tiles.rows[a]) fault("tdpbf16ps: C and A rows differ", c);
  const int K = tiles.colsb[a] / 4, N = tiles.colsb[c] / 4;
  for (int m = 0; m < tiles.rows[c]; m++) {
    float even[16] = {}, odd[16] = {};
    for (int k = 0; k < K; k++)
      for (int n = 0; n < N; n++) {
        const unsigned char *ap = tiles.data[a][m] + 4 * k, *bp = tiles.data[b][k] + 4 * n;
        even[n] = ftz(std::fma(bf16_daz(ap), bf16_daz(bp), even[n]));
        odd[n] = ftz(std::fma(bf16_daz(ap + 2), bf16_daz(bp + 2), odd[n]));
      }
    float* acc = reinterpret_cast<float*>(tiles.data[c][m]);
    for (int n = 0; n < N; n++) acc[n] = ftz(ftz(acc[n]) + ftz(even[n] + odd[n]));
  }
}

void emu_release() {
  tiles.configured = false;
  std::memset(tiles.data, 0, sizeof tiles.data);
}

#define PK_TILE_CONFIG(cfg) emu_config(cfg)
#define PK_TILE_ZERO(t) emu_zero(t)
#define PK_TILE_LOAD(t, p, s) emu_load(t, p, s)
#define PK_TILE_STORE(t, p, s) emu_store(t, p, s)
#define PK_TILE_DP(c, a, b) emu_dp(c, a, b)
#define PK_TILE_RELEASE() emu_release()

#include "gemm_amx_kernel.inc"

}  // namespace

GemmArch gemm_arch_amx_emulated(GemmArch avx512) {
  return amx_arch(avx512, "avx512+amx-bf16-emulated", amx_bf16_kernel);
}

}  // namespace pk::cpu
