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

// Owns bytes on one device. CPU memory is 64-byte aligned (one cache line, one zmm register).
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in elements: a view starts this far into the storage

  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device);

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

// Copies between host memory and a tensor, whatever its device.
void copy_from_host(const Tensor& dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const Tensor& src, size_t bytes);

// Argument checks shared by every op; `what` names the argument in the message.
void expect_dtype(const Tensor& t, DType dtype, const char* what);
void expect_shape(const Tensor& t, const std::vector<int64_t>& shape, const char* what);
void expect_ndim(const Tensor& t, int ndim, const char* what);
void expect_same_device(const Tensor& a, const Tensor& b, const char* what_a, const char* what_b);
std::string shape_str(const std::vector<int64_t>& shape);

// dst = src for tensors of equal dtype and element count (any devices).
void copy_tensor(const Tensor& dst, const Tensor& src);

bool cuda_available();  // compiled with CUDA and a device is visible

}  // namespace pk
