// A tensor is a typed, shaped view of one device allocation. Storage is reference counted so
// that an async kernel keeps its inputs alive even if JS disposes them meanwhile; a disposed
// tensor can no longer be passed to an op.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "error.h"

namespace pk {

enum class Device : int { CPU = 0, CUDA = 1 };

inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// Where paged memory (below) keeps its bytes while they are out of fast memory. CPU: `file`
// is created (it must not exist) and deleted with the storage; else an unnamed file in `dir`
// (removed at once, so nothing is left behind even if the process dies). CUDA: unused.
struct PagedSpec {
  std::string file;
  std::string dir;
};

// Owns bytes on one device. CPU memory is 64-byte aligned (one cache line, one zmm register).
//
// Paged storage is memory the system may move out of fast memory under pressure and bring back
// on use, for optimizer states larger than what is free. On CPU it is a MAP_SHARED mapping of a
// file on disk (the kernel writes its pages back to the file and drops them when RAM runs
// short); on CUDA it is managed memory that the driver migrates between GPU and host. The
// tensor's device says where kernels run, paged() how the bytes are held. It starts zeroed.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  Storage(size_t bytes, Device device, const PagedSpec& spec);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool paged() const { return kind_ == Kind::Mapped || kind_ == Kind::Managed; }
  // Hints for paged storage around one use of bytes [offset, offset + bytes); no-ops otherwise.
  // page_in: CUDA prefetches them to the GPU (CPU: nothing, readahead follows the accesses).
  // page_out: CUDA prefetches them back to host memory; CPU drops them from the process
  // (MADV_DONTNEED: the page cache keeps them until the kernel needs the memory).
  void page_in(size_t offset, size_t bytes) const;
  void page_out(size_t offset, size_t bytes) const;

 private:
  enum class Kind { Heap, Device, Mapped, Managed };
  void* data_ = nullptr;
  size_t bytes_ = 0;
  size_t mapped_bytes_ = 0;  // the length of the mapping (at least one page)
  Device device_;
  Kind kind_ = Kind::Heap;
  std::string file_;  // a named mapped file, deleted with the storage
};

// The most bytes one tensor may span: 2^53 - 1, the largest integer a JS number holds exactly
// (8 PiB, beyond any device). So every element count and byte size of a tensor fits int64_t and
// a double, and so does every product of some of its dimensions.
constexpr uint64_t kMaxTensorBytes = (uint64_t(1) << 53) - 1;

// Refuses (E_SHAPE, `what` first in the message) a negative dimension or a shape whose bytes as
// `dtype` exceed kMaxTensorBytes. Every tensor is made through empty / paged / view, which call it.
void check_shape(const std::vector<int64_t>& shape, DType dtype, const char* what);

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements: a view starts this far into the storage

  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device);
  // A zeroed tensor in paged storage (see Storage).
  static Tensor paged(const std::vector<int64_t>& shape, DType dtype, Device device, const PagedSpec& spec);

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[size_t(i < 0 ? int(shape.size()) + i : i)]; }
  int ndim() const { return int(shape.size()); }
  void* raw() const {
    return storage ? static_cast<char*>(storage->data()) + offset * int64_t(dtype_size(dtype)) : nullptr;
  }
  // A view of `shape` starting `offset` elements into this tensor, sharing its storage
  // (a KV-cache slot, one row block of a batch). Bounds are checked.
  Tensor view(int64_t offset, const std::vector<int64_t>& shape) const;
  template <typename T>
  T* data() const { return static_cast<T*>(raw()); }
  std::string describe() const;  // "f32[4, 8] on cpu"
};

// Paged tensors (Storage::paged) around an update: the optimizer calls page_in on each before
// its kernel and page_out after. No-ops for ordinary memory.
void page_in(const Tensor& t);
void page_out(const Tensor& t);

// Copies between host memory and a tensor, whatever its device.
void copy_from_host(const Tensor& dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const Tensor& src, size_t bytes);

// Argument checks shared by every op; `what` names the argument in the message.
void expect_dtype(const Tensor& t, DType dtype, const char* what);
void expect_shape(const Tensor& t, const std::vector<int64_t>& shape, const char* what);
void expect_ndim(const Tensor& t, int ndim, const char* what);
void expect_same_device(const Tensor& a, const Tensor& b, const char* what_a, const char* what_b);
std::string shape_str(const std::vector<int64_t>& shape);

// Sets every byte of t to 0 (0.0 in every float dtype), on its device, without a host copy.
void zero_tensor(const Tensor& t);

// dst = src for tensors of equal dtype and element count (any devices).
void copy_tensor(const Tensor& dst, const Tensor& src);

// Fills dst from `bytes` bytes of `file` starting at byte `offset`, where the file stores dst's
// elements little-endian as `src_dtype` (a checkpoint tensor read straight into engine memory,
// without a copy in the JS heap). F32/BF16/F16 are converted to an f32 or bf16 dst (widening is
// exact; to bf16 rounds to nearest even); any other dtype must equal dst's. `what` names the
// tensor in error messages (E_SHAPE for a byte count that does not fit dst, E_DTYPE for a
// conversion that does not exist, E_IO for a file that cannot be read or ends early).
void read_file_into(const Tensor& dst, const std::string& file, uint64_t offset, uint64_t bytes, DType src_dtype,
                    const std::string& what);

bool cuda_available();  // compiled with CUDA and a device is visible

}  // namespace pk
