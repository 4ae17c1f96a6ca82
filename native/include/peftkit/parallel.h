// CPU parallelism: OpenMP teams. Each calling thread (a Node worker, a libuv pool thread)
// gets its own team, so concurrent callers from several workers never share mutable state.
#pragma once
#include <cstdint>

namespace pk {

int num_threads();            // threads a kernel may use (PEFTKIT_NUM_THREADS, else all cores)
void set_num_threads(int n);  // process-wide cap; 0 restores the default

}  // namespace pk
