// Indices that address rows of a table (token ids, loss targets): one out of range would read
// or write outside it, so every one is checked before a kernel trusts it.
//
// Where the indices are on the CPU, or the caller gives no fault record, the op checks them on
// the host before its kernel runs (a GPU's indices are copied back for that: a host round trip
// per op). A training step on a GPU gives a fault record instead (an f64 [kIndexFaultDoubles]
// tensor on the device, zeroed by the caller): the kernel records the first bad index there
// and skips it, and the step reads the record back with its loss and gradient norm, in the one
// copy it makes anyway, and raises it with raise_index_fault before the optimizer moves a weight.
#pragma once
#include <cstdint>

#include "../kernels.h"
#include "../tensor.h"

namespace pk::ops {

// The checks of the ops that read indices. Each returns the fault record for the kernel: null
// when it checked every index here (throwing E_ARG for the first bad one), else the record's
// device pointer. fault: empty, or an f64 tensor of kIndexFaultDoubles on the indices' device.
double* check_ids(const char* op, const Tensor& ids, int64_t V, const Tensor& fault);
double* check_targets(const char* op, const Tensor& targets, int64_t V, int32_t ignore_index, const Tensor& fault);

// Throws the E_ARG error a set record stands for (the same words as the host checks, the
// position counted in the flattened indices); returns when the record is clear (record[0] == 0).
void raise_index_fault(const double* record);

}  // namespace pk::ops
