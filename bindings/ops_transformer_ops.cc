#include "common.h"

namespace pkb {

void InitTransformerOps(Napi::Env env, Napi::Object exports) {}

}  // namespace pkb
