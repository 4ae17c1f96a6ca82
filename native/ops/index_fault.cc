#include "peftkit/ops/index_fault.h"

#include <string>
#include <vector>

namespace pk::ops {

namespace {

std::string index_str(int64_t flat, const std::vector<int64_t>& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    idx[k] = shape[k] ? flat % shape[k] : 0;
    flat = shape[k] ? flat / shape[k] : 0;
  }
  std::string s = "[";
  for (size_t k = 0; k < idx.size(); k++) s += (k ? ", " : "") + std::to_string(idx[k]);
  return s + "]";
}

[[noreturn]] void fail_id(const char* op, const std::string& position, int64_t id, int64_t V) {
  fail("E_ARG", std::string(op) + " ids: ids" + position + " = " + std::to_string(id) + " is outside [0, " +
                    std::to_string(V) + ") (the table has " + std::to_string(V) + " rows)");
}

[[noreturn]] void fail_target(const char* op, int64_t row, int64_t target, int64_t V, int64_t ignore_index) {
  fail("E_ARG", std::string(op) + " targets: row " + std::to_string(row) + " has target " + std::to_string(target) +
                    ", outside [0, " + std::to_string(V) + ") and not ignore_index (" + std::to_string(ignore_index) +
                    ")");
}

// The indices where the host can read them: in place on the CPU, else a copy in `host`.
const int32_t* host_indices(const Tensor& t, std::vector<int32_t>& host) {
  if (t.device == Device::CPU) return t.data<int32_t>();
  host.resize(size_t(t.numel()));
  copy_to_host(host.data(), t, t.nbytes());
  return host.data();
}

// The record to give the kernel, or null when the host should check (CPU indices, no record).
double* deferred(const char* op, const Tensor& indices, const Tensor& fault) {
  if (!fault.storage || indices.device == Device::CPU) return nullptr;
  const std::string what = std::string(op) + " fault";
  expect_dtype(fault, DType::F64, what.c_str());
  if (fault.numel() != kIndexFaultDoubles)
    fail("E_SHAPE", what + ": expected " + std::to_string(kIndexFaultDoubles) + " elements, got " + fault.describe());
  expect_same_device(indices, fault, (std::string(op) + " indices").c_str(), what.c_str());
  return fault.data<double>();
}

const char* op_name(int op) {
  switch (IndexFaultOp(op)) {
    case IndexFaultOp::EmbeddingForward: return "embedding_forward";
    case IndexFaultOp::EmbeddingBackward: return "embedding_backward";
    case IndexFaultOp::Targets: return "linear_cross_entropy";
  }
  return nullptr;
}

}  // namespace

double* check_ids(const char* op, const Tensor& ids, int64_t V, const Tensor& fault) {
  if (double* record = deferred(op, ids, fault)) return record;
  std::vector<int32_t> host;
  const int32_t* p = host_indices(ids, host);
  for (int64_t i = 0, n = ids.numel(); i < n; i++)
    if (p[i] < 0 || p[i] >= V) fail_id(op, index_str(i, ids.shape), p[i], V);
  return nullptr;
}

double* check_targets(const char* op, const Tensor& targets, int64_t V, int32_t ignore_index, const Tensor& fault) {
  if (double* record = deferred(op, targets, fault)) return record;
  std::vector<int32_t> host;
  const int32_t* t = host_indices(targets, host);
  for (int64_t n = 0, N = targets.numel(); n < N; n++)
    if (t[n] != ignore_index && (t[n] < 0 || t[n] >= V)) fail_target(op, n, t[n], V, ignore_index);
  return nullptr;
}

void raise_index_fault(const double* r) {
  if (r[0] == 0.0) return;
  const char* op = op_name(int(r[1]));
  if (!op) fail("E_ARG", "index fault record: unknown op " + std::to_string(r[1]) + " (not written by a kernel)");
  const int64_t pos = int64_t(r[2]), index = int64_t(r[3]), limit = int64_t(r[4]);
  if (IndexFaultOp(int(r[1])) == IndexFaultOp::Targets) fail_target(op, pos, index, limit, int64_t(r[5]));
  fail_id(op, "[" + std::to_string(pos) + "] (flattened)", index, limit);
}

}  // namespace pk::ops
