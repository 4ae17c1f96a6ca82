// The process group of a CUDA run: NCCL's all-reduce on the tensors' own memory, enqueued on
// the op stream (common.cuh), so it runs in order with the kernels around it and the training
// loop does not wait for it until the step's scalars are summed.
//
// NCCL is opened at run time (dlopen libnccl.so.2, or PEFTKIT_NCCL_LIBRARY), never linked: a CUDA build and its
// prebuilds load where NCCL is not installed, and only a distributed CUDA run asks for it.
// No NCCL header is used either (the CUDA toolkit does not ship one): the few entry points and
// types below are declared from NCCL's public header, NVIDIA/nccl src/nccl.h.in (ncclComm_t an
// opaque pointer, ncclUniqueId 128 bytes passed by value, C enums as int: ncclSuccess 0,
// ncclInProgress 7, ncclFloat32 7, ncclFloat64 8, ncclSum 0), unchanged in ABI since NCCL 2.0
// (ncclCommGetAsyncError since 2.4).
//
// A dead or hung peer: NCCL has no timeout of its own, so every wait polls the communicator
// with ncclCommGetAsyncError against a deadline (GroupOptions::timeout_ms), then aborts it:
// E_DIST instead of a hang. That includes joining: the communicator is made nonblocking
// (ncclCommInitRankConfig with blocking = 0, NCCL 2.14+), so a peer that never arrives fails
// the init at the deadline instead of holding it forever. Older libraries have no
// ncclCommInitRankConfig: the blocking ncclCommInitRank then, which has no timeout.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "common.cuh"
#include "peftkit/distributed/group.h"
#include "peftkit/distributed/store_client.h"

namespace pk::dist {
namespace {

using ncclComm_t = struct ncclComm*;
struct ncclUniqueId {
  char internal[128];
};
using ncclResult_t = int;
constexpr ncclResult_t kNcclSuccess = 0, kNcclInProgress = 7;
constexpr int kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclSum = 0;

// ncclConfig_t as NCCL 2.14.3 introduced it with ncclCommInitRankConfig (src/nccl.h.in at tag
// v2.14.3-1: struct ncclConfig_v21400 {size_t size; unsigned magic; unsigned version; int
// blocking;}). Later headers append fields (cgaClusterSize... in 2.17, up to
// graphStreamOrdering in 2.30.5; NCCL_CONFIG_INITIALIZER sets each to NCCL_CONFIG_UNDEF_INT =
// INT_MIN or NCCL_CONFIG_UNDEF_PTR = NULL). A library reads `size` bytes of it and, for a config
// whose `version` predates a field, takes that field's default (init.cc parseCommConfig since
// 2.17; 2.14-2.16 read `blocking` only), so this first layout works with every library that has
// the call. magic is NCCL_API_MAGIC; version is NCCL_VERSION(2, 14, 0) = 2 * 10000 + 14 * 100.
struct NcclConfig {
  size_t size = sizeof(NcclConfig);
  unsigned int magic = 0xcafebeef;
  unsigned int version = 21400;
  int blocking = 0;
};

struct NcclApi {
  ncclResult_t (*get_unique_id)(ncclUniqueId*);
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int);
  // Null before NCCL 2.14 (the blocking init then, without a timeout).
  ncclResult_t (*comm_init_rank_config)(ncclComm_t*, int, ncclUniqueId, int, NcclConfig*);
  ncclResult_t (*comm_finalize)(ncclComm_t);
  ncclResult_t (*all_reduce)(const void*, void*, size_t, int, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*);
  const char* (*get_error_string)(ncclResult_t);
};

// Opened once, by the first group: later groups reuse it whatever library they name. A failure
// is not remembered: the next group tries again.
const NcclApi& nccl(const std::string& library = "libnccl.so.2") {
  static std::mutex mu;
  static NcclApi api{};
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mu);
  if (loaded) return api;
  void* h = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* why = dlerror();
    fail("E_UNSUPPORTED", "data-parallel training on CUDA needs NCCL: " + library + " could not be loaded (" + (why ? why : "not found") +
                              "); install NCCL 2 (libnccl.so.2: e.g. `apt-get install libnccl2`), add its folder to LD_LIBRARY_PATH, or give its path in PEFTKIT_NCCL_LIBRARY");
  }
  auto sym = [&](const char* name) {
    void* p = dlsym(h, name);
    if (!p) fail("E_UNSUPPORTED", library + " has no " + name + ": NCCL 2.4 or later is needed");
    return p;
  };
  api.get_unique_id = reinterpret_cast<decltype(api.get_unique_id)>(sym("ncclGetUniqueId"));
  api.comm_init_rank = reinterpret_cast<decltype(api.comm_init_rank)>(sym("ncclCommInitRank"));
  // Both came in 2.14: the nonblocking communicator and the finalize it needs before destroy.
  void* init_config = dlsym(h, "ncclCommInitRankConfig");
  void* finalize = dlsym(h, "ncclCommFinalize");
  if (init_config && finalize) {
    api.comm_init_rank_config = reinterpret_cast<decltype(api.comm_init_rank_config)>(init_config);
    api.comm_finalize = reinterpret_cast<decltype(api.comm_finalize)>(finalize);
  }
  api.all_reduce = reinterpret_cast<decltype(api.all_reduce)>(sym("ncclAllReduce"));
  api.comm_destroy = reinterpret_cast<decltype(api.comm_destroy)>(sym("ncclCommDestroy"));
  api.comm_abort = reinterpret_cast<decltype(api.comm_abort)>(sym("ncclCommAbort"));
  api.comm_get_async_error = reinterpret_cast<decltype(api.comm_get_async_error)>(sym("ncclCommGetAsyncError"));
  api.get_error_string = reinterpret_cast<decltype(api.get_error_string)>(sym("ncclGetErrorString"));
  loaded = true;
  return api;
}

