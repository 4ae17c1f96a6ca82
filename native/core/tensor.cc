#include "peftkit/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#ifdef PEFTKIT_CUDA
#include "peftkit/cuda_memory.h"
#endif

namespace pk {

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device == Device::CPU) {
    // aligned_alloc wants a multiple of the alignment; never ask for 0 bytes.
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    data_ = std::aligned_alloc(64, rounded);
    if (!data_) fail("E_OOM", "out of host memory allocating " + std::to_string(bytes) + " bytes");
    return;
  }
#ifdef PEFTKIT_CUDA
  if (!cuda_available()) fail("E_DEVICE", "device 'cuda' requested but no CUDA device is visible");
  data_ = cuda::malloc_device(bytes == 0 ? 64 : bytes);
#else
  fail("E_DEVICE",
       "device 'cuda' requested but this build of peftkit has no CUDA support "
       "(build it with `npm run build:cuda` on a machine with the CUDA toolkit)");
#endif
}

Storage::~Storage() {
  if (!data_) return;
  if (device_ == Device::CPU) {
    std::free(data_);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::free_device(data_);
#endif
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  Tensor t;
  for (int64_t d : shape)
    if (d < 0) fail("E_SHAPE", "negative dimension in shape " + shape_str(shape));
  t.shape = shape;
  t.dtype = dtype;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::view(int64_t off, const std::vector<int64_t>& shp) const {
  Tensor v = *this;
  v.shape = shp;
  v.offset = offset + off;
  int64_t n = 1;
  for (int64_t d : shp) {
    if (d < 0) fail("E_SHAPE", "view: negative dimension in shape " + shape_str(shp));
    n *= d;
  }
  if (off < 0 || off + n > numel())
    fail("E_SHAPE", "view of " + std::to_string(n) + " elements at offset " + std::to_string(off) + " does not fit in " +
                        describe());
  return v;
}

void copy_tensor(const Tensor& dst, const Tensor& src) {
  if (dst.dtype != src.dtype || dst.numel() != src.numel())
    fail("E_SHAPE", "copy: destination " + dst.describe() + " and source " + src.describe() +
                        " differ in dtype or element count");
  const size_t bytes = src.nbytes();
  if (bytes == 0) return;
  if (dst.device == Device::CPU && src.device == Device::CPU) {
    std::memmove(dst.raw(), src.raw(), bytes);
    return;
  }
#ifdef PEFTKIT_CUDA
  if (dst.device == Device::CUDA && src.device == Device::CUDA) cuda::copy_d2d(dst.raw(), src.raw(), bytes);
  else if (dst.device == Device::CUDA) cuda::copy_h2d(dst.raw(), src.raw(), bytes);
  else cuda::copy_d2h(dst.raw(), src.raw(), bytes);
#endif
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); i++) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + shape_str(shape) + " on " + device_name(device);
}

void copy_from_host(const Tensor& dst, const void* src, size_t bytes) {
  if (bytes != dst.nbytes())
    fail("E_SHAPE", "copy of " + std::to_string(bytes) + " bytes into " + dst.describe() + " (" +
                        std::to_string(dst.nbytes()) + " bytes)");
  if (bytes == 0) return;
  if (dst.device == Device::CPU) {
    std::memcpy(dst.raw(), src, bytes);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::copy_h2d(dst.raw(), src, bytes);
#endif
}

void copy_to_host(void* dst, const Tensor& src, size_t bytes) {
  if (bytes != src.nbytes())
    fail("E_SHAPE", "copy of " + src.describe() + " into " + std::to_string(bytes) + " bytes");
  if (bytes == 0) return;
  if (src.device == Device::CPU) {
    std::memcpy(dst, src.raw(), bytes);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::copy_d2h(dst, src.raw(), bytes);
#endif
}

void expect_dtype(const Tensor& t, DType dtype, const char* what) {
  if (t.dtype != dtype)
    fail("E_DTYPE", std::string(what) + ": expected dtype " + dtype_name(dtype) + ", got " + t.describe());
}

void expect_shape(const Tensor& t, const std::vector<int64_t>& shape, const char* what) {
  if (t.shape != shape)
    fail("E_SHAPE", std::string(what) + ": expected shape " + shape_str(shape) + ", got " + t.describe());
}

void expect_ndim(const Tensor& t, int ndim, const char* what) {
  if (t.ndim() != ndim)
    fail("E_SHAPE", std::string(what) + ": expected " + std::to_string(ndim) + " dimensions, got " +
                        t.describe());
}

void expect_same_device(const Tensor& a, const Tensor& b, const char* what_a, const char* what_b) {
  if (a.device != b.device)
    fail("E_DEVICE", std::string(what_a) + " is " + a.describe() + " but " + what_b + " is " + b.describe());
}

bool cuda_available() {
#ifdef PEFTKIT_CUDA
  static const bool available = cuda::device_count() > 0;  // immutable after first use
  return available;
#else
  return false;
#endif
}

}  // namespace pk
