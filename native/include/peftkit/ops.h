// Tensor-level ops: check arguments (dtype, shape, device, aliasing rules) with messages that
// name the argument, then run the kernel of the tensors' device from the op table.
// One header per op family under ops/.
#pragma once
#include "ops/attention.h"
#include "ops/bias.h"
#include "ops/colscale.h"
#include "ops/gemm.h"
#include "ops/gemm_quant.h"
#include "ops/linear.h"
#include "ops/llm_int8.h"
#include "ops/loss.h"
#include "ops/optim.h"
#include "ops/transformer.h"
