// The op table: every kernel the engine has, one signature per op, declared once in
// kernels.inc and implemented per device (pk::cpu in native/cpu, pk::cuda in native/cuda).
// Kernels take raw pointers on their device and sizes; they never allocate tensors nor
// validate user input (native/ops/ does that), and they never touch Node.
//
// Conventions (as llm.c): outputs first, then inputs, then sizes. Activations are row-major
// [rows, features]; a sequence batch is [B, T, H, D] flattened. Parameter gradients are
// ACCUMULATED (+=) so micro-batches add up; activation gradients are OVERWRITTEN.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace pk {

// A matrix operand of a GEMM: element (i, j) of op(M) is data[i*ld + j] when !trans and
// data[j*ld + i] when trans. dtype is F32 or BF16 (bf16 storage, f32 accumulation).
// round_bf16 (F32 only): the GEMM reads each element as its bf16 rounding (to nearest even,
// torch's .to(torch.bfloat16)), done while the operand is packed, never as a separate pass.
// With both operands bf16 (stored or rounded) the product is bf16 compute: exact products of
// bf16 values summed in f32, on VDPBF16PS where the CPU has it.
struct MatRef {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t ld = 0;
  bool trans = false;
  bool round_bf16 = false;
};

// The precision the big products of a fused op run in (PyTorch autocast's sense): F32, or BF16 =
// operands rounded to bf16, products accumulated in f32, results f32. Only where a kernel says so.
enum class Compute : int { F32 = 0, BF16 = 1 };

// m as an operand of a product run in `compute`: an f32 operand of a BF16 product is marked
// round_bf16 (a bf16 one already is bf16); F32 leaves it as it is.
inline MatRef with_compute(MatRef m, Compute compute) {
  m.round_bf16 = compute == Compute::BF16 && m.dtype == DType::F32;
  return m;
}

// One trainable tensor for the multi-tensor optimizer and norm kernels.
struct ParamRef {
  float* param;
  const float* grad;
  float* m;  // AdamW first moment
  float* v;  // AdamW second moment
  int64_t n;
  float weight_decay;  // per tensor: PEFT/HF exclude biases and norms by choice of the caller
};

// One trainable tensor for the 8-bit optimizer (bitsandbytes' blockwise 8-bit AdamW). Its
// moments are either 8-bit codes, quantized per block of kAdamW8bitBlock elements with one f32
// absmax per block (m with kDynamicSigned256, v with kDynamicUnsigned256: dynamic_maps.h), or,
// when m_code is null, plain f32 moments (small tensors keep f32 states, as bitsandbytes does).
struct AdamW8bitRef {
  float* param;
  const float* grad;
  int64_t n;
  float weight_decay;
  uint8_t* m_code;  // [n] codes, or null for f32 states
  uint8_t* v_code;
  float* m_absmax;  // [ceil(n / kAdamW8bitBlock)]
  float* v_absmax;
  float* m;  // [n] f32 states when m_code is null
  float* v;
};
constexpr int64_t kAdamW8bitBlock = 256;

// The first out-of-range index a kernel met, recorded where the indices live instead of checked
// on the host: on a GPU that check would copy every batch's ids and targets back, a host round
// trip per op. kIndexFaultDoubles doubles, zero until set: [0] 1 once set, [1] the op
// (IndexFaultOp), [2] the position in the flattened ids, [3] the index found, [4] the limit (V),
// [5] the ignore_index of targets. Doubles, so the record shares one f64 tensor with a step's
// other scalars and comes back in the same copy. Kernels given none (null) read indices the op
// layer has already checked.
constexpr int kIndexFaultDoubles = 6;
enum class IndexFaultOp : int { EmbeddingForward = 1, EmbeddingBackward = 2, Targets = 3 };

// Double, as the Python floats torch.optim.AdamW forms its step scalars from: in f32,
// 1 - beta2 alone would be 1.3e-5 off for beta2 = 0.999.
struct AdamWHyper {
  double lr, beta1, beta2, eps;
  int64_t step;  // 1-based step after this update (bias correction uses it)
};

// llama3 rope scaling (rope_type "llama3"); factor 0 means none.
struct RopeScaling {
  float factor = 0.f, low_freq_factor = 1.f, high_freq_factor = 4.f;
  float original_max_position_embeddings = 8192.f;
};

// The two 4-bit code books of bitsandbytes (QLoRA): NormalFloat4 and its FP4 (1 sign bit,
// 3 magnitude bits). The tables are in quant_codes.h.
enum class Quant4Type : int { NF4 = 0, FP4 = 1 };

// A frozen Linear weight W[rows, cols] (out_features × in_features, row-major as a checkpoint
// stores it) kept quantized, as the B operand of gemm_quant.
//   NF4, FP4: codes = packed u8 [(rows·cols + 1)/2] (first element in the high nibble), scales =
//             f32 absmax [ceil(rows·cols / blocksize)] of blocks over the row-major flattening
//             (already recovered from double quantization); W = code·absmax.
//   INT8:     codes = i8 CB [rows, cols], scales = f32 SCB [rows]; W = f32(f32(CB·SCB)·f32(1/127)).
// round_bf16: each dequantized value is read as its bf16 rounding (bf16 compute, QLoRA's
// compute_dtype=bfloat16: bitsandbytes dequantizes to bf16 the same way), as MatRef.round_bf16.
enum class QuantFormat : int { NF4 = 0, FP4 = 1, INT8 = 2 };
struct QuantWeight {
  QuantFormat format = QuantFormat::NF4;
  const void* codes = nullptr;
  const float* scales = nullptr;
  int64_t blocksize = 64;  // 4-bit only: a power of two
  int64_t rows = 0, cols = 0;
  bool round_bf16 = false;
};

// Working memory of llm_int8_forward, on its device, given by the caller (ops/llm_int8.h sizes it).
// Products of two int8 codes are integers of magnitude <= 127² = 16129, so ANY partial sum of at
// most kLlmInt8ExactK = 1024 of them is an integer below 16129·1024 = 16,516,096 < 2^24 and exact
// in f32, whatever the order of summation or FMA use: the CPU runs the integer product through the
// f32 GEMM in K-chunks of 1024 and adds the chunks as int32 (acc). acc is needed only when
// K > kLlmInt8ExactK; it may be null otherwise.
constexpr int64_t kLlmInt8ExactK = 1024;
struct LlmInt8Scratch {
  int8_t* ca = nullptr;       // [M, K] activation codes
  float* sca = nullptr;       // [M] activation row scales
  uint8_t* outlier = nullptr;  // [K] outlier-column flags
  int32_t* cols = nullptr;    // [K] outlier column indices, ascending
  int32_t* acc = nullptr;     // [M, N] int32 sums of the earlier K-chunks
};

namespace cpu {
#include "kernels.inc"
}
#ifdef PEFTKIT_CUDA
namespace cuda {
#include "kernels.inc"
}
#endif

}  // namespace pk
