// OpenMP-backed parallel_for (see parallel.h).
#include "kernels/cpu/parallel.h"

#include <cstdlib>

#if defined(SHRINK_HAVE_OPENMP)
#include <omp.h>
#endif

namespace shrink::kernels::cpu {

namespace {
int g_threads = 1;
}

void threads_set(int n) {
  g_threads = n < 1 ? 1 : n;
#if defined(SHRINK_HAVE_OPENMP)
  omp_set_num_threads(g_threads);
#endif
}

int threads_get() { return g_threads; }

bool threads_have_openmp() {
#if defined(SHRINK_HAVE_OPENMP)
  return true;
#else
  return false;
#endif
}

int64_t min_parallel_work() {
  static const int64_t w = [] {
    const char* e = std::getenv("SHRINK_MIN_PARALLEL_WORK");
    return e ? std::atoll(e) : int64_t(1) << 18;
  }();
  return w;
}

void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t work_per_unit) {
  if (n <= 0) return;
  if (work_per_unit > 0 && n * work_per_unit < min_parallel_work()) {
    fn(0, n);
    return;
  }
  if (align < 1) align = 1;
  const int64_t units = (n + align - 1) / align;
  int64_t parts = g_threads < units ? g_threads : units;
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  auto range = [&](int64_t p, int64_t* b, int64_t* e) {
    const int64_t u0 = units * p / parts, u1 = units * (p + 1) / parts;
    *b = u0 * align;
    *e = u1 * align < n ? u1 * align : n;
  };
#if defined(SHRINK_HAVE_OPENMP)
#pragma omp parallel for num_threads(int(parts)) schedule(static, 1)
  for (int64_t p = 0; p < parts; ++p) {
    int64_t b, e;
    range(p, &b, &e);
    if (b < e) fn(b, e);
  }
#else
  for (int64_t p = 0; p < parts; ++p) {
    int64_t b, e;
    range(p, &b, &e);
    if (b < e) fn(b, e);
  }
#endif
}

}  // namespace shrink::kernels::cpu
