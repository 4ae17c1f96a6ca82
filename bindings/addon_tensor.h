// The JS Tensor handle: owns a reference to engine storage until dispose() or GC.
#pragma once
#include <napi.h>

#include "peftkit/tensor.h"

namespace pkb {

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit TensorWrap(const Napi::CallbackInfo& info);
  ~TensorWrap() override;

  bool disposed() const { return !tensor_.storage; }
  const pk::Tensor& tensor() const { return tensor_; }

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DTypeName(const Napi::CallbackInfo& info);
  Napi::Value DeviceName(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  Napi::Value Paged(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value CopyFrom(const Napi::CallbackInfo& info);
  Napi::Value ReadFile(const Napi::CallbackInfo& info);
  Napi::Value Zero(const Napi::CallbackInfo& info);
  void Release(Napi::Env env);

  pk::Tensor tensor_;
  int64_t accounted_ = 0;  // bytes reported to V8 as external memory
};

}  // namespace pkb
