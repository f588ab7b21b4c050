// Threading for the CPU runtime: one OpenMP pool, shared with oneDNN (which Debian builds on the
// same OpenMP runtime), so the GEMM library and our kernels never oversubscribe the cores.
//
// Why static ranges: parallel_for hands each thread one contiguous, aligned slice of the output,
// and every output element is computed by exactly one kernel call in a fixed order, so results
// are identical for any thread count (and trivially for the same one). Builds without OpenMP run
// everything on the calling thread. Tested in tests/runtime (the engine tests run at 1 and 2
// threads and compare bit for bit).
#pragma once

#include <cstdint>
#include <functional>

namespace shrink::kernels::cpu {

/// Set the pool size used by parallel_for and by the GEMM library (omp_set_num_threads).
void threads_set(int n);
int threads_get();
/// True when built with OpenMP.
bool threads_have_openmp();

/// Call fn(begin, end) on disjoint slices covering [0, n), at most threads_get() of them, each
/// boundary a multiple of `align` (except n itself). Runs inline when one slice suffices, and
/// when `work_per_unit` (multiply-adds, or a comparable count of element operations, per unit of
/// n) says the whole call is below kMinParallelWork: waking the pool costs more than such a call
/// (a decode step of a 7M-parameter model ran 1.9x slower on 2 threads than on 1 without this).
void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t work_per_unit = 0);
/// Work below which parallel_for stays on the calling thread (multiply-adds).
int64_t min_parallel_work();

}  // namespace shrink::kernels::cpu
