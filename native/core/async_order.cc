#include "peftkit/async_order.h"

#include "peftkit/tensor.h"
#ifdef PEFTKIT_CUDA
#include "peftkit/cuda_memory.h"
#endif

namespace pk {

AsyncOrder::AsyncOrder() {
#ifdef PEFTKIT_CUDA
  if (cuda_available()) event_ = cuda::record_event();
#endif
}

AsyncOrder::~AsyncOrder() {
#ifdef PEFTKIT_CUDA
  if (event_) cuda::destroy_event(event_);
#endif
}

void AsyncOrder::begin() {
#ifdef PEFTKIT_CUDA
  if (event_) cuda::wait_event(event_);
#endif
}

void AsyncOrder::end() {
#ifdef PEFTKIT_CUDA
  if (cuda_available()) cuda::synchronize();
#endif
}

}  // namespace pk
