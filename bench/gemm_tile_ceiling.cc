/* The ceiling of AVX-512 f32 GEMM micro-kernel shapes on this CPU: an mr × (16·nv) tile of C in
 * zmm accumulators, one broadcast of A and nv loads of B per k step (the layout of
 * native/cpu/gemm_avx512.cc), run over the same packed panels again and again so that nothing
 * but the kernel is timed: B either one panel (in L1 with A) or `panels` panels side by side
 * (L2). One thread, by thread CPU time (other processes do not lower it), best of 7; printed as
 * a fraction of `peak` GFLOP/s per core (bench/fma_ceiling.c's per-core figure).
 *   g++ -O3 -march=native -std=c++17 bench/gemm_tile_ceiling.cc -o tile && ./tile 214
 * Used for BENCHMARKS.md, GEMM, "What limits it": which tile and how much loop unrolling, on a
 * core with two 512-bit FMA ports. */
#include <immintrin.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

static double cpu_s() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// C[mr, 16·NV] += A·B over kc steps, UNR steps per loop trip.
template <int MR, int NV, int UNR>
__attribute__((noinline)) void tile(long kc, const float* a, const float* b, float* c, long ldc) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
  for (long k = 0; k < kc; k += UNR) {
#pragma GCC unroll 4
    for (int u = 0; u < UNR; u++) {
      __m512 bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; v++) bv[v] = _mm512_loadu_ps(b + v * 16);
#pragma GCC unroll 16
      for (int i = 0; i < MR; i++) {
        const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
      }
      a += MR;
      b += NV * 16;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++)
      _mm512_storeu_ps(c + i * ldc + v * 16, _mm512_add_ps(acc[i][v], _mm512_loadu_ps(c + i * ldc + v * 16)));
}

template <int MR, int NV, int UNR>
void run(long kc, int panels, double peak) {
  std::vector<float> A(MR * kc, 1.f), B(kc * NV * 16 * panels, 0.5f), C(MR * NV * 16 * panels);
  const long iters = 300000000L / (kc * panels * MR * NV);
  double best = 1e9;
  for (int r = 0; r < 7; r++) {
    const double t0 = cpu_s();
    for (long it = 0; it < iters; it++)
      for (int j = 0; j < panels; j++)
        tile<MR, NV, UNR>(kc, A.data(), B.data() + j * kc * NV * 16, C.data() + j * NV * 16, NV * 16 * panels);
    const double t = cpu_s() - t0;
    if (t < best) best = t;
  }
  const double gflops = 2.0 * MR * NV * 16 * kc * iters * panels / best / 1e9;
  std::printf("%2dx%-3d unroll %d  kc %ld  B %5ld KiB: %6.1f GFLOP/s  %3.0f%% of peak\n", MR, NV * 16, UNR, kc,
              kc * NV * 16 * panels * 4 / 1024, gflops, 100 * gflops / peak);
}

int main(int argc, char** argv) {
  const double peak = argc > 1 ? std::atof(argv[1]) : 214;
  for (const long kc : {256L, 384L})
    for (const int panels : {1, 21}) {
      run<14, 2, 1>(kc, panels, peak);
      run<14, 2, 2>(kc, panels, peak);
      run<14, 2, 4>(kc, panels, peak);
      run<12, 2, 2>(kc, panels, peak);
      run<8, 3, 2>(kc, panels, peak);
      run<6, 4, 2>(kc, panels, peak);
      run<4, 6, 2>(kc, panels, peak);
    }
}
