#include "common.h"

namespace pkb {

void InitLoss(Napi::Env env, Napi::Object exports) {}

}  // namespace pkb
