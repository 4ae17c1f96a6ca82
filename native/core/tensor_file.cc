// Checkpoint tensors read from disk straight into engine memory (see read_file_into in
// tensor.h). Same dtype on the CPU: pread into the tensor itself. A conversion, or a CUDA
// tensor: through a bounded host staging buffer, so no full-size copy ever exists.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "peftkit/parallel.h"
#include "peftkit/tensor.h"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define PEFTKIT_HAS_PREAD 1
#endif

#ifdef PEFTKIT_CUDA
#include "peftkit/cuda_memory.h"
#endif

namespace pk {

namespace {

bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// Elements a staging chunk holds: 4 MiB of f32, so a conversion never stages more than ~12 MiB.
constexpr int64_t kChunkElems = int64_t(1) << 20;

// out[i] (dst dtype) = in[i] (src dtype) for n elements; src and dst are F32/BF16/F16 (dst F32/BF16).
void convert(void* out, DType dst, const void* in, DType src, int64_t n) {
  const auto widen = [&](int64_t i) -> float {
    switch (src) {
      case DType::F32: {
        float f;
        std::memcpy(&f, static_cast<const char*>(in) + i * 4, 4);
        return f;
      }
      case DType::BF16: return bf16_to_f32(static_cast<const bf16*>(in)[i]);
      default: return f16_to_f32(static_cast<const uint16_t*>(in)[i]);
    }
  };
#pragma omp parallel for num_threads(n >= (int64_t(1) << 16) ? num_threads() : 1) schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float f = widen(i);
    if (dst == DType::F32) static_cast<float*>(out)[i] = f;
    else static_cast<bf16*>(out)[i] = f32_to_bf16(f);
  }
}

#ifdef PEFTKIT_HAS_PREAD
struct File {
  int fd = -1;
  ~File() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `bytes` bytes at `offset` into dst, or fails naming the file and the tensor.
void read_exact(int fd, void* dst, uint64_t offset, uint64_t bytes, const std::string& file, const std::string& what) {
  uint64_t done = 0;
  while (done < bytes) {
    const size_t want = size_t(std::min<uint64_t>(bytes - done, uint64_t(1) << 30));
    const ssize_t r = ::pread(fd, static_cast<char*>(dst) + done, want, off_t(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail("E_IO", file + ": " + what + ": cannot read (" + std::strerror(errno) + ")");
    if (r == 0) {
      // The real end (the offset may lie past it), for a message that says where the data stops.
      struct stat st;
      const uint64_t end = ::fstat(fd, &st) == 0 ? uint64_t(st.st_size) : offset + done;
      fail("E_IO", file + ": " + what + ": the file ends at byte " + std::to_string(end) + ", inside the " +
                       std::to_string(bytes) + " bytes of data at offset " + std::to_string(offset) +
                       " (truncated file?)");
    }
    done += uint64_t(r);
  }
}
#endif

}  // namespace

void read_file_into(const Tensor& dst, const std::string& file, uint64_t offset, uint64_t bytes, DType src_dtype,
                    const std::string& what) {
  const bool same = src_dtype == dst.dtype;
  if (!same && !(is_float(src_dtype) && (dst.dtype == DType::F32 || dst.dtype == DType::BF16)))
    fail("E_DTYPE", file + ": " + what + ": cannot read " + dtype_name(src_dtype) + " data into " + dst.describe() +
                        " (floating-point data converts to f32 or bf16; other dtypes must match)");
  const int64_t n = dst.numel();
  if (bytes != uint64_t(n) * dtype_size(src_dtype))
    fail("E_SHAPE", file + ": " + what + ": " + std::to_string(bytes) + " bytes of " + dtype_name(src_dtype) +
                        " data do not fill " + dst.describe() + " (" + std::to_string(uint64_t(n) * dtype_size(src_dtype)) +
                        " bytes needed)");
#ifdef PEFTKIT_HAS_PREAD
  File f;
  // Non-blocking: opening a named pipe would otherwise wait for a writer (no effect on a
  // regular file, the only kind read here).
  f.fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) fail("E_IO", file + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (::fstat(f.fd, &st) != 0) fail("E_IO", file + ": cannot stat (" + std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode))
    fail("E_IO", file + ": is " + (S_ISFIFO(st.st_mode) ? "a named pipe (FIFO)" : S_ISDIR(st.st_mode) ? "a directory" : "not a plain file") +
                     ", not a regular file; peftkit reads only regular files (a pipe or device could block or never end)");
  if (n == 0) return;
  if (same && dst.device == Device::CPU) {
    read_exact(f.fd, dst.raw(), offset, bytes, file, what);
    return;
  }
  const size_t src_size = dtype_size(src_dtype), dst_size = dtype_size(dst.dtype);
  const int64_t chunk = std::min(n, kChunkElems);
  std::vector<char> raw(size_t(chunk) * src_size);
  std::vector<char> converted(same || dst.device == Device::CPU ? 0 : size_t(chunk) * dst_size);
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t m = std::min(chunk, n - i0);
    read_exact(f.fd, raw.data(), offset + uint64_t(i0) * src_size, uint64_t(m) * src_size, file, what);
    char* out = static_cast<char*>(dst.raw()) + i0 * int64_t(dst_size);
    if (dst.device == Device::CPU) {
      convert(out, dst.dtype, raw.data(), src_dtype, m);
      continue;
    }
#ifdef PEFTKIT_CUDA
    const char* host = raw.data();
    if (!same) {
      convert(converted.data(), dst.dtype, raw.data(), src_dtype, m);
      host = converted.data();
    }
    cuda::copy_h2d(out, host, size_t(m) * dst_size);
#endif
  }
#else
  (void)offset;
  fail("E_UNSUPPORTED", file + ": " + what + ": reading files natively needs pread (Linux or macOS)");
#endif
}

}  // namespace pk
