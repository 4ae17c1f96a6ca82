// The process group's bindings: a group is a handle (an External holding the native group),
// filled in by distConnect, which must run as distConnectAsync on the rank that serves the
// store (rank 0's event loop answers the rendezvous while the pool thread waits in it).
#include <memory>

#include "common.h"
#include "peftkit/distributed/group.h"

namespace pkb {
namespace {

struct Slot {
  std::shared_ptr<pk::dist::Group> group;
};

std::shared_ptr<Slot> GetSlot(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsExternal()) pk::fail("E_ARG", "group: expected a process group handle");
  return *info[i].As<Napi::External<std::shared_ptr<Slot>>>().Data();
}

std::shared_ptr<pk::dist::Group> GetGroup(const Napi::CallbackInfo& info, size_t i) {
  std::shared_ptr<Slot> s = GetSlot(info, i);
  if (!s->group) pk::fail("E_DIST", "the process group is not connected (or was closed)");
  return s->group;
}

}  // namespace

void InitDistributed(Napi::Env env, Napi::Object exports) {
  exports.Set("distInfo", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("gloo", pk::dist::gloo_available());
    o.Set("nccl", pk::dist::nccl_compiled());
    return o;
  }));
  exports.Set("distNewGroup", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Napi::External<std::shared_ptr<Slot>>::New(info.Env(), new std::shared_ptr<Slot>(std::make_shared<Slot>()),
                                                      [](Napi::Env, std::shared_ptr<Slot>* p) { delete p; });
  }));
  // distConnect(group, backend ('gloo' | 'nccl'), rank, size, masterAddr, masterPort, prefix, localAddr, timeoutMs, ncclLibrary)
  DefineOp(env, exports, "distConnect", [](const Napi::CallbackInfo& info) -> Work {
    std::shared_ptr<Slot> slot = GetSlot(info, 0);
    const std::string backend = GetString(info, 1, "backend");
    if (backend != "gloo" && backend != "nccl") pk::fail("E_ARG", "backend: expected 'gloo' or 'nccl', got '" + backend + "'");
    pk::dist::GroupOptions o;
    o.rank = int(GetInt(info, 2, "rank"));
    o.size = int(GetInt(info, 3, "size"));
    o.master_addr = GetString(info, 4, "masterAddr");
    o.master_port = int(GetInt(info, 5, "masterPort"));
    o.prefix = GetString(info, 6, "prefix");
    o.local_addr = GetString(info, 7, "localAddr");
    o.timeout_ms = GetInt(info, 8, "timeoutMs");
    o.nccl_library = GetString(info, 9, "ncclLibrary");
    return [slot, o, backend]() {
      slot->group = backend == "nccl" ? pk::dist::connect_nccl(o) : pk::dist::connect_gloo(o);
      return kNone;
    };
  });
  // distAllReduceSumStart(group, tensor, what) / distWaitStarted(group): the overlapped sums
  // (Group::allreduce_sum_start), called from the training loop's own thread.
  exports.Set("distAllReduceSumStart", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      GetGroup(info, 0)->allreduce_sum_start(GetTensor(info, 1, "tensor"), GetString(info, 2, "what"));
      return info.Env().Undefined();
    });
  }));
  exports.Set("distWaitStarted", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      GetGroup(info, 0)->wait_started();
      return info.Env().Undefined();
    });
  }));
  // distAllReduceSum(group, tensor, what)
  DefineOp(env, exports, "distAllReduceSum", [](const Napi::CallbackInfo& info) -> Work {
    std::shared_ptr<pk::dist::Group> g = GetGroup(info, 0);
    pk::Tensor t = GetTensor(info, 1, "tensor");
    std::string what = GetString(info, 2, "what");
    return [g, t, what]() {
      g->allreduce_sum(t, what.c_str());
      return kNone;
    };
  });
  // distAllReduceSumF64(group, Float64Array, what): host memory, synchronous only (the array's
  // memory belongs to the JS heap, which the pool thread must not touch).
  exports.Set("distAllReduceSumF64", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<pk::dist::Group> g = GetGroup(info, 0);
      if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
        pk::fail("E_ARG", "values: expected a Float64Array");
      }
      Napi::Float64Array a = info[1].As<Napi::Float64Array>();
      g->allreduce_sum_f64(a.Data(), a.ElementLength(), GetString(info, 2, "what").c_str());
      return info.Env().Undefined();
    });
  }));
  DefineOp(env, exports, "distBarrier", [](const Napi::CallbackInfo& info) -> Work {
    std::shared_ptr<pk::dist::Group> g = GetGroup(info, 0);
    return [g]() {
      g->barrier();
      return kNone;
    };
  });
  exports.Set("distLocalAddr", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), GetGroup(info, 0)->local_addr()); });
  }));
  exports.Set("distAbort", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<Slot> s = GetSlot(info, 0);
      if (s->group) s->group->abort();
      return info.Env().Undefined();
    });
  }));
  // Drops this handle's reference; the connections close when no running op holds the group.
  exports.Set("distClose", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Rethrow(info.Env(), [&]() -> Napi::Value {
      GetSlot(info, 0)->group.reset();
      return info.Env().Undefined();
    });
  }));
}

}  // namespace pkb
