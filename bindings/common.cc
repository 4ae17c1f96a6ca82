#include "common.h"

#include <cmath>

#include "addon_tensor.h"
#include "peftkit/async_order.h"

namespace pkb {

AddonData& Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
  AddonData& d = Data(env);
  Napi::Object err;
  if (!d.error_class.IsEmpty()) {
    err = d.error_class.New({Napi::String::New(env, code), Napi::String::New(env, message)});
  } else {
    err = Napi::Error::New(env, message).Value();
    err.Set("code", Napi::String::New(env, code));
  }
  return Napi::Error(env, err);
}


pk::Tensor GetTensor(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Value v = i < info.Length() ? info[i] : info.Env().Undefined();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(Data(info.Env()).tensor_class.Value()))
    pk::fail("E_ARG", std::string(what) + ": expected a Tensor");
  TensorWrap* w = Napi::ObjectWrap<TensorWrap>::Unwrap(v.As<Napi::Object>());
  if (w->disposed()) pk::fail("E_DISPOSED", std::string(what) + ": tensor was disposed");
  return w->tensor();
}

pk::Tensor GetOptionalTensor(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || info[i].IsNull() || info[i].IsUndefined()) return pk::Tensor{};
  return GetTensor(info, i, what);
}

double GetNumber(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsNumber()) pk::fail("E_ARG", std::string(what) + ": expected a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t GetInt(const Napi::CallbackInfo& info, size_t i, const char* what) {
  double d = GetNumber(info, i, what);
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    pk::fail("E_ARG", std::string(what) + ": expected an integer, got " + std::to_string(d));
  return int64_t(d);
}

bool GetBool(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsBoolean()) pk::fail("E_ARG", std::string(what) + ": expected a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

std::string GetString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (i >= info.Length() || !info[i].IsString()) pk::fail("E_ARG", std::string(what) + ": expected a string");
  return info[i].As<Napi::String>().Utf8Value();
}

pk::ops::QuantWeightTensors GetQuantWeight(const Napi::CallbackInfo& info, size_t i) {
  pk::ops::QuantWeightTensors W;
  const std::string f = GetString(info, i, "format");
  if (f == "nf4") W.format = pk::QuantFormat::NF4;
  else if (f == "fp4") W.format = pk::QuantFormat::FP4;
  else if (f == "int8") W.format = pk::QuantFormat::INT8;
  else pk::fail("E_ARG", "format: expected 'nf4', 'fp4' or 'int8', got '" + f + "'");
  W.codes = GetTensor(info, i + 1, "W codes");
  W.scales = GetTensor(info, i + 2, "W scales");
  W.blocksize = GetInt(info, i + 3, "blocksize");
  W.rows = GetInt(info, i + 4, "rows");
  W.cols = GetInt(info, i + 5, "cols");
  return W;
}

pk::DType ParseDType(const std::string& s) {
  if (s == "f32") return pk::DType::F32;
  if (s == "bf16") return pk::DType::BF16;
  if (s == "f16") return pk::DType::F16;
  if (s == "i32") return pk::DType::I32;
  if (s == "i64") return pk::DType::I64;
  if (s == "u8") return pk::DType::U8;
  if (s == "i8") return pk::DType::I8;
  if (s == "f64") return pk::DType::F64;
  pk::fail("E_DTYPE", "unknown dtype '" + s + "' (expected f32, bf16, f16, i32, i64, u8, i8 or f64)");
}

pk::Compute GetCompute(const Napi::CallbackInfo& info, size_t i) {
  const std::string s = GetString(info, i, "compute");
  if (s == "f32") return pk::Compute::F32;
  if (s == "bf16") return pk::Compute::BF16;
  pk::fail("E_ARG", "compute: expected 'f32' or 'bf16', got '" + s + "'");
}

pk::Device ParseDevice(const std::string& s) {
  if (s == "cpu") return pk::Device::CPU;
  if (s == "cuda") return pk::Device::CUDA;
  pk::fail("E_DEVICE", "unknown device '" + s + "' (expected 'cpu' or 'cuda')");
}

namespace {

class OpWorker : public Napi::AsyncWorker {
 public:
  OpWorker(Napi::Env env, Work work)
      : Napi::AsyncWorker(env, "peftkit:op"), work_(std::move(work)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      order_.begin();
      result_ = work_();
      order_.end();
    } catch (const pk::Error& e) {
      code_ = e.code;
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "E_INTERNAL";
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    deferred_.Resolve(std::isnan(result_) ? env.Undefined() : Napi::Number::New(env, result_));
  }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(MakeError(Env(), code_, e.Message()).Value());
  }

 private:
  Work work_;
  pk::AsyncOrder order_;  // made on the JS thread, with the worker
  Napi::Promise::Deferred deferred_;
  double result_ = NAN;
  std::string code_;
};


}  // namespace

Napi::Value Rethrow(Napi::Env env, const std::function<Napi::Value()>& body) {
  try {
    return body();
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw MakeError(env, "E_INTERNAL", e.what());
  }
}

void DefineOp(Napi::Env env, Napi::Object exports, const char* name, Prepare prepare) {
  exports.Set(name, Napi::Function::New(env, [prepare](const Napi::CallbackInfo& info) -> Napi::Value {
                return Rethrow(info.Env(), [&]() -> Napi::Value {
                  double r = prepare(info)();
                  return std::isnan(r) ? info.Env().Undefined() : Napi::Number::New(info.Env(), r);
                });
              }, name));
  std::string async_name = std::string(name) + "Async";
  exports.Set(async_name, Napi::Function::New(env, [prepare](const Napi::CallbackInfo& info) -> Napi::Value {
                // An async op never throws: bad arguments reject its Promise like a failed kernel.
                Napi::Env env = info.Env();
                OpWorker* worker;
                try {
                  worker = new OpWorker(env, prepare(info));
                } catch (const pk::Error& e) {
                  auto d = Napi::Promise::Deferred::New(env);
                  d.Reject(MakeError(env, e.code, e.what()).Value());
                  return d.Promise();
                }
                Napi::Promise p = worker->Promise();
                worker->Queue();
                return p;
              }, async_name));
}

}  // namespace pkb
