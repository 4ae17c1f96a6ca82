#include <array>
#include <utility>

#include "common.h"
#include "peftkit/ops/transformer.h"

namespace pkb {

namespace {

// A 64-bit unsigned integer from a JS number (an integer up to 2^53) or a BigInt.
uint64_t GetUint64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) pk::fail("E_ARG", std::string(what) + ": expected an integer in [0, 2^64)");
    return v;
  }
  int64_t v = GetInt(info, i, what);
  if (v < 0) pk::fail("E_ARG", std::string(what) + ": expected an integer >= 0, got " + std::to_string(v));
  return uint64_t(v);
}

float GetFloat(const Napi::CallbackInfo& info, size_t i, const char* what) { return float(GetNumber(info, i, what)); }

// An op whose arguments are tensors only: fn(tensors...).
template <size_t... I, typename Fn>
void DefineTensorOp(Napi::Env env, Napi::Object exports, const char* name, std::array<const char*, sizeof...(I)> args,
                    Fn fn, std::index_sequence<I...>) {
  DefineOp(env, exports, name, [args, fn](const Napi::CallbackInfo& info) -> Work {
    std::array<pk::Tensor, sizeof...(I)> t{GetTensor(info, I, args[I])...};
    return [t, fn]() {
      fn(t[I]...);
      return kNone;
    };
  });
}

template <size_t N, typename Fn>
void DefineTensorOp(Napi::Env env, Napi::Object exports, const char* name, const char* const (&args)[N], Fn fn) {
  std::array<const char*, N> a;
  for (size_t k = 0; k < N; k++) a[k] = args[k];
  DefineTensorOp(env, exports, name, a, fn, std::make_index_sequence<N>{});
}

}  // namespace

