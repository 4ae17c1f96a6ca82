#include "peftkit/tensor.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#define PEFTKIT_HAS_MMAP 1
#endif

#ifdef PEFTKIT_CUDA
#include "peftkit/cuda_memory.h"
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace pk {

namespace {
// glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, after which
// tensors of a few MiB come from the heap and their freed space is rarely returned: loading a
// model that stages every weight in f32 before quantizing it then leaves ~1 GB of dead heap.
// A fixed threshold keeps every tensor-sized block in its own mapping, returned on free.
// (A process-wide allocator setting, made once; no mutable state.)
[[maybe_unused]] const bool kLargeBlocksMapped = [] {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  return true;
}();
}  // namespace

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  kind_ = device == Device::CPU ? Kind::Heap : Kind::Device;
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

namespace {

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

Storage::Storage(size_t bytes, Device device, const PagedSpec& spec) : bytes_(bytes), device_(device) {
  if (device == Device::CUDA) {
#ifdef PEFTKIT_CUDA
    if (!cuda_available()) fail("E_DEVICE", "device 'cuda' requested but no CUDA device is visible");
    data_ = cuda::malloc_managed(bytes == 0 ? 64 : bytes);
    kind_ = Kind::Managed;
    return;
#else
    fail("E_DEVICE",
         "device 'cuda' requested but this build of peftkit has no CUDA support "
         "(build it with `npm run build:cuda` on a machine with the CUDA toolkit)");
#endif
  }
#ifdef PEFTKIT_HAS_MMAP
  kind_ = Kind::Mapped;
  int fd = -1;
  if (!spec.file.empty()) {
    fd = ::open(spec.file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) fail("E_IO", sys_error("paged tensor: cannot create the file " + spec.file));
    file_ = spec.file;
  } else {
    const std::string dir = spec.dir.empty() ? std::string(".") : spec.dir, tmpl = dir + "/peftkit-paged-XXXXXX";
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    fd = ::mkstemp(name.data());
    if (fd < 0) fail("E_IO", sys_error("paged tensor: cannot create a file in " + dir));
    ::unlink(name.data());  // the mapping keeps it alive; nothing to clean up if the process dies
  }
  mapped_bytes_ = bytes == 0 ? 1 : bytes;
  auto give_up = [&](const std::string& why) {
    const std::string msg = sys_error(why);
    ::close(fd);
    if (!file_.empty()) ::unlink(file_.c_str());
    fail("E_IO", msg);
  };
  if (::ftruncate(fd, off_t(mapped_bytes_)) != 0) give_up("paged tensor: cannot size its file to " + std::to_string(mapped_bytes_) + " bytes");
#ifdef __linux__
  // Reserve the disk blocks now: a sparse file that finds the disk full when a page is written
  // back would kill the process with SIGBUS instead of failing here.
  if (::fallocate(fd, 0, 0, off_t(mapped_bytes_)) != 0 && errno != EOPNOTSUPP)
    give_up("paged tensor: cannot reserve " + std::to_string(mapped_bytes_) + " bytes of disk");
#endif
  void* p = ::mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) give_up("paged tensor: cannot map " + std::to_string(mapped_bytes_) + " bytes");
  ::close(fd);
  ::madvise(p, mapped_bytes_, MADV_SEQUENTIAL);  // optimizer sweeps: read ahead, drop behind
  data_ = p;
#else
  (void)spec;
  fail("E_UNSUPPORTED", "paged tensors on cpu need mmap (Linux or macOS)");
#endif
}

Storage::~Storage() {
  if (!data_) return;
  switch (kind_) {
    case Kind::Heap:
      std::free(data_);
      return;
    case Kind::Mapped:
#ifdef PEFTKIT_HAS_MMAP
      ::munmap(data_, mapped_bytes_);
      if (!file_.empty()) ::unlink(file_.c_str());
#endif
      return;
    case Kind::Device:
#ifdef PEFTKIT_CUDA
      cuda::free_device(data_);
#endif
      return;
    case Kind::Managed:
#ifdef PEFTKIT_CUDA
      cuda::free_managed(data_);
#endif
      return;
  }
}

void Storage::page_in(size_t offset, size_t bytes) const {
  if (bytes == 0) return;
#ifdef PEFTKIT_CUDA
  if (kind_ == Kind::Managed) cuda::prefetch(static_cast<char*>(data_) + offset, bytes, true);
#else
  (void)offset;
#endif
}

void Storage::page_out(size_t offset, size_t bytes) const {
  if (bytes == 0) return;
#ifdef PEFTKIT_HAS_MMAP
  if (kind_ == Kind::Mapped) {
    // Whole pages covering the range. Widening it is harmless: MADV_DONTNEED on a shared file
    // mapping loses nothing, the next touch reads the page back from the page cache or the file.
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (uintptr_t(data_) + offset) & ~(page - 1), hi = uintptr_t(data_) + offset + bytes;
    ::madvise(reinterpret_cast<void*>(lo), size_t(hi - lo), MADV_DONTNEED);
  }
#endif
#ifdef PEFTKIT_CUDA
  if (kind_ == Kind::Managed) cuda::prefetch(static_cast<char*>(data_) + offset, bytes, false);
#endif
}

void page_in(const Tensor& t) {
  if (t.storage && t.storage->paged()) t.storage->page_in(size_t(t.offset) * dtype_size(t.dtype), t.nbytes());
}

void page_out(const Tensor& t) {
  if (t.storage && t.storage->paged()) t.storage->page_out(size_t(t.offset) * dtype_size(t.dtype), t.nbytes());
}

void check_shape(const std::vector<int64_t>& shape, DType dtype, const char* what) {
  // The product of the non-zero dimensions times the element size, with every multiplication
  // checked: a shape whose count wraps (2^62 x 4 -> 0) would get a tiny allocation that every
  // kernel then indexes as a huge one. Zeros are left out so that no partial product a kernel
  // forms from some of the dimensions can overflow either.
  uint64_t bytes = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) fail("E_SHAPE", std::string(what) + ": negative dimension in shape " + shape_str(shape));
    if (d > 0 && (__builtin_mul_overflow(bytes, uint64_t(d), &bytes) || bytes > kMaxTensorBytes))
      fail("E_SHAPE", std::string(what) + ": shape " + shape_str(shape) + " of " + dtype_name(dtype) +
                          " elements would span more than 2^53 - 1 bytes (the element count overflows)");
  }
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  Tensor t;
  check_shape(shape, dtype, "tensor");
  t.shape = shape;
  t.dtype = dtype;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device);
  return t;
}

Tensor Tensor::paged(const std::vector<int64_t>& shape, DType dtype, Device device, const PagedSpec& spec) {
  Tensor t;
  check_shape(shape, dtype, "paged tensor");
  t.shape = shape;
  t.dtype = dtype;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device, spec);
  return t;
}

Tensor Tensor::view(int64_t off, const std::vector<int64_t>& shp) const {
  check_shape(shp, dtype, "view");
  Tensor v = *this;
  v.shape = shp;
  v.offset = offset + off;
  const int64_t n = v.numel();  // below 2^53 (check_shape), as are off (checked here) and numel()
  if (off < 0 || off > numel() || n > numel() - off)
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

void zero_tensor(const Tensor& t) {
  const size_t bytes = t.nbytes();
  if (bytes == 0) return;
  if (t.device == Device::CPU) {
    std::memset(t.raw(), 0, bytes);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::zero_device(t.raw(), bytes);
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
