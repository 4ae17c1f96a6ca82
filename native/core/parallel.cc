#include "peftkit/parallel.h"

#include <atomic>
#include <cstdlib>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pk {

namespace {
std::atomic<int> g_cap{0};  // a setting, not state: safe to share between workers

int default_threads() {
  if (const char* env = std::getenv("PEFTKIT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}
}  // namespace

int num_threads() {
  int cap = g_cap.load(std::memory_order_relaxed);
  static const int dflt = default_threads();
  return cap > 0 ? cap : dflt;
}

void set_num_threads(int n) { g_cap.store(n > 0 ? n : 0, std::memory_order_relaxed); }

}  // namespace pk
