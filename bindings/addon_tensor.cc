#include "addon_tensor.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "common.h"

namespace pkb {

Napi::Function TensorWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {InstanceAccessor<&TensorWrap::Shape>("shape"),
                      InstanceAccessor<&TensorWrap::DTypeName>("dtype"),
                      InstanceAccessor<&TensorWrap::DeviceName>("device"),
                      InstanceAccessor<&TensorWrap::Disposed>("disposed"),
                      InstanceAccessor<&TensorWrap::Paged>("paged"),
                      InstanceMethod<&TensorWrap::Read>("read"),
                      InstanceMethod<&TensorWrap::Write>("write"),
                      InstanceMethod<&TensorWrap::Dispose>("dispose"),
                      InstanceMethod<&TensorWrap::View>("view"),
                      InstanceMethod<&TensorWrap::CopyFrom>("copyFrom"),
                      InstanceMethod<&TensorWrap::ReadFile>("readFile"),
                      InstanceMethod<&TensorWrap::Zero>("zero")});
}

static std::vector<int64_t> ReadShape(const Napi::Value& value) {
  if (!value.IsArray()) pk::fail("E_ARG", "shape: expected an array of integers");
  Napi::Array arr = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber()) pk::fail("E_ARG", "shape: expected an array of integers");
    double d = v.As<Napi::Number>().DoubleValue();
    // Range first: converting a double at or past 2^63 (or NaN) to int64_t is undefined.
    if (!(d >= 0) || d != std::floor(d) || std::isinf(d))
      pk::fail("E_SHAPE", "shape: dimension " + std::to_string(i) + " must be a non-negative integer");
    if (d > 9007199254740991.0)
      pk::fail("E_SHAPE", "shape: dimension " + std::to_string(i) + " is " + std::to_string(d) +
                              ", past 2^53 - 1 (the element count overflows)");
    shape.push_back(int64_t(d));
  }
  return shape;
}

// new NativeTensor(shape: number[], dtype: string, device: string): uninitialized memory.
// new NativeTensor(shape, dtype, device, {file?, dir?}): zeroed paged memory (pk::Storage).
// new NativeTensor(parent: NativeTensor, offset: number, shape: number[]): a view of parent.
TensorWrap::TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
  Napi::Env env = info.Env();
  try {
    if (info.Length() >= 1 && info[0].IsObject() && !info[0].IsArray()) {
      pk::Tensor parent = GetTensor(info, 0, "view parent");
      tensor_ = parent.view(GetInt(info, 1, "offset"), ReadShape(info[2]));
      return;  // a view owns no new memory
    }
    if (info.Length() < 1) pk::fail("E_ARG", "shape: expected an array of integers");
    std::vector<int64_t> shape = ReadShape(info[0]);
    pk::DType dtype = ParseDType(GetString(info, 1, "dtype"));
    pk::Device device = ParseDevice(GetString(info, 2, "device"));
    if (info.Length() >= 4 && info[3].IsObject()) {
      Napi::Object o = info[3].As<Napi::Object>();
      pk::PagedSpec spec;
      for (const auto& [key, field] : {std::pair{"file", &spec.file}, std::pair{"dir", &spec.dir}}) {
        Napi::Value v = o.Get(key);
        if (v.IsString()) *field = v.As<Napi::String>().Utf8Value();
        else if (!v.IsUndefined() && !v.IsNull()) pk::fail("E_ARG", std::string("paged tensor ") + key + ": expected a path");
      }
      tensor_ = pk::Tensor::paged(shape, dtype, device, spec);
    } else {
      tensor_ = pk::Tensor::empty(shape, dtype, device);
    }
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  // Paged memory lives in the page cache or the driver's hands, not the heap V8 should weigh.
  if (tensor_.device == pk::Device::CPU && !tensor_.storage->paged()) {
    accounted_ = int64_t(tensor_.nbytes());
    Napi::MemoryManagement::AdjustExternalMemory(env, accounted_);
  }
}

TensorWrap::~TensorWrap() {
  // The finalizer may run at environment teardown, where V8 must not be called; the storage
  // itself is freed by the shared_ptr either way.
  tensor_.storage.reset();
}

