// Device memory for pk::Storage, and the error check every CUDA file uses.
#include <cuda_runtime.h>

#include <string>

#include "common.cuh"
#include "peftkit/cuda_memory.h"

namespace pk::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

void* malloc_device(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess)
    fail("E_OOM", "out of CUDA memory allocating " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
  return p;
}

void free_device(void* p) { cudaFree(p); }

void* malloc_managed(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaMallocManaged(&p, bytes, cudaMemAttachGlobal);
  if (e != cudaSuccess)
    fail("E_OOM", "out of CUDA managed memory allocating " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
  e = cudaMemset(p, 0, bytes);
  if (e != cudaSuccess) {
    cudaFree(p);
    check(e, "zero managed memory");
  }
  return p;
}

void prefetch(const void* p, size_t bytes, bool to_device) {
  // Prefetching needs a GPU that can access managed memory concurrently with the host; where it
  // cannot (Windows, WSL, some virtualized GPUs) the driver migrates pages on demand instead, so
  // the prefetch is a hint to drop, not an error to raise.
  int current = 0;
  check(cudaGetDevice(&current), "prefetch: current device");
  int concurrent = 0;
  check(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, current), "prefetch: device attributes");
  if (!concurrent) return;
  const int device = to_device ? current : cudaCpuDeviceId;
#if CUDART_VERSION >= 13000
  // CUDA 13 takes a location (the form 12.x called cudaMemPrefetchAsync_v2).
  cudaMemLocation loc{};
  loc.type = to_device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
  loc.id = to_device ? device : 0;
  check(cudaMemPrefetchAsync(p, bytes, loc, 0, stream()), "prefetch managed memory");
#else
  check(cudaMemPrefetchAsync(p, bytes, device, stream()), "prefetch managed memory");
#endif
}

void copy_h2d(void* dst, const void* src, size_t bytes) { check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device"); }

void zero_device(void* p, size_t bytes) { check(cudaMemsetAsync(p, 0, bytes, stream()), "zero device memory"); }

void copy_d2h(void* dst, const void* src, size_t bytes) { check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host"); }

void copy_d2d(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy on device");
}

void synchronize() { check(cudaStreamSynchronize(stream()), "synchronize"); }

void* record_event() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "create an event");
  const cudaError_t r = cudaEventRecord(e, stream());
  if (r != cudaSuccess) {
    cudaEventDestroy(e);
    check(r, "record an event");
  }
  return e;
}

void wait_event(void* event) { check(cudaStreamWaitEvent(stream(), static_cast<cudaEvent_t>(event), 0), "wait for an event"); }

void destroy_event(void* event) { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }

}  // namespace pk::cuda