std::string nccl_text(ncclResult_t r) {
  const char* s = nccl().get_error_string(r);
  return s ? s : "NCCL error " + std::to_string(r);
}

using Clock = std::chrono::steady_clock;

// A nonblocking communicator's state once the call in flight on it (the init, a collective that
// NCCL's own thread is putting on the stream, a finalize) is done, or ncclInProgress when the
// deadline comes first. The polls back off from 20 us to 1 ms: an enqueue takes microseconds, a
// join as long as the slowest peer.
ncclResult_t settle(ncclComm_t comm, Clock::time_point deadline) {
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    ncclResult_t state = kNcclInProgress;
    const ncclResult_t r = nccl().comm_get_async_error(comm, &state);
    if (r != kNcclSuccess) return r;
    if (state != kNcclInProgress) return state;
    if (Clock::now() >= deadline) return kNcclInProgress;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

class NcclGroup : public Group {
 public:
  NcclGroup(ncclComm_t comm, int rank, int size, int64_t timeout_ms, bool nonblocking)
      : comm_(comm), rank_(rank), size_(size), timeout_ms_(timeout_ms), nonblocking_(nonblocking) {}
  ~NcclGroup() override {
    cuda::bind_device();  // dropped on whichever thread let go of it last
    if (scratch_) cudaFree(scratch_);
    if (!aborted_) {
      if (broken_ || !finalized()) nccl().comm_abort(comm_);
      else nccl().comm_destroy(comm_);
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string local_addr() const override { return ""; }

  void allreduce_sum(const Tensor& t, const char* what) override {
    allreduce_sum_start(t, what);
    wait_started();
  }

  void allreduce_sum_start(const Tensor& t, const std::string& what) override {
    if (!t.storage) fail("E_DISPOSED", what + ": tensor is disposed");
    if (t.device != Device::CUDA) fail("E_DEVICE", what + ": the NCCL all-reduce takes CUDA tensors (a CPU run's group is Gloo's)");
    if (t.dtype != DType::F32) fail("E_DTYPE", what + ": the all-reduce sums f32 tensors, got " + dtype_name(t.dtype));
    if (t.numel() == 0) return;
    enqueue(t.data<float>(), size_t(t.numel()), kNcclFloat32, what);
  }

  // The op stream, polled: a failure or a peer silent past the timeout aborts the communicator.
  void wait_started() override {
    if (pending_.empty()) return;
    const std::string what = pending_;
    pending_.clear();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    for (;;) {
      cudaError_t q = cudaStreamQuery(cuda::stream());
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda::check(q, ("all-reduce of " + what).c_str());
      ncclResult_t async = kNcclSuccess;
      ncclResult_t r = nccl().comm_get_async_error(comm_, &async);
      if (r != kNcclSuccess || (async != kNcclSuccess && async != kNcclInProgress)) {
        break_group();
        fail("E_DIST", "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": all-reduce of " + what +
                           " failed (a peer died or the network broke): " + nccl_text(r != kNcclSuccess ? r : async));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        break_group();
        fail("E_DIST", "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": all-reduce of " + what + " did not finish within " +
                           std::to_string(timeout_ms_) + " ms (a peer died or hung, or the network broke)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  // Host doubles through a small device buffer on the op stream.
  void allreduce_sum_f64(double* data, size_t n, const char* what) override {
    if (n == 0) return;
    cuda::bind_device();  // cudaFree/cudaMalloc below act on the calling thread's current device
    if (n > scratch_n_) {
      if (scratch_) cudaFree(scratch_);
      scratch_ = nullptr;
      cuda::check(cudaMalloc(&scratch_, n * sizeof(double)), "NCCL scratch");
      scratch_n_ = n;
    }
    cuda::check(cudaMemcpyAsync(scratch_, data, n * sizeof(double), cudaMemcpyHostToDevice, cuda::stream()), what);
    enqueue(scratch_, n, kNcclFloat64, what);
    wait_started();
    cuda::check(cudaMemcpyAsync(data, scratch_, n * sizeof(double), cudaMemcpyDeviceToHost, cuda::stream()), what);
    cuda::check(cudaStreamSynchronize(cuda::stream()), what);
  }

  void barrier() override {
    double one = 1;
    allreduce_sum_f64(&one, 1, "barrier");
  }

  void abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) return;
    broken_ = true;
    aborted_ = true;
    nccl().comm_abort(comm_);
  }

 private:
  void enqueue(void* p, size_t n, int dtype, const std::string& what) {
    if (broken_) fail("E_DIST", "rank " + std::to_string(rank_) + ": the process group failed earlier; it cannot be used again");
    ncclResult_t r = nccl().all_reduce(p, p, n, dtype, kNcclSum, comm_, cuda::stream());
    // Nonblocking: NCCL's own thread puts the sum on the stream. Wait for that (not for the sum)
    // so that the kernels launched after it stay after it, and so that the next NCCL call
    // finds the communicator ready, as NCCL requires.
    if (r == kNcclInProgress && nonblocking_) r = settle(comm_, Clock::now() + std::chrono::milliseconds(timeout_ms_));
    if (r == kNcclInProgress) {
      break_group();
      fail("E_DIST", "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": all-reduce of " + what + " could not be enqueued within " +
                         std::to_string(timeout_ms_) + " ms (a peer died or hung, or the network broke)");
    }
    if (r != kNcclSuccess) {
      break_group();
      fail("E_DIST", "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": all-reduce of " + what + " failed: " + nccl_text(r));
    }
    if (pending_.empty()) pending_ = what;
  }

  void break_group() {
    broken_ = true;
    abort();
  }

  // A nonblocking communicator is finalized (its sums flushed, NCCL's threads done) before it
  // is destroyed; false when that fails or takes past the timeout: it is aborted instead.
  bool finalized() {
    if (!nonblocking_) return true;
    ncclResult_t r = nccl().comm_finalize(comm_);
    if (r == kNcclInProgress) r = settle(comm_, Clock::now() + std::chrono::milliseconds(timeout_ms_));
    return r == kNcclSuccess;
  }

  ncclComm_t comm_;
  int rank_, size_;
  int64_t timeout_ms_;
  bool nonblocking_;
  std::mutex mu_;
  bool broken_ = false, aborted_ = false;
  // The first collective enqueued since the last wait (named in its error), empty: none.
  std::string pending_;
  void* scratch_ = nullptr;
  size_t scratch_n_ = 0;
};

}  // namespace

bool nccl_compiled() { return true; }

std::shared_ptr<Group> connect_nccl(const GroupOptions& o) {
  if (o.size < 1) fail("E_ARG", "WORLD_SIZE: expected an integer >= 1, got " + std::to_string(o.size));
  if (o.rank < 0 || o.rank >= o.size) fail("E_ARG", "RANK: expected an integer in [0, " + std::to_string(o.size) + "), got " + std::to_string(o.rank));
  const NcclApi& api = nccl(o.nccl_library);
  StoreClient client(o.master_addr, o.master_port, o.timeout_ms);
  const std::string key = o.prefix + "nccl_unique_id";
  ncclUniqueId id{};
  if (o.rank == 0) {
    ncclResult_t r = api.get_unique_id(&id);
    if (r != kNcclSuccess) fail("E_DIST", "rank 0: ncclGetUniqueId failed: " + nccl_text(r));
    client.set(key, std::vector<char>(id.internal, id.internal + sizeof id.internal));
  } else {
    std::vector<char> v = client.get(key, o.timeout_ms);
    if (v.size() != sizeof id.internal) fail("E_DIST", "rank " + std::to_string(o.rank) + ": NCCL's unique id from the store at " + client.where() + " has " + std::to_string(v.size()) + " bytes, expected 128");
    std::memcpy(id.internal, v.data(), sizeof id.internal);
  }
  // NCCL takes the device current on the calling thread (a pool thread here): the rank's own
  // (cuda_memory.h use_device; one GPU per rank, as NCCL requires).
  cuda::bind_device();
  const std::string who = "rank " + std::to_string(o.rank) + ": joining NCCL's group of " + std::to_string(o.size);
  ncclComm_t comm = nullptr;
  const bool nonblocking = api.comm_init_rank_config != nullptr;
  ncclResult_t r;
  if (nonblocking) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(o.timeout_ms);
    NcclConfig config;
    r = api.comm_init_rank_config(&comm, o.size, id, o.rank, &config);
    if (r == kNcclInProgress) r = settle(comm, deadline);
    if (r == kNcclInProgress) {
      api.comm_abort(comm);
      fail("E_DIST", who + " did not complete within " + std::to_string(o.timeout_ms) + " ms (PEFTKIT_DIST_TIMEOUT_MS): a rank never joined, or the network between ranks is blocked");
    }
    if (r != kNcclSuccess && comm) api.comm_abort(comm);
  } else {
    r = api.comm_init_rank(&comm, o.size, id, o.rank);  // NCCL < 2.14: no timeout here
  }
  if (r != kNcclSuccess) fail("E_DIST", who + " failed: " + nccl_text(r));
  auto g = std::make_shared<NcclGroup>(comm, o.rank, o.size, o.timeout_ms, nonblocking);
  g->barrier();
  return g;
}

}  // namespace pk::dist
