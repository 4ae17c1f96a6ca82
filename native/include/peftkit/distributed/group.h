// A process group: the ranks of a data-parallel run, connected for collectives. Built on Gloo
// (TCP transport) when the addon was compiled with it (PEFTKIT_GLOO, binding.gyp detects
// /usr/include/gloo); without it `connect_gloo` fails with E_UNSUPPORTED and
// `gloo_available()` is false. No Gloo type appears here, so the bindings compile either way.
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
};

class Group {
 public:
  virtual ~Group() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Sums `t` (f32, CPU) over the ranks, in place; every rank gets the same bits.
  virtual void allreduce_sum(const Tensor& t, const char* what) = 0;
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

// The local address that routes to `host` (a UDP socket connected to it, never sent on).
std::string route_addr(const std::string& host);

}  // namespace pk::dist
