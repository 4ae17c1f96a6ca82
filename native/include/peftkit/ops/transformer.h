#pragma once
#include "../tensor.h"

namespace pk::ops {}  // namespace pk::ops
