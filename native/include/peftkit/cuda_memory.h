// The few CUDA runtime calls the core needs (implemented in native/cuda/memory.cu) so that
// no C++ file outside native/cuda includes a CUDA header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pk::cuda {

// Copies between host and device since the process started, counted where they are made (the
// copies below and the kernels that read a result back): a test reads them around a training
// step to check that only the scalars it reports cross (issue 13).
struct CopyCounts {
  uint64_t to_host, to_host_bytes, to_device, to_device_bytes;
};
CopyCounts copy_counts();

int device_count();  // 0 when no driver or no device
// Makes device `index` (of the visible ones) this process's device, current on every thread that
// works on CUDA from now on (common.cuh bind_device): torch.cuda.set_device for a rank of a
// distributed run. Once per process, before any CUDA work, which would take device 0: E_DEVICE
// otherwise, and for an index out of range. Choosing the same device again is a no-op.
void use_device(int index);
// The process's device: the chosen one, 0 once CUDA work ran without a choice, -1 before either.
int current_device();
// "<name> (PCI <bus id>)", for logs: CUDA_VISIBLE_DEVICES renumbers, the bus id does not.
std::string describe_device(int index);
// From the device's memory pool, stream-ordered on the calling thread's stream (memory.cu).
void* malloc_device(size_t bytes);
void free_device(void* p);
void free_managed(void* p);
// Managed (unified) memory, zeroed: the driver migrates its pages between GPU and host.
void* malloc_managed(size_t bytes);
// Asynchronously moves managed pages to the current GPU (to_device) or to host memory, on the
// stream the kernels use, so a prefetch to the GPU is ordered before the next kernel.
void prefetch(const void* p, size_t bytes, bool to_device);
void copy_h2d(void* dst, const void* src, size_t bytes);
void copy_d2h(void* dst, const void* src, size_t bytes);
void copy_d2d(void* dst, const void* src, size_t bytes);
// Zeroes device bytes on the kernels' stream (ordered before the next kernel).
void zero_device(void* p, size_t bytes);
// The libcublasLt file the dense GEMMs use (cublaslt.cu), or "" when our kernels do them all.
// Loads it on first call; throws E_CUDA under PEFTKIT_CUBLASLT=1 when it cannot be loaded.
const char* blas_library();
// Waits for the calling thread's stream; a kernel fault surfaces here as E_CUDA.
void synchronize();
// An event recorded on the calling thread's stream (for AsyncOrder); another thread's stream
// waits for it with wait_event. Destroying it while a wait is pending is allowed.
void* record_event();
void wait_event(void* event);
void destroy_event(void* event);

}  // namespace pk::cuda
