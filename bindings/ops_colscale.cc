#include "common.h"
#include "peftkit/ops/colscale.h"

namespace pkb {

void InitColscale(Napi::Env env, Napi::Object exports) {
  // mulCols(y, x, s)
  DefineOp(env, exports, "mulCols", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor y = GetTensor(info, 0, "y"), x = GetTensor(info, 1, "x"), s = GetTensor(info, 2, "s");
    return [=]() {
      pk::ops::mul_cols(y, x, s);
      return kNone;
    };
  });
  // mulColsBackward(dx | null, ds | null, dy, x, s)
  DefineOp(env, exports, "mulColsBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dx = GetOptionalTensor(info, 0, "dx"), ds = GetOptionalTensor(info, 1, "ds"),
               dy = GetTensor(info, 2, "dy"), x = GetTensor(info, 3, "x"), s = GetTensor(info, 4, "s");
    return [=]() {
      pk::ops::mul_cols_backward(dx, ds, dy, x, s);
      return kNone;
    };
  });
  // rowNorms(out, w)
  DefineOp(env, exports, "rowNorms", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor out = GetTensor(info, 0, "out"), w = GetTensor(info, 1, "w");
    return [=]() {
      pk::ops::row_norms(out, w);
      return kNone;
    };
  });
  // doraScale(g, gMinus1, m, norms)
  DefineOp(env, exports, "doraScale", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor g = GetTensor(info, 0, "g"), gm1 = GetTensor(info, 1, "gMinus1"), m = GetTensor(info, 2, "m"),
               norms = GetTensor(info, 3, "norms");
    return [=]() {
      pk::ops::dora_scale(g, gm1, m, norms);
      return kNone;
    };
  });
  // doraMagnitudeBackward(dm, dg, norms)
  DefineOp(env, exports, "doraMagnitudeBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dm = GetTensor(info, 0, "dm"), dg = GetTensor(info, 1, "dg"), norms = GetTensor(info, 2, "norms");
    return [=]() {
      pk::ops::dora_magnitude_backward(dm, dg, norms);
      return kNone;
    };
  });
}

}  // namespace pkb
