#include "common.h"
#include "peftkit/ops/attention.h"

namespace pkb {

void InitAttention(Napi::Env env, Napi::Object exports) {
  // attentionForward(out, lse, q, k, v, scale)
  DefineOp(env, exports, "attentionForward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor out = GetTensor(info, 0, "out"), lse = GetTensor(info, 1, "lse"), q = GetTensor(info, 2, "q"),
               k = GetTensor(info, 3, "k"), v = GetTensor(info, 4, "v");
    float scale = float(GetNumber(info, 5, "scale"));
    return [=]() {
      pk::ops::attention_forward(out, lse, q, k, v, scale);
      return kNone;
    };
  });
  // attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scale)
  DefineOp(env, exports, "attentionBackward", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor dq = GetTensor(info, 0, "dq"), dk = GetTensor(info, 1, "dk"), dv = GetTensor(info, 2, "dv"),
               dout = GetTensor(info, 3, "dout"), q = GetTensor(info, 4, "q"), k = GetTensor(info, 5, "k"),
               v = GetTensor(info, 6, "v"), out = GetTensor(info, 7, "out"), lse = GetTensor(info, 8, "lse");
    float scale = float(GetNumber(info, 9, "scale"));
    return [=]() {
      pk::ops::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale);
      return kNone;
    };
  });
}

}  // namespace pkb
