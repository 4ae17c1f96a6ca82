// Device memory for pk::Storage, and the error check every CUDA file uses.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
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

void use_device(int index) {
  const int n = device_count();
  if (index < 0 || index >= n)
    fail("E_DEVICE", "CUDA device " + std::to_string(index) + ": expected an index in [0, " + std::to_string(n) + ") of the " + std::to_string(n) + " visible devices");
  int current = -1;
  if (!g_device.compare_exchange_strong(current, index, std::memory_order_acq_rel) && current != index)
    fail("E_DEVICE", "CUDA device " + std::to_string(index) + " cannot be chosen: this process already works on CUDA device " + std::to_string(current) +
                         " (CUDA tensors or kernels came first, or another device was chosen); choose it once, before any CUDA work");
  bind_device();
}

int current_device() { return g_device.load(std::memory_order_acquire); }

// Remembered: runtimeInfo() asks on every CUDA tensor made (deviceChoice), and
// cudaGetDeviceProperties reads every attribute of the device.
std::string describe_device(int index) {
  static std::mutex mu;
  static std::map<int, std::string> known;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(index);
  if (it != known.end()) return it->second;
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, index), "device properties");
  char bus[32] = {0};
  check(cudaDeviceGetPCIBusId(bus, sizeof bus, index), "device PCI bus id");
  return known[index] = std::string(p.name) + " (PCI " + bus + ")";
}

namespace {

// Device tensors (activations, gradients, op scratch) come from the device's default memory
// pool (cudaMallocAsync's, shared with the few kernels that allocate their own scratch), stream-ordered on the kernels' stream: cudaFree synchronizes the whole device, and a
// training step frees hundreds of tensors. The pool's release threshold is raised from 0 (give
// everything back to the driver at each synchronization) to "keep all", so the next step's
// allocations of the same sizes are served from the pool without the driver. Null where the
// device has no memory pools (some virtualized GPUs): cudaMalloc/cudaFree then.
cudaMemPool_t device_pool() {
  static const cudaMemPool_t pool = [] {
    int dev = 0, supported = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess || !supported) {
      cudaGetLastError();
      return cudaMemPool_t{};
    }
    cudaMemPool_t p{};
    check(cudaDeviceGetDefaultMemPool(&p, dev), "the device's memory pool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(p, cudaMemPoolAttrReleaseThreshold, &keep), "the memory pool's release threshold");
    return p;
  }();
  return pool;
}

cudaError_t try_malloc(void** p, size_t bytes) {
  return device_pool() ? cudaMallocAsync(p, bytes, stream()) : cudaMalloc(p, bytes);
}

}  // namespace

void* malloc_device(size_t bytes) {
  bind_device();
  void* p = nullptr;
  cudaError_t e = try_malloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation && device_pool()) {
    // The pool may hold freed blocks that other threads' streams have not reached yet, or that
    // it keeps for reuse: wait for every stream, hand the cached blocks back, and try once more.
    cudaGetLastError();
    check(cudaDeviceSynchronize(), "synchronize before trimming the memory pool");
    check(cudaMemPoolTrimTo(device_pool(), 0), "trim the memory pool");
    e = try_malloc(&p, bytes);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("E_OOM", "out of CUDA memory allocating " + std::to_string(bytes) + " bytes: " + cudaGetErrorString(e));
  }
  return p;
}

// Freed on the calling thread's stream: work queued there before (every kernel that used the
// block, on this thread) runs first. Other threads' kernels are finished by then: an async op
// synchronizes its stream before its promise settles (AsyncOrder).
void free_device(void* p) {
  bind_device();
  if (device_pool()) cudaFreeAsync(p, stream());
  else cudaFree(p);
}

void free_managed(void* p) {
  bind_device();
  cudaFree(p);
}

void* malloc_managed(size_t bytes) {
  bind_device();
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
  bind_device();
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

void copy_h2d(void* dst, const void* src, size_t bytes) {
  bind_device();
  count_copy(false, bytes);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device");
}

void zero_device(void* p, size_t bytes) { check(cudaMemsetAsync(p, 0, bytes, stream()), "zero device memory"); }

void copy_d2h(void* dst, const void* src, size_t bytes) {
  bind_device();
  count_copy(true, bytes);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

CopyCounts copy_counts() {
  const CopyCounter& c = copy_counter();
  return {c.to_host.load(), c.to_host_bytes.load(), c.to_device.load(), c.to_device_bytes.load()};
}

void copy_d2d(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy on device");
}

void synchronize() { check(cudaStreamSynchronize(stream()), "synchronize"); }

void* record_event() {
  bind_device();
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

void destroy_event(void* event) {
  bind_device();
  cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

}  // namespace pk::cuda
