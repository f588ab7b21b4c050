// OpenMP-backed parallel_for (see parallel.h).
#include "kernels/cpu/parallel.h"

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

void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
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
