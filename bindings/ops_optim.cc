#include <vector>

#include "addon_tensor.h"
#include "common.h"
#include "peftkit/ops/optim.h"

namespace pkb {

namespace {

// A Tensor held in an array element or an object field (GetTensor reads call arguments).
pk::Tensor TensorIn(Napi::Env env, Napi::Value v, const std::string& what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(Data(env).tensor_class.Value()))
    pk::fail("E_ARG", what + ": expected a Tensor");
  TensorWrap* w = Napi::ObjectWrap<TensorWrap>::Unwrap(v.As<Napi::Object>());
  if (w->disposed()) pk::fail("E_DISPOSED", what + ": tensor was disposed");
  return w->tensor();
}

Napi::Array GetArray(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsArray()) pk::fail("E_ARG", std::string(what) + ": expected an array");
  return info[i].As<Napi::Array>();
}

std::vector<pk::Tensor> GetTensorArray(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Array a = GetArray(info, i, what);
  std::vector<pk::Tensor> out;
  for (uint32_t k = 0; k < a.Length(); k++)
    out.push_back(TensorIn(info.Env(), a.Get(k), std::string(what) + "[" + std::to_string(k) + "]"));
  return out;
}

}  // namespace

void InitOptim(Napi::Env env, Napi::Object exports) {
  // adamw([{param, grad, m, v, weightDecay}, ...], lr, beta1, beta2, eps, step)
  DefineOp(env, exports, "adamw", [](const Napi::CallbackInfo& info) -> Work {
    Napi::Array a = GetArray(info, 0, "params");
    std::vector<pk::ops::AdamWSlot> slots;
    for (uint32_t k = 0; k < a.Length(); k++) {
      const std::string what = "params[" + std::to_string(k) + "]";
      Napi::Value e = a.Get(k);
      if (!e.IsObject()) pk::fail("E_ARG", what + ": expected {param, grad, m, v, weightDecay}");
      Napi::Object o = e.As<Napi::Object>();
      pk::ops::AdamWSlot s;
      s.param = TensorIn(info.Env(), o.Get("param"), what + ".param");
      s.grad = TensorIn(info.Env(), o.Get("grad"), what + ".grad");
      s.m = TensorIn(info.Env(), o.Get("m"), what + ".m");
      s.v = TensorIn(info.Env(), o.Get("v"), what + ".v");
      Napi::Value wd = o.Get("weightDecay");
      if (!wd.IsNumber()) pk::fail("E_ARG", what + ".weightDecay: expected a number");
      s.weight_decay = float(wd.As<Napi::Number>().DoubleValue());
      slots.push_back(std::move(s));
    }
    pk::AdamWHyper h{GetNumber(info, 1, "lr"), GetNumber(info, 2, "beta1"), GetNumber(info, 3, "beta2"),
                     GetNumber(info, 4, "eps"), GetInt(info, 5, "step")};
    return [slots = std::move(slots), h]() {
      pk::ops::adamw(slots, h);
      return kNone;
    };
  });
  // gradNorm(grads) -> the L2 norm of all grads together (NaN comes back as undefined: see Work)
  DefineOp(env, exports, "gradNorm", [](const Napi::CallbackInfo& info) -> Work {
    std::vector<pk::Tensor> grads = GetTensorArray(info, 0, "grads");
    return [grads = std::move(grads)]() { return pk::ops::grad_norm(grads); };
  });
  // gradSumsqInto(out, tensors): out[0] = Σ g² (f64, on the tensors' device; nothing read back)
  DefineOp(env, exports, "gradSumsqInto", [](const Napi::CallbackInfo& info) -> Work {
    pk::Tensor out = GetTensor(info, 0, "out");
    std::vector<pk::Tensor> tensors = GetTensorArray(info, 1, "tensors");
    return [out, tensors = std::move(tensors)]() {
      pk::ops::grad_sumsq_into(out, tensors);
      return kNone;
    };
  });
  // clipGradsTo(grads, maxNorm, norm): clipGradNorm's scaling for a norm already known
  DefineOp(env, exports, "clipGradsTo", [](const Napi::CallbackInfo& info) -> Work {
    std::vector<pk::Tensor> grads = GetTensorArray(info, 0, "grads");
    double max_norm = GetNumber(info, 1, "maxNorm"), norm = GetNumber(info, 2, "norm");
    return [grads = std::move(grads), max_norm, norm]() {
      pk::ops::clip_grads_to(grads, max_norm, norm);
      return kNone;
    };
  });
  // clipGradNorm(grads, maxNorm) -> the norm before clipping
  DefineOp(env, exports, "clipGradNorm", [](const Napi::CallbackInfo& info) -> Work {
    std::vector<pk::Tensor> grads = GetTensorArray(info, 0, "grads");
    double max_norm = GetNumber(info, 1, "maxNorm");
    return [grads = std::move(grads), max_norm]() { return pk::ops::clip_grad_norm(grads, max_norm); };
  });
}

}  // namespace pkb
