/* The f32 FMA ceiling of this machine: 12 independent FMA chains per thread, 16-wide with
 * AVX-512, else 8-wide with AVX2. Used by bench/kernels/gemm.ts to report GEMM speed as a
 * fraction of what the cores can do.
 *   cc -O2 -march=native -fopenmp fma_ceiling.c -o fma_ceiling && OMP_NUM_THREADS=2 ./fma_ceiling
 * Prints the wall-clock ceiling of all threads together, and the ceiling per core by thread CPU
 * time, which other processes on a shared machine do not lower. With AVX512-BF16 it also prints
 * the ceiling of VDPBF16PS (two bf16 multiply-adds per f32 lane), the bf16 GEMM's peak.
 * Each chain starts from a different value read through a volatile, so the compiler cannot
 * merge the chains into one (with identical seeds it may, and then 12 latency-bound FMAs get
 * counted as 12 FMAs per cycle), and the accumulators are plain locals, kept in registers. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

static double clock_s(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define WIDTH 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec;
#define WIDTH 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STORE _mm256_storeu_ps
#endif

static volatile float seed = 1.0f;

int main(void) {
  const long iters = 40000000;
  double total = 0, per_cpu = 0;
#pragma omp parallel reduction(+ : total, per_cpu)
  {
    const float s = seed;
    const vec x = SET1(0.999999f), y = SET1(1e-7f);
    vec a0 = SET1(s), a1 = SET1(s + 1), a2 = SET1(s + 2), a3 = SET1(s + 3), a4 = SET1(s + 4), a5 = SET1(s + 5);
    vec a6 = SET1(s + 6), a7 = SET1(s + 7), a8 = SET1(s + 8), a9 = SET1(s + 9), a10 = SET1(s + 10), a11 = SET1(s + 11);
    const double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < iters; i++) {
      a0 = FMA(a0, x, y); a1 = FMA(a1, x, y); a2 = FMA(a2, x, y); a3 = FMA(a3, x, y);
      a4 = FMA(a4, x, y); a5 = FMA(a5, x, y); a6 = FMA(a6, x, y); a7 = FMA(a7, x, y);
      a8 = FMA(a8, x, y); a9 = FMA(a9, x, y); a10 = FMA(a10, x, y); a11 = FMA(a11, x, y);
    }
    const double dt = clock_s(CLOCK_MONOTONIC) - t, dc = clock_s(CLOCK_THREAD_CPUTIME_ID) - c;
    vec v = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    v = ADD(v, ADD(ADD(a8, a9), ADD(a10, a11)));
    float out[WIDTH];
    STORE(out, v);
    const double gflops = iters * 12.0 * WIDTH * 2 / dt / 1e9;
    total += gflops;
    per_cpu += iters * 12.0 * WIDTH * 2 / dc / 1e9 / omp_get_num_threads();
#pragma omp critical
    printf("thread %d: %.1f GFLOP/s f32 (%d-wide FMA; checksum %g)\n", omp_get_thread_num(), gflops, WIDTH, out[0]);
  }
  printf("ceiling: %.1f GFLOP/s f32 over %d threads\n", total, omp_get_max_threads());
  printf("cpu ceiling: %.1f GFLOP/s f32 per core (by thread CPU time)\n", per_cpu);
#if defined(__AVX512BF16__)
  double bf = 0, bf_cpu = 0;
#pragma omp parallel reduction(+ : bf, bf_cpu)
  {
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    const float s = seed;
    __m512 a0 = SET1(s), a1 = SET1(s + 1), a2 = SET1(s + 2), a3 = SET1(s + 3), a4 = SET1(s + 4), a5 = SET1(s + 5);
    __m512 a6 = SET1(s + 6), a7 = SET1(s + 7), a8 = SET1(s + 8), a9 = SET1(s + 9), a10 = SET1(s + 10), a11 = SET1(s + 11);
    const double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_THREAD_CPUTIME_ID);
    for (long i = 0; i < iters / 2; i++) {
#define DP(a) a = _mm512_dpbf16_ps(a, x, y)
      DP(a0); DP(a1); DP(a2); DP(a3); DP(a4); DP(a5); DP(a6); DP(a7); DP(a8); DP(a9); DP(a10); DP(a11);
    }
    const double dt = clock_s(CLOCK_MONOTONIC) - t, dc = clock_s(CLOCK_THREAD_CPUTIME_ID) - c;
    __m512 v = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    v = ADD(v, ADD(ADD(a8, a9), ADD(a10, a11)));
    float out[16];
    STORE(out, v);
    bf += (iters / 2) * 12.0 * 64 / dt / 1e9 + 0 * out[0];
    bf_cpu += (iters / 2) * 12.0 * 64 / dc / 1e9 / omp_get_num_threads();
  }
  printf("bf16 ceiling: %.1f GFLOP/s (VDPBF16PS) over %d threads\n", bf, omp_get_max_threads());
  printf("cpu bf16 ceiling: %.1f GFLOP/s (VDPBF16PS) per core (by thread CPU time)\n", bf_cpu);
#endif
  return 0;
}
