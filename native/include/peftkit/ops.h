// Tensor-level ops: check arguments (dtype, shape, device, aliasing rules) with messages that
// name the argument, then run the kernel of the tensors' device from the op table.
// One header per op family under ops/.
#pragma once
#include "ops/gemm.h"
