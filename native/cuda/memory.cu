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

void copy_h2d(void* dst, const void* src, size_t bytes) { check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to device"); }

void copy_d2h(void* dst, const void* src, size_t bytes) { check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to host"); }

void copy_d2d(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy on device");
}

void synchronize() { check(cudaStreamSynchronize(cudaStreamPerThread), "synchronize"); }

}  // namespace pk::cuda
