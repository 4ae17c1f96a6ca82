// Errors the engine reports to its callers. Every failure a user can cause (bad shapes,
// wrong dtype, freed tensor, missing device) is a pk::Error with a stable code; the bindings
// turn it into a JS PeftkitError carrying the same code.
#pragma once
#include <stdexcept>
#include <string>

namespace pk {

struct Error : std::runtime_error {
  std::string code;  // e.g. "E_SHAPE", "E_DTYPE", "E_DEVICE", "E_DISPOSED", "E_ARG", "E_CUDA"
  Error(std::string code_, const std::string& msg) : std::runtime_error(msg), code(std::move(code_)) {}
};

[[noreturn]] inline void fail(const char* code, const std::string& msg) { throw Error(code, msg); }

}  // namespace pk
