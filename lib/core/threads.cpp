// threads_resolve: see threads.h. Tested in tests/core/test_model_config.cpp (ThreadsResolve).
#include "core/threads.h"

#include <cstdlib>
#include <string>
#include <thread>

namespace shrink::core {

Result<int> threads_resolve(int flag) {
  if (flag > 0) return flag;
  if (flag < 0) return invalid_input("--threads " + std::to_string(flag) + ": expected >= 1");
  if (const char* env = std::getenv("SHRINK_THREADS"); env && *env) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (*end != '\0' || v < 1 || v > 4096) {
      return invalid_input(std::string("SHRINK_THREADS='") + env +
                           "': expected a positive integer");
    }
    return int(v);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

}  // namespace shrink::core
