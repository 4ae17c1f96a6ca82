#include <vector>

#include "addon_tensor.h"
#include "common.h"
#include "peftkit/dynamic_maps.h"
#include "peftkit/ops/optim8.h"

namespace pkb {

namespace {

// A Tensor held in an object field (GetTensor reads call arguments); null/undefined gives an
// empty tensor when `optional`.
pk::Tensor TensorField(Napi::Env env, Napi::Object o, const char* key, const std::string& what, bool optional) {
  Napi::Value v = o.Get(key);
  if (optional && (v.IsNull() || v.IsUndefined())) return pk::Tensor{};
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(Data(env).tensor_class.Value()))
    pk::fail("E_ARG", what + "." + key + ": expected a Tensor");
  TensorWrap* w = Napi::ObjectWrap<TensorWrap>::Unwrap(v.As<Napi::Object>());
  if (w->disposed()) pk::fail("E_DISPOSED", what + "." + key + ": tensor was disposed");
  return w->tensor();
}

Napi::Value DynamicMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const float* map = name == "signed" ? pk::kDynamicSigned256 : name == "unsigned" ? pk::kDynamicUnsigned256 : nullptr;
  if (!map) throw MakeError(env, "E_ARG", "dynamicMap: expected 'signed' or 'unsigned', got '" + name + "'");
  Napi::Float32Array out = Napi::Float32Array::New(env, 256);
  for (size_t i = 0; i < 256; i++) out[i] = map[i];
  return out;
}

}  // namespace

void InitOptim8(Napi::Env env, Napi::Object exports) {
  // adamw8bit([{param, grad, m, v, mAbsmax, vAbsmax, weightDecay}, ...], lr, beta1, beta2, eps, step, countSkipped)
  //   -> the number of tensors skipped for a non-finite gradient (NaN, i.e. undefined, when not counted)
  DefineOp(env, exports, "adamw8bit", [](const Napi::CallbackInfo& info) -> Work {
    if (info.Length() < 1 || !info[0].IsArray()) pk::fail("E_ARG", "params: expected an array");
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<pk::ops::AdamW8bitSlot> slots;
    for (uint32_t k = 0; k < a.Length(); k++) {
      const std::string what = "params[" + std::to_string(k) + "]";
      Napi::Value e = a.Get(k);
      if (!e.IsObject()) pk::fail("E_ARG", what + ": expected {param, grad, m, v, mAbsmax, vAbsmax, weightDecay}");
      Napi::Object o = e.As<Napi::Object>();
      pk::ops::AdamW8bitSlot s;
      s.param = TensorField(info.Env(), o, "param", what, false);
      s.grad = TensorField(info.Env(), o, "grad", what, false);
      s.m = TensorField(info.Env(), o, "m", what, false);
      s.v = TensorField(info.Env(), o, "v", what, false);
      s.m_absmax = TensorField(info.Env(), o, "mAbsmax", what, true);
      s.v_absmax = TensorField(info.Env(), o, "vAbsmax", what, true);
      Napi::Value wd = o.Get("weightDecay");
      if (!wd.IsNumber()) pk::fail("E_ARG", what + ".weightDecay: expected a number");
      s.weight_decay = float(wd.As<Napi::Number>().DoubleValue());
      slots.push_back(std::move(s));
    }
    pk::AdamWHyper h{GetNumber(info, 1, "lr"), GetNumber(info, 2, "beta1"), GetNumber(info, 3, "beta2"),
                     GetNumber(info, 4, "eps"), GetInt(info, 5, "step")};
    const bool count = info.Length() <= 6 || info[6].IsUndefined() || info[6].ToBoolean().Value();
    return [slots = std::move(slots), h, count]() {
      const int64_t skipped = pk::ops::adamw8bit(slots, h, count);
      return skipped < 0 ? kNone : double(skipped);
    };
  });
  // dynamicMap('signed' | 'unsigned') -> Float32Array(256): the compiled code tables
  exports.Set("dynamicMap", Napi::Function::New(env, DynamicMap));
}

}  // namespace pkb
