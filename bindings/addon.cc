// Module entry. Context-aware: every environment (main thread or worker) gets its own
// AddonData, and nothing mutable is shared between them.
#include <napi.h>

#include <string>

#include "common.h"
#include "peftkit/cpu_features.h"
#include "peftkit/parallel.h"
#ifdef PEFTKIT_CUDA
#include "peftkit/cuda_memory.h"
#endif

namespace pkb {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "expected a constructor");
  Data(info.Env()).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value RuntimeInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const pk::CpuFeatures& f = pk::cpu_features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpuIsa", pk::cpu_isa_name());
  o.Set("avx2", f.avx2_fma);
  o.Set("avx512", f.avx512);
  o.Set("avx512bf16", f.avx512_bf16);
  o.Set("amxBf16", f.amx_bf16);
  o.Set("threads", pk::num_threads());
#ifdef PEFTKIT_CUDA
  o.Set("cudaBuild", true);
#else
  o.Set("cudaBuild", false);
#endif
  o.Set("cudaAvailable", pk::cuda_available());
  int device = -1, devices = 0;
#ifdef PEFTKIT_CUDA
  static const int visible = pk::cuda::device_count();  // fixed once CUDA has started; asked per CUDA tensor made
  devices = visible;
  device = pk::cuda::current_device();
#endif
  o.Set("cudaDeviceCount", devices);
  o.Set("cudaDevice", device < 0 ? env.Null() : Napi::Value(Napi::Number::New(env, device)));
  std::string device_name;
#ifdef PEFTKIT_CUDA
  if (device >= 0) {
    try {
      device_name = pk::cuda::describe_device(device);
    } catch (const std::exception&) {
      // a broken device: the next kernel on it raises E_CUDA with the reason
    }
  }
#endif
  o.Set("cudaDeviceName", device_name.empty() ? env.Null() : Napi::Value(Napi::String::New(env, device_name)));
  std::string blas;
#ifdef PEFTKIT_CUDA
  if (pk::cuda_available()) {
    try {
      blas = pk::cuda::blas_library();
    } catch (const std::exception&) {
      // PEFTKIT_CUBLASLT=1 without the library: the first GEMM raises it with the reason.
    }
  }
#endif
  o.Set("cublasLt", blas.empty() ? env.Null() : Napi::Value(Napi::String::New(env, blas)));
  return o;
}

// Host<->device copies so far (zeros without CUDA): tests read them around a training step.
Napi::Value DeviceCopyCounts(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
#ifdef PEFTKIT_CUDA
  const pk::cuda::CopyCounts c = pk::cuda::copy_counts();
#else
  struct {
    uint64_t to_host = 0, to_host_bytes = 0, to_device = 0, to_device_bytes = 0;
  } c;
#endif
  o.Set("toHost", double(c.to_host));
  o.Set("toHostBytes", double(c.to_host_bytes));
  o.Set("toDevice", double(c.to_device));
  o.Set("toDeviceBytes", double(c.to_device_bytes));
  return o;
}

// cudaUseDevice(index): a rank's GPU (cuda_memory.h use_device); E_UNSUPPORTED without CUDA.
Napi::Value CudaUseDevice(const Napi::CallbackInfo& info) {
  return Rethrow(info.Env(), [&]() -> Napi::Value {
    const int64_t index = GetInt(info, 0, "index");
#ifdef PEFTKIT_CUDA
    pk::cuda::use_device(int(index));
#else
    pk::fail("E_UNSUPPORTED", "CUDA device " + std::to_string(index) + ": this build of the peftkit addon has no CUDA (build it with CUDA: `npm run build:cuda`)");
#endif
    return info.Env().Undefined();
  });
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  pk::set_num_threads(int(info[0].As<Napi::Number>().Int32Value()));
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("runtimeInfo", Napi::Function::New(env, RuntimeInfo));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("cudaUseDevice", Napi::Function::New(env, CudaUseDevice));
  exports.Set("deviceCopyCounts", Napi::Function::New(env, DeviceCopyCounts));
  InitTensor(env, exports);
  InitGemm(env, exports);
  InitLinear(env, exports);
  InitTransformerOps(env, exports);
  InitAttention(env, exports);
  InitLoss(env, exports);
  InitOptim(env, exports);
  InitBias(env, exports);
  InitColscale(env, exports);
  InitOptim8(env, exports);
  InitQuant(env, exports);
  InitGemmQuant(env, exports);
  InitLlmInt8(env, exports);
  InitDistributed(env, exports);
  return exports;
}

}  // namespace
}  // namespace pkb

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return pkb::Init(env, exports); }

NODE_API_MODULE(peftkit, InitModule)
