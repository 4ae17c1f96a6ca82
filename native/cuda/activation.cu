// Activations and their gradients (dx overwritten). The build uses --use_fast_math, where
// tanhf becomes tanh.approx (relative error ~1e-3), so tanh is formed from __expf here:
// 1 - 2/(e^{2u} + 1) is within a few 1e-7 of tanh(u) everywhere, saturating to ±1 cleanly.
#include "common.cuh"
#include "peftkit/kernels.h"

namespace pk::cuda {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoeff = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }
__device__ __forceinline__ float tanh_accurate(float u) { return 1.f - 2.f / (__expf(2.f * u) + 1.f); }

__global__ void silu_fwd(float* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = x[i] * sigmoid(x[i]);
}

// d/dx x·σ(x) = σ(x)·(1 + x·(1 - σ(x))).
__global__ void silu_bwd(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i], sg = sigmoid(v);
    dx[i] = dout[i] * sg * (1.f + v * (1.f - sg));
  }
}

__global__ void gelu_fwd(float* out, const float* x, int64_t n, bool tanh_approx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const float inner = tanh_approx ? tanh_accurate(kSqrt2OverPi * (v + kGeluCoeff * v * v * v)) : erff(v * kInvSqrt2);
    out[i] = 0.5f * v * (1.f + inner);
  }
}

// tanh form: 0.5(1 + t) + 0.5·x·(1 - t²)·√(2/π)(1 + 3c·x²); erf form: Φ(x) + x·φ(x).
__global__ void gelu_bwd(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    float g;
    if (tanh_approx) {
      const float t = tanh_accurate(kSqrt2OverPi * (v + kGeluCoeff * v * v * v));
      g = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kGeluCoeff * v * v);
    } else {
      g = 0.5f * (1.f + erff(v * kInvSqrt2)) + v * kInvSqrt2Pi * __expf(-0.5f * v * v);
    }
    dx[i] = dout[i] * g;
  }
}

// NaN stays NaN, as on the CPU.
__global__ void relu_fwd(float* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    out[i] = v > 0.f || v != v ? v : 0.f;
  }
}

__global__ void relu_bwd(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = x[i] > 0.f ? dout[i] : 0.f;
}

__global__ void tanh_fwd(float* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = float(tanh(double(x[i])));
}

__global__ void tanh_bwd(float* dx, const float* dout, const float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dx[i] = float(double(dout[i]) * (1.0 - double(out[i]) * double(out[i])));
}

__global__ void swiglu_fwd(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
  }
}

// dup = dout·silu(gate); dgate = dout·up·silu'(gate). Both read before either is written, so
// the gradients may alias the inputs.
__global__ void swiglu_bwd(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                           int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i], u = up[i], d = dout[i], sg = sigmoid(g);
    dgate[i] = d * u * sg * (1.f + g * (1.f - sg));
    dup[i] = d * g * sg;
  }
}
}  // namespace

void silu_forward(float* out, const float* x, int64_t n) {
  if (n == 0) return;
  silu_fwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n);
  check_launch("silu_forward");
}

void silu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  if (n == 0) return;
  silu_bwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, x, n);
  check_launch("silu_backward");
}

void gelu_forward(float* out, const float* x, int64_t n, bool tanh_approx) {
  if (n == 0) return;
  gelu_fwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n, tanh_approx);
  check_launch("gelu_forward");
}

void gelu_backward(float* dx, const float* dout, const float* x, int64_t n, bool tanh_approx) {
  if (n == 0) return;
  gelu_bwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, x, n, tanh_approx);
  check_launch("gelu_backward");
}

void relu_forward(float* out, const float* x, int64_t n) {
  if (n == 0) return;
  relu_fwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n);
  check_launch("relu_forward");
}

void tanh_forward(float* out, const float* x, int64_t n) {
  if (n == 0) return;
  tanh_fwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, x, n);
  check_launch("tanh_forward");
}

void tanh_backward(float* dx, const float* dout, const float* out, int64_t n) {
  if (n == 0) return;
  tanh_bwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, out, n);
  check_launch("tanh_backward");
}

void relu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  if (n == 0) return;
  relu_bwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dx, dout, x, n);
  check_launch("relu_backward");
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  if (n == 0) return;
  swiglu_fwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(out, gate, up, n);
  check_launch("swiglu_forward");
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
  if (n == 0) return;
  swiglu_bwd<<<elt_blocks(n), kEltThreads, 0, stream()>>>(dgate, dup, dout, gate, up, n);
  check_launch("swiglu_backward");
}

}  // namespace pk::cuda
