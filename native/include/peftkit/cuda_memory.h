// The few CUDA runtime calls the core needs (implemented in native/cuda/memory.cu) so that
// no C++ file outside native/cuda includes a CUDA header.
#pragma once
#include <cstddef>

namespace pk::cuda {

int device_count();  // 0 when no driver or no device
void* malloc_device(size_t bytes);
void free_device(void* p);
void copy_h2d(void* dst, const void* src, size_t bytes);
void copy_d2h(void* dst, const void* src, size_t bytes);
void copy_d2d(void* dst, const void* src, size_t bytes);
void synchronize();

}  // namespace pk::cuda
