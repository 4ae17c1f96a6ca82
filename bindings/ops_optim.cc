#include "common.h"

namespace pkb {

void InitOptim(Napi::Env env, Napi::Object exports) {}

}  // namespace pkb
