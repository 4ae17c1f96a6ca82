#include "peftkit/ops/loss.h"

#include <cmath>
#include <string>
#include <vector>

#include "peftkit/kernels.h"
#include "peftkit/ops/index_fault.h"

namespace pk::ops {

namespace {

std::vector<int64_t> leading(const Tensor& t) { return std::vector<int64_t>(t.shape.begin(), t.shape.end() - 1); }

void expect_finite(float x, const char* what) {
  if (!std::isfinite(x)) fail("E_ARG", std::string(what) + ": expected a finite number, got " + std::to_string(x));
}

// targets [...] i32 and losses [...] f32 for rows shaped `rows` (the leading dims of the input).
void expect_rows(const Tensor& losses, const Tensor& targets, const std::vector<int64_t>& rows, const Tensor& ref,
                 const char* op) {
  expect_dtype(targets, DType::I32, (std::string(op) + " targets").c_str());
  expect_shape(targets, rows, (std::string(op) + " targets").c_str());
  expect_dtype(losses, DType::F32, (std::string(op) + " losses").c_str());
  expect_shape(losses, rows, (std::string(op) + " losses").c_str());
  expect_same_device(ref, targets, op, "targets");
  expect_same_device(ref, losses, op, "losses");
}

// linear_cross_entropy's automatic chunk: 2^25 floats (128 MiB) of logits. Taller chunks keep the
// two GEMMs of a chunk efficient (measured at N=1024, V=49152, C=576 on 2 cores: 32 MiB chunks
// 0.94 s, 128 MiB 0.76 s, all rows 0.73 s; again with the current GEMM, f32: 64 MiB 0.84 s,
// 128 MiB 0.79 s; bf16 compute ~0.41 s either way), while memory stays bounded for any N.
constexpr int64_t kChunkFloats = int64_t(1) << 25;

// The host logits chunk of linear_cross_entropy, kept per calling thread and grown as needed,
// up to a cap. A fresh 128 MiB block per call is a fresh mapping (tensor.cc sets glibc's mmap
// threshold to 1 MiB) page-faulted in on every call: ~32k faults, ~40 ms of a SmolLM2-135M
// training step. Per thread, so concurrent callers (workers, the libuv pool) never share one;
// freed when the thread exits. The cap is the automatic chunk, so the default never allocates
// after the first call; a caller asking for a taller chunk gets its own block, as before.
constexpr size_t kKeptLogitsBytes = size_t(kChunkFloats) * sizeof(float);

Tensor host_logits_scratch(int64_t rows, int64_t V) {
  const size_t bytes = size_t(rows) * size_t(V) * sizeof(float);
  if (bytes > kKeptLogitsBytes) return Tensor::empty({rows, V}, DType::F32, Device::CPU);
  thread_local Tensor kept;
  if (!kept.storage || kept.nbytes() < bytes) {
    kept = Tensor();  // the old block goes before the new one comes
    kept = Tensor::empty({rows, V}, DType::F32, Device::CPU);
  }
  return kept;
}

}  // namespace

void cross_entropy(const Tensor& losses, const Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                   int32_t ignore_index, float grad_scale) {
  expect_dtype(logits, DType::F32, "cross_entropy logits");
  if (logits.ndim() < 1 || logits.dim(-1) < 1)
    fail("E_SHAPE", "cross_entropy logits: expected [..., V] with V >= 1, got " + logits.describe());
  expect_rows(losses, targets, leading(logits), logits, "cross_entropy logits");
  const bool grad = dlogits.storage != nullptr;
  if (grad) {
    expect_dtype(dlogits, DType::F32, "cross_entropy dlogits");
    expect_shape(dlogits, logits.shape, "cross_entropy dlogits");
    expect_same_device(logits, dlogits, "cross_entropy logits", "dlogits");
  }
  expect_finite(grad_scale, "cross_entropy gradScale");
  const int64_t V = logits.dim(-1), N = logits.numel() / V;
  check_targets("cross_entropy", targets, V, ignore_index, Tensor{});
  float* d = grad ? dlogits.data<float>() : nullptr;  // may be logits itself: the kernel allows it
  if (logits.device == Device::CPU) {
    cpu::cross_entropy(losses.data<float>(), d, logits.data<float>(), targets.data<int32_t>(), N, V, ignore_index,
                       grad_scale);
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::cross_entropy(losses.data<float>(), d, logits.data<float>(), targets.data<int32_t>(), N, V, ignore_index,
                      grad_scale);
#endif
}

void linear_cross_entropy(const Tensor& losses, const Tensor& dH, const Tensor& dW, const Tensor& H,
                          const Tensor& W, const Tensor& targets, int32_t ignore_index, float grad_scale,
                          int64_t chunk_rows, Compute compute, const Tensor& fault) {
  expect_dtype(H, DType::F32, "linear_cross_entropy H");
  if (H.ndim() < 1) fail("E_SHAPE", "linear_cross_entropy H: expected [..., C], got " + H.describe());
  expect_ndim(W, 2, "linear_cross_entropy W");
  if (W.dtype != DType::F32 && W.dtype != DType::BF16)
    fail("E_DTYPE", "linear_cross_entropy W: expected dtype f32 or bf16, got " + W.describe());
  const int64_t C = H.dim(-1), V = W.dim(0);
  if (V < 1) fail("E_SHAPE", "linear_cross_entropy W: expected [V, C] with V >= 1, got " + W.describe());
  if (W.dim(1) != C)
    fail("E_SHAPE", "linear_cross_entropy W: expected [V, " + std::to_string(C) + "] (C from H " +
                        shape_str(H.shape) + "), got " + W.describe());
  expect_same_device(H, W, "linear_cross_entropy H", "W");
  expect_rows(losses, targets, leading(H), H, "linear_cross_entropy H");
  if (dH.storage) {
    expect_dtype(dH, DType::F32, "linear_cross_entropy dH");
    expect_shape(dH, H.shape, "linear_cross_entropy dH");
    expect_same_device(H, dH, "linear_cross_entropy H", "dH");
    if (dH.raw() == H.raw()) fail("E_ARG", "linear_cross_entropy dH: must not be H (H is read after dH is written)");
  }
  if (dW.storage) {
    expect_dtype(dW, DType::F32, "linear_cross_entropy dW");
    expect_shape(dW, {V, C}, "linear_cross_entropy dW");
    expect_same_device(H, dW, "linear_cross_entropy H", "dW");
    if (dW.raw() == W.raw()) fail("E_ARG", "linear_cross_entropy dW: must not be W");
  }
  expect_finite(grad_scale, "linear_cross_entropy gradScale");
  if (chunk_rows < 0)
    fail("E_ARG", "linear_cross_entropy chunkRows: expected >= 0 (0 = automatic), got " + std::to_string(chunk_rows));
  const int64_t N = targets.numel();  // the rows of H, also when C == 0
  double* record = check_targets("linear_cross_entropy", targets, V, ignore_index, fault);
  if (N == 0) return;
  if (chunk_rows == 0) chunk_rows = kChunkFloats / V > 1 ? kChunkFloats / V : 1;
  if (chunk_rows > N) chunk_rows = N;
  float* dh = dH.storage ? dH.data<float>() : nullptr;
  float* dw = dW.storage ? dW.data<float>() : nullptr;
  if (H.device == Device::CPU) {
    const Tensor scratch = host_logits_scratch(chunk_rows, V);
    cpu::linear_cross_entropy(losses.data<float>(), dh, dw, H.data<float>(), W.raw(), W.dtype,
                              targets.data<int32_t>(), N, C, V, ignore_index, grad_scale, chunk_rows,
                              scratch.data<float>(), compute, record);
    return;
  }
#ifdef PEFTKIT_CUDA
  const Tensor scratch = Tensor::empty({chunk_rows, V}, DType::F32, H.device);
  cuda::linear_cross_entropy(losses.data<float>(), dh, dw, H.data<float>(), W.raw(), W.dtype,
                             targets.data<int32_t>(), N, C, V, ignore_index, grad_scale, chunk_rows,
                             scratch.data<float>(), compute, record);
#endif
}

void sum_into(const Tensor& acc, const Tensor& x) {
  expect_dtype(acc, DType::F64, "sum_into acc");
  if (acc.numel() != 1) fail("E_SHAPE", "sum_into acc: expected one element, got " + acc.describe());
  expect_dtype(x, DType::F32, "sum_into x");
  expect_same_device(acc, x, "sum_into acc", "sum_into x");
  if (x.device == Device::CPU) {
    cpu::sum_into(acc.data<double>(), x.data<float>(), x.numel());
    return;
  }
#ifdef PEFTKIT_CUDA
  cuda::sum_into(acc.data<double>(), x.data<float>(), x.numel());
#endif
}

}  // namespace pk::ops
