#include "peftkit/distributed/group.h"

#ifndef _WIN32
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#include "peftkit/distributed/collective_queue.h"
#include "peftkit/distributed/store_client.h"
#include "peftkit/error.h"

#ifdef PEFTKIT_GLOO
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/tcp/device.h>
#endif

namespace pk::dist {

#ifndef _WIN32
std::string route_addr(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || !res) {
    fail("E_DIST", "MASTER_ADDR '" + host + "' does not resolve to an address");
  }
  std::string out;
  int fd = socket(res->ai_family, SOCK_DGRAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    char buf[INET6_ADDRSTRLEN] = {0};
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      const void* a = ss.ss_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr)
                                               : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&ss)->sin_addr);
      if (inet_ntop(ss.ss_family, a, buf, sizeof buf)) out = buf;
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  if (out.empty()) fail("E_DIST", "no local address routes to MASTER_ADDR '" + host + "': set the rank's address explicitly");
  return out;
}
#endif

#ifdef PEFTKIT_GLOO

bool gloo_available() { return true; }

namespace {

// Gloo's rendezvous, over rank 0's store.
class GlooStore : public gloo::rendezvous::Store {
 public:
  GlooStore(StoreClient& c, std::string prefix, int64_t timeout_ms) : c_(c), prefix_(std::move(prefix)), timeout_ms_(timeout_ms) {}
  void set(const std::string& key, const std::vector<char>& data) override { c_.set(prefix_ + key, data); }
  std::vector<char> get(const std::string& key) override { return c_.get(prefix_ + key, timeout_ms_); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, std::chrono::milliseconds(timeout_ms_)); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const std::string& k : keys) full.push_back(prefix_ + k);
    c_.wait(full, timeout.count());
  }

 private:
  StoreClient& c_;
  std::string prefix_;
  int64_t timeout_ms_;
};

class GlooGroup : public Group, public std::enable_shared_from_this<GlooGroup> {
 public:
  GlooGroup(std::shared_ptr<gloo::Context> ctx, int rank, int size, std::string addr, int64_t timeout_ms)
      : ctx_(std::move(ctx)), rank_(rank), size_(size), addr_(std::move(addr)), timeout_ms_(timeout_ms) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string local_addr() const override { return addr_; }

  void allreduce_sum(const Tensor& t, const char* what) override {
    check_tensor(t, what);
    wait_started();
    sum<float>(t.data<float>(), size_t(t.numel()), tag_++, what);
  }

  // The tag is taken here, on the caller's thread, so it follows the order of the calls.
  void allreduce_sum_start(const Tensor& t, const std::string& what) override {
    check_tensor(t, what.c_str());
    if (broken_) fail("E_DIST", broken_text());
    const uint32_t tag = tag_++;
    queue_.push([self = shared_from_this(), t, tag, what] { self->sum<float>(t.data<float>(), size_t(t.numel()), tag, what.c_str()); });
  }

  void wait_started() override { queue_.wait(); }

  void allreduce_sum_f64(double* data, size_t n, const char* what) override {
    wait_started();
    sum<double>(data, n, tag_++, what);
  }

  void barrier() override {
    wait_started();
    std::lock_guard<std::mutex> lock(mu_);
    gloo::BarrierOptions opts(ctx_);
    opts.setTag(tag_++);
    run("barrier", [&] { gloo::barrier(opts); });
  }

  // Not under mu_: a collective on the group's thread may hold it, blocked on the very peers
  // this frees. Gloo's pairs lock themselves.
  void abort() override {
    {
      std::lock_guard<std::mutex> lock(msg_mu_);
      if (broken_msg_.empty()) broken_msg_ = "this rank left the group on an error";
    }
    broken_ = true;
    for (int i = 0; i < size_; i++) {
      if (i == rank_) continue;
      try {
        auto& pair = ctx_->getPair(i);
        if (pair) pair->close();
      } catch (const std::exception&) {
        // Already closed or broken: nothing left to close.
      }
    }
  }

 private:
  static void check_tensor(const Tensor& t, const char* what) {
    if (!t.storage) fail("E_DISPOSED", std::string(what) + ": tensor is disposed");
    if (t.device != Device::CPU) fail("E_DEVICE", std::string(what) + ": the Gloo all-reduce takes CPU tensors (a CUDA run's group is NCCL's)");
    if (t.dtype != DType::F32) fail("E_DTYPE", std::string(what) + ": the all-reduce sums f32 tensors, got " + dtype_name(t.dtype));
  }

