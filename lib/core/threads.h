// Thread-count policy shared by every tool: --threads N, else SHRINK_THREADS, else all cores.
// Why: LibTorch on this platform defaults to one thread and OpenMP/BLAS pools read their own
// variables; resolving the count once, explicitly, keeps runs reproducible (same seed + same
// thread count = same result) and avoids oversubscription.
#pragma once

#include "core/status.h"

namespace shrink::core {

/// `flag` > 0 wins; else SHRINK_THREADS (must be a positive integer); else
/// std::thread::hardware_concurrency(). Errors (kInvalidInput) name the bad value.
Result<int> threads_resolve(int flag);

}  // namespace shrink::core
