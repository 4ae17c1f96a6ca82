#include "common.h"

namespace pkb {

void InitAttention(Napi::Env env, Napi::Object exports) {}

}  // namespace pkb
