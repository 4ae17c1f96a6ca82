#include "common.h"
#include "peftkit/ops/quant.h"

namespace pkb {

namespace {
pk::Quant4Type GetQuantType(const Napi::CallbackInfo& info, size_t i) {
  const std::string s = GetString(info, i, "quantType");
  if (s == "nf4") return pk::Quant4Type::NF4;
  if (s == "fp4") return pk::Quant4Type::FP4;
  pk::fail("E_ARG", "quantType: expected 'nf4' or 'fp4', got '" + s + "'");
}
}  // namespace

void InitQuant(Napi::Env env, Napi::Object exports) {
  // quantize4bit(packed, absmax, x, blocksize, quantType)
  DefineOp(env, exports, "quantize4bit", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor packed = GetTensor(info, 0, "packed"), absmax = GetTensor(info, 1, "absmax"), x = GetTensor(info, 2, "x");
    const int64_t blocksize = GetInt(info, 3, "blocksize");
    const pk::Quant4Type type = GetQuantType(info, 4);
    return [=]() {
      pk::ops::quantize_4bit(packed, absmax, x, blocksize, type);
      return kNone;
    };
  });
  // dequantize4bit(out, packed, absmax, blocksize, quantType)
  DefineOp(env, exports, "dequantize4bit", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor out = GetTensor(info, 0, "out"), packed = GetTensor(info, 1, "packed"), absmax = GetTensor(info, 2, "absmax");
    const int64_t blocksize = GetInt(info, 3, "blocksize");
    const pk::Quant4Type type = GetQuantType(info, 4);
    return [=]() {
      pk::ops::dequantize_4bit(out, packed, absmax, blocksize, type);
      return kNone;
    };
  });
  // doubleQuant(q, absmax2, absmax, blocksize) -> offset
  DefineOp(env, exports, "doubleQuant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor q = GetTensor(info, 0, "q"), absmax2 = GetTensor(info, 1, "absmax2"), absmax = GetTensor(info, 2, "absmax");
    const int64_t blocksize = GetInt(info, 3, "blocksize");
    return [=]() { return double(pk::ops::double_quant(q, absmax2, absmax, blocksize)); };
  });
  // doubleDequant(absmax, q, absmax2, offset, blocksize)
  DefineOp(env, exports, "doubleDequant", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor absmax = GetTensor(info, 0, "absmax"), q = GetTensor(info, 1, "q"), absmax2 = GetTensor(info, 2, "absmax2");
    const double offset = GetNumber(info, 3, "offset");
    const int64_t blocksize = GetInt(info, 4, "blocksize");
    return [=]() {
      pk::ops::double_dequant(absmax, q, absmax2, float(offset), blocksize);
      return kNone;
    };
  });
  // quantizeInt8Rowwise(cb, scb, w)
  DefineOp(env, exports, "quantizeInt8Rowwise", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor cb = GetTensor(info, 0, "cb"), scb = GetTensor(info, 1, "scb"), w = GetTensor(info, 2, "w");
    return [=]() {
      pk::ops::quantize_int8_rowwise(cb, scb, w);
      return kNone;
    };
  });
  // dequantizeInt8Rowwise(out, cb, scb)
  DefineOp(env, exports, "dequantizeInt8Rowwise", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor out = GetTensor(info, 0, "out"), cb = GetTensor(info, 1, "cb"), scb = GetTensor(info, 2, "scb");
    return [=]() {
      pk::ops::dequantize_int8_rowwise(out, cb, scb);
      return kNone;
    };
  });
}

}  // namespace pkb