void TensorWrap::Release(Napi::Env env) {
  if (accounted_) Napi::MemoryManagement::AdjustExternalMemory(env, -accounted_);
  accounted_ = 0;
  tensor_.storage.reset();
}

Napi::Value TensorWrap::Shape(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env(), tensor_.shape.size());
  for (size_t i = 0; i < tensor_.shape.size(); i++) a.Set(uint32_t(i), Napi::Number::New(info.Env(), double(tensor_.shape[i])));
  return a;
}

Napi::Value TensorWrap::DTypeName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pk::dtype_name(tensor_.dtype));
}

Napi::Value TensorWrap::DeviceName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pk::device_name(tensor_.device));
}

Napi::Value TensorWrap::Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed()); }

Napi::Value TensorWrap::Paged(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !disposed() && tensor_.storage->paged());
}

// read(): ArrayBuffer holding a copy of the bytes.
Napi::Value TensorWrap::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed()) throw MakeError(env, "E_DISPOSED", "read: tensor was disposed");
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, tensor_.nbytes());
  try {
    pk::copy_to_host(buf.Data(), tensor_, tensor_.nbytes());
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  return buf;
}

// write(view: TypedArray | ArrayBuffer): byte length must equal the tensor's.
Napi::Value TensorWrap::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed()) throw MakeError(env, "E_DISPOSED", "write: tensor was disposed");
  const void* src = nullptr;
  size_t bytes = 0;
  if (info.Length() >= 1 && info[0].IsTypedArray()) {
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    bytes = ta.ByteLength();
  } else if (info.Length() >= 1 && info[0].IsArrayBuffer()) {
    Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
    src = ab.Data();
    bytes = ab.ByteLength();
  } else {
    throw MakeError(env, "E_ARG", "write: expected a TypedArray or ArrayBuffer");
  }
  try {
    pk::copy_from_host(tensor_, src, bytes);
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  return env.Undefined();
}

Napi::Value TensorWrap::Dispose(const Napi::CallbackInfo& info) {
  Release(info.Env());
  return info.Env().Undefined();
}

// view(offset, shape): a new handle on the same memory (constructed in JS via the class).
Napi::Value TensorWrap::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Data(env).tensor_class.New({Value(), info.Length() > 0 ? info[0] : env.Undefined(),
                                     info.Length() > 1 ? info[1] : env.Undefined()});
}

// copyFrom(src): same dtype and element count; any devices.
Napi::Value TensorWrap::CopyFrom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (disposed()) pk::fail("E_DISPOSED", "copyFrom: destination tensor was disposed");
    pk::copy_tensor(tensor_, GetTensor(info, 0, "copyFrom source"));
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  return env.Undefined();
}

// readFile(file, offset, bytes, srcDtype, what): fills the tensor from a byte range of a file.
Napi::Value TensorWrap::ReadFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (disposed()) pk::fail("E_DISPOSED", "readFile: tensor was disposed");
    const std::string file = GetString(info, 0, "file");
    const int64_t offset = GetInt(info, 1, "offset"), bytes = GetInt(info, 2, "bytes");
    if (offset < 0 || bytes < 0) pk::fail("E_ARG", "readFile: offset and bytes must be >= 0");
    pk::read_file_into(tensor_, file, uint64_t(offset), uint64_t(bytes), ParseDType(GetString(info, 3, "srcDtype")),
                       GetString(info, 4, "what"));
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  return env.Undefined();
}

// zero(): every element 0, in place (no host buffer, so no garbage for the JS heap).
Napi::Value TensorWrap::Zero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed()) throw MakeError(env, "E_DISPOSED", "zero: tensor was disposed");
  try {
    pk::zero_tensor(tensor_);
  } catch (const pk::Error& e) {
    throw MakeError(env, e.code, e.what());
  }
  return env.Undefined();
}

void InitTensor(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = TensorWrap::Define(env);
  Data(env).tensor_class = Napi::Persistent(cls);
  exports.Set("NativeTensor", cls);
}

}  // namespace pkb