void InitTransformerOps(Napi::Env env, Napi::Object exports) {
  namespace ops = pk::ops;
  using pk::Tensor;

  // embeddingForward(out, ids, table, fault?)
  DefineOp(env, exports, "embeddingForward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor out = GetTensor(info, 0, "out"), ids = GetTensor(info, 1, "ids"), table = GetTensor(info, 2, "table"),
           fault = GetOptionalTensor(info, 3, "fault");
    return [=]() {
      ops::embedding_forward(out, ids, table, fault);
      return kNone;
    };
  });
  // embeddingBackward(dtable, dout, ids, fault?)
  DefineOp(env, exports, "embeddingBackward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor dtable = GetTensor(info, 0, "dtable"), dout = GetTensor(info, 1, "dout"), ids = GetTensor(info, 2, "ids"),
           fault = GetOptionalTensor(info, 3, "fault");
    return [=]() {
      ops::embedding_backward(dtable, dout, ids, fault);
      return kNone;
    };
  });

  // rmsnormForward(out, rstd, x, w, eps)
  DefineOp(env, exports, "rmsnormForward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor out = GetTensor(info, 0, "out"), rstd = GetTensor(info, 1, "rstd"), x = GetTensor(info, 2, "x"),
           w = GetTensor(info, 3, "w");
    float eps = GetFloat(info, 4, "eps");
    return [=]() {
      ops::rmsnorm_forward(out, rstd, x, w, eps);
      return kNone;
    };
  });
  // rmsnormBackward(dx, dw | null, dout, x, w, rstd)
  DefineOp(env, exports, "rmsnormBackward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor dx = GetTensor(info, 0, "dx"), dw = GetOptionalTensor(info, 1, "dw"), dout = GetTensor(info, 2, "dout"),
           x = GetTensor(info, 3, "x"), w = GetTensor(info, 4, "w"), rstd = GetTensor(info, 5, "rstd");
    return [=]() {
      ops::rmsnorm_backward(dx, dw, dout, x, w, rstd);
      return kNone;
    };
  });
  // layernormForward(out, mean, rstd, x, w, b | null, eps)
  DefineOp(env, exports, "layernormForward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor out = GetTensor(info, 0, "out"), mean = GetTensor(info, 1, "mean"), rstd = GetTensor(info, 2, "rstd"),
           x = GetTensor(info, 3, "x"), w = GetTensor(info, 4, "w"), b = GetOptionalTensor(info, 5, "b");
    float eps = GetFloat(info, 6, "eps");
    return [=]() {
      ops::layernorm_forward(out, mean, rstd, x, w, b, eps);
      return kNone;
    };
  });
  // layernormBackward(dx, dw | null, db | null, dout, x, w, mean, rstd)
  DefineOp(env, exports, "layernormBackward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor dx = GetTensor(info, 0, "dx"), dw = GetOptionalTensor(info, 1, "dw"), db = GetOptionalTensor(info, 2, "db"),
           dout = GetTensor(info, 3, "dout"), x = GetTensor(info, 4, "x"), w = GetTensor(info, 5, "w"),
           mean = GetTensor(info, 6, "mean"), rstd = GetTensor(info, 7, "rstd");
    return [=]() {
      ops::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd);
      return kNone;
    };
  });

  // ropeTable(cos, sin, positions, theta, factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings)
  DefineOp(env, exports, "ropeTable", [](const Napi::CallbackInfo& info) -> Work {
    Tensor cos = GetTensor(info, 0, "cos"), sin = GetTensor(info, 1, "sin"), positions = GetTensor(info, 2, "positions");
    float theta = GetFloat(info, 3, "theta");
    pk::RopeScaling s;
    s.factor = GetFloat(info, 4, "scaling.factor");
    s.low_freq_factor = GetFloat(info, 5, "scaling.lowFreqFactor");
    s.high_freq_factor = GetFloat(info, 6, "scaling.highFreqFactor");
    s.original_max_position_embeddings = GetFloat(info, 7, "scaling.originalMaxPositionEmbeddings");
    return [=]() {
      ops::rope_table(cos, sin, positions, theta, s);
      return kNone;
    };
  });
  DefineTensorOp(env, exports, "ropeForward", {"out", "x", "cos", "sin"}, ops::rope_forward);
  DefineTensorOp(env, exports, "ropeBackward", {"dx", "dout", "cos", "sin"}, ops::rope_backward);

  DefineTensorOp(env, exports, "siluForward", {"out", "x"}, ops::silu_forward);
  DefineTensorOp(env, exports, "siluBackward", {"dx", "dout", "x"}, ops::silu_backward);
  // geluForward(out, x, tanhApprox), geluBackward(dx, dout, x, tanhApprox)
  DefineOp(env, exports, "geluForward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor out = GetTensor(info, 0, "out"), x = GetTensor(info, 1, "x");
    bool tanh_approx = GetBool(info, 2, "tanhApprox");
    return [=]() {
      ops::gelu_forward(out, x, tanh_approx);
      return kNone;
    };
  });
  DefineOp(env, exports, "geluBackward", [](const Napi::CallbackInfo& info) -> Work {
    Tensor dx = GetTensor(info, 0, "dx"), dout = GetTensor(info, 1, "dout"), x = GetTensor(info, 2, "x");
    bool tanh_approx = GetBool(info, 3, "tanhApprox");
    return [=]() {
      ops::gelu_backward(dx, dout, x, tanh_approx);
      return kNone;
    };
  });
  DefineTensorOp(env, exports, "reluForward", {"out", "x"}, ops::relu_forward);
  DefineTensorOp(env, exports, "reluBackward", {"dx", "dout", "x"}, ops::relu_backward);
  DefineTensorOp(env, exports, "tanhForward", {"out", "x"}, ops::tanh_forward);
  DefineTensorOp(env, exports, "tanhBackward", {"dx", "dout", "out"}, ops::tanh_backward);
  // copyCols(dst, dstCol, src, srcCol, width)
  DefineOp(env, exports, "copyCols", [](const Napi::CallbackInfo& info) -> Work {
    Tensor dst = GetTensor(info, 0, "dst"), src = GetTensor(info, 2, "src");
    const int64_t dst_col = GetInt(info, 1, "dstCol"), src_col = GetInt(info, 3, "srcCol"), width = GetInt(info, 4, "width");
    return [=]() {
      ops::copy_cols(dst, dst_col, src, src_col, width);
      return kNone;
    };
  });
  DefineTensorOp(env, exports, "swigluForward", {"out", "gate", "up"}, ops::swiglu_forward);
  DefineTensorOp(env, exports, "swigluBackward", {"dgate", "dup", "dout", "gate", "up"}, ops::swiglu_backward);
  DefineTensorOp(env, exports, "add", {"out", "a", "b"}, ops::add);
  DefineTensorOp(env, exports, "keepMasked", {"x", "keep"}, ops::keep_masked);
  // axpy(y, x, a)
  DefineOp(env, exports, "axpy", [](const Napi::CallbackInfo& info) -> Work {
    Tensor y = GetTensor(info, 0, "y"), x = GetTensor(info, 1, "x");
    float a = GetFloat(info, 2, "a");
    return [=]() {
      ops::axpy(y, x, a);
      return kNone;
    };
  });
  DefineTensorOp(env, exports, "cast", {"out", "x"}, ops::cast);

  // dropoutForward(out, x, p, seed, offset), dropoutBackward(dx, dout, p, seed, offset);
  // seed and offset are numbers or BigInts.
  for (bool forward : {true, false}) {
    DefineOp(env, exports, forward ? "dropoutForward" : "dropoutBackward",
             [forward](const Napi::CallbackInfo& info) -> Work {
               Tensor out = GetTensor(info, 0, forward ? "out" : "dx"), in = GetTensor(info, 1, forward ? "x" : "dout");
               float p = GetFloat(info, 2, "p");
               uint64_t seed = GetUint64(info, 3, "seed"), offset = GetUint64(info, 4, "offset");
               return [=]() {
                 if (forward)
                   ops::dropout_forward(out, in, p, seed, offset);
                 else
                   ops::dropout_backward(out, in, p, seed, offset);
                 return kNone;
               };
             });
  }
}

}  // namespace pkb
