// A process group: the ranks of a data-parallel run, connected for collectives. For CPU tensors
// it is built on Gloo (TCP transport) when the addon was compiled with it (PEFTKIT_GLOO,
// binding.gyp detects /usr/include/gloo); without it `connect_gloo` fails with E_UNSUPPORTED
// and `gloo_available()` is false. For CUDA tensors it is NCCL (native/cuda/nccl_group.cu),
// loaded at run time, in the CUDA build only. No Gloo or NCCL type appears here, so the
// bindings compile either way.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "peftkit/tensor.h"

namespace pk::dist {

struct GroupOptions {
  int rank = 0;
  int size = 1;
  // The rendezvous store rank 0 serves (MASTER_ADDR, MASTER_PORT).
  std::string master_addr;
  int master_port = 0;
  // Prefixes every store key, so several groups can meet through one store.
  std::string prefix;
  // The address this rank's Gloo device listens on; empty: the local address that routes to
  // master_addr (what the other ranks can reach, on one machine or several).
  std::string local_addr;
  // Rendezvous and every collective: a peer silent for this long is an error, not a hang.
  int64_t timeout_ms = 300000;
  // NCCL's library, opened by the first NCCL group (later ones reuse what it loaded).
  std::string nccl_library = "libnccl.so.2";
};

class Group {
 public:
  virtual ~Group() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Sums `t` (f32, CPU) over the ranks, in place; every rank gets the same bits.
  virtual void allreduce_sum(const Tensor& t, const char* what) = 0;
  // Starts summing `t` in place and returns at once: the sums run in the order they were
  // started, which must be the same on every rank (Gloo: on the group's own thread, since its
  // collectives block; NCCL: enqueued on the caller's op stream). `t` must not be touched until
  // wait_started() returns, which the same thread calls.
  virtual void allreduce_sum_start(const Tensor& t, const std::string& what) = 0;
  // Waits for every sum started; the first one that failed throws here (E_DIST).
  virtual void wait_started() = 0;
  // Sums n doubles of host memory over the ranks, in place (step scalars: loss sums and token
  // counts, exact where f32 would round counts past 2^24).
  virtual void allreduce_sum_f64(double* data, size_t n, const char* what) = 0;
  virtual void barrier() = 0;
  // Closes the connections to every peer now, so their collectives fail at once instead of
  // at their timeout, even while something still holds the group (destroying it closes them
  // too, but only with the last reference). For a rank that stops on an error; the group is
  // unusable afterwards.
  virtual void abort() = 0;
  // The address this rank listens on (for error messages and tests).
  virtual std::string local_addr() const = 0;
};

bool gloo_available();

// Rendezvous through the store, full-mesh TCP connections, then a barrier: once it returns on
// every rank, no rank needs the store any more (rank 0 may block its event loop in training).
std::shared_ptr<Group> connect_gloo(const GroupOptions& o);

// NCCL's group for CUDA tensors: rank 0 makes the unique id and passes it through the store;
// libnccl.so.2 is opened at the first call. E_UNSUPPORTED without a CUDA build or the library.
std::shared_ptr<Group> connect_nccl(const GroupOptions& o);

// Whether this addon was compiled with NCCL support (the CUDA build); the library itself is
// only looked for when a group connects.
bool nccl_compiled();

// The local address that routes to `host` (a UDP socket connected to it, never sent on).
std::string route_addr(const std::string& host);

}  // namespace pk::dist