  template <class T>
  void sum(T* data, size_t n, uint32_t tag, const char* what) {
    if (n == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    gloo::AllreduceOptions opts(ctx_);
    opts.setOutput(data, n);
    opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<T>));
    opts.setTag(tag);
    run("all-reduce of " + std::string(what), [&] { gloo::allreduce(opts); });
  }

  std::string broken_text() {
    std::lock_guard<std::mutex> lock(msg_mu_);
    return "rank " + std::to_string(rank_) + ": the process group failed earlier (" + broken_msg_ + "); it cannot be used again";
  }

  // A peer that died closes its sockets (Gloo's IoException at once); one that hangs runs
  // into the context's timeout. Either way this rank stops with E_DIST instead of waiting
  // for ever; the JS side asks the store which rank it was (src/distributed/group.ts).
  template <class F>
  void run(const std::string& what, F f) {
    if (broken_) fail("E_DIST", broken_text());
    try {
      f();
    } catch (const gloo::Exception& e) {
      {
        std::lock_guard<std::mutex> lock(msg_mu_);
        broken_msg_ = e.what();
      }
      broken_ = true;
      fail("E_DIST", "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": " + what + " failed (a peer died, hung longer than " +
                         std::to_string(timeout_ms_) + " ms, or the network broke): " + e.what());
    }
  }

  std::shared_ptr<gloo::Context> ctx_;
  int rank_, size_;
  std::string addr_;
  int64_t timeout_ms_;
  // One collective at a time on the context (the caller's thread or the queue's).
  std::mutex mu_;
  std::atomic<uint32_t> tag_{1};
  std::atomic<bool> broken_{false};
  std::mutex msg_mu_;
  std::string broken_msg_;
  // Last member: destroyed first, so its thread never sees the rest half gone.
  CollectiveQueue queue_;
};

}  // namespace

std::shared_ptr<Group> connect_gloo(const GroupOptions& o) {
  if (o.size < 1) fail("E_ARG", "WORLD_SIZE: expected an integer >= 1, got " + std::to_string(o.size));
  if (o.rank < 0 || o.rank >= o.size) fail("E_ARG", "RANK: expected an integer in [0, " + std::to_string(o.size) + "), got " + std::to_string(o.rank));
  const std::string addr = o.local_addr.empty() ? route_addr(o.master_addr) : o.local_addr;
  StoreClient client(o.master_addr, o.master_port, o.timeout_ms);
  GlooStore store(client, o.prefix, o.timeout_ms);
  gloo::transport::tcp::attr attr;
  attr.hostname = addr;
  std::shared_ptr<gloo::transport::Device> dev;
  try {
    dev = gloo::transport::tcp::CreateDevice(attr);
  } catch (const gloo::Exception& e) {
    fail("E_DIST", "rank " + std::to_string(o.rank) + ": cannot listen on " + addr + " for the other ranks: " + e.what());
  }
  auto ctx = std::make_shared<gloo::rendezvous::Context>(o.rank, o.size);
  ctx->setTimeout(std::chrono::milliseconds(o.timeout_ms));
  try {
    ctx->connectFullMesh(store, dev);
  } catch (const gloo::Exception& e) {
    fail("E_DIST", "rank " + std::to_string(o.rank) + ": connecting to the other ranks failed (rendezvous at " + client.where() + "): " + e.what());
  }
  auto g = std::make_shared<GlooGroup>(ctx, o.rank, o.size, addr, o.timeout_ms);
  g->barrier();
  return g;
}

#else

bool gloo_available() { return false; }

std::shared_ptr<Group> connect_gloo(const GroupOptions&) {
  fail("E_UNSUPPORTED", "distributed training: this addon was built without Gloo (install libgloo-dev, e.g. `apt-get install libgloo-dev`, then rebuild: `npx node-gyp rebuild`)");
}

#endif

#ifndef PEFTKIT_CUDA
bool nccl_compiled() { return false; }

std::shared_ptr<Group> connect_nccl(const GroupOptions&) {
  fail("E_UNSUPPORTED", "data-parallel training on CUDA: this addon was built without CUDA, so it has no NCCL group (build it with CUDA: `npm run build:cuda`)");
}
#endif

}  // namespace pk::dist
