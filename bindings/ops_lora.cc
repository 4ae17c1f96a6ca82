#include "common.h"

namespace pkb {

void InitLora(Napi::Env env, Napi::Object exports) {}

}  // namespace pkb
