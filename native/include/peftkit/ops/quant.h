#pragma once
#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// Blockwise 4-bit (bitsandbytes NF4/FP4): x f32 (any shape, n elements, flattened row-major) ->
// packed u8 with (n+1)/2 elements, absmax f32 with ceil(n/blocksize). blocksize: a power of two
// from 32 to 4096.
void quantize_4bit(const Tensor& packed, const Tensor& absmax, const Tensor& x, int64_t blocksize, Quant4Type type);
// out (f32 or bf16, n elements) = code · absmax of its block.
void dequantize_4bit(const Tensor& out, const Tensor& packed, const Tensor& absmax, int64_t blocksize,
                     Quant4Type type);

// Double quantization of a 4-bit tensor's absmax (f32, nb elements): q u8 [nb] and absmax2 f32
// [ceil(nb/blocksize)] hold absmax - offset in the signed dynamic 8-bit map; returns the offset
// (the f32 mean of absmax). bitsandbytes uses blocksize 256.
float double_quant(const Tensor& q, const Tensor& absmax2, const Tensor& absmax, int64_t blocksize);
// absmax (f32) = code[q]·absmax2 + offset.
void double_dequant(const Tensor& absmax, const Tensor& q, const Tensor& absmax2, float offset, int64_t blocksize);

// LLM.int8 weights: w f32 [rows, cols] -> cb i8 [rows, cols], scb f32 [rows].
void quantize_int8_rowwise(const Tensor& cb, const Tensor& scb, const Tensor& w);
// out (f32 or bf16) [rows, cols] = cb·scb/127.
void dequantize_int8_rowwise(const Tensor& out, const Tensor& cb, const Tensor& scb);

}  // namespace pk::ops
