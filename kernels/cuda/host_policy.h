// The CUDA backend's host-side decisions, which need no GPU: header-only and free of CUDA
// headers, so the CPU build tests them (tests/runtime/test_cuda_host.cpp) and the GPU build
// runs the same code (gemm_lt.cpp, lib/runtime/backend_cuda.cpp).
//  - operand alignment, as cuBLASLt's CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES wants it;
//  - the int8 tensor-core (IMMA) preconditions of cuBLASLt's CUBLAS_COMPUTE_32I GEMM;
//  - the M buckets and the key of cuBLASLt plans, and a plan cache that remembers failures
//    (a shape cuBLASLt has no algorithm for is asked once, not at every prefill);
//  - the counters `bench --format json` reports (cuBLASLt calls, fallbacks to the GEMV, plans,
//    CUDA graph recordings);
//  - when a decode step is recorded into a CUDA graph (GraphPolicy);
//  - the out-of-device-memory message.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace shrink::cuda {

/// The largest power of two, at most 256, that divides both the address p and the byte stride
/// between its rows (every row an operand's kernel reads starts at p + i * stride). cuBLASLt
/// assumes 256 unless told (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES); outputs written at an
/// offset, such as the k and v parts of unfused q/k/v rows, are less aligned.
inline int operand_alignment(const void* p, int64_t row_stride_bytes) {
  const uint64_t v = uint64_t(reinterpret_cast<uintptr_t>(p)) | uint64_t(row_stride_bytes) | 256u;
  return int(v & (~v + 1));  // the lowest set bit
}

/// Rows M of a GEMM as cuBLASLt plans are keyed: up to 64, M rounded up to a multiple of 16;
/// beyond, the next power of two. The heuristic runs once per bucket (for its largest M) and
/// the call passes the exact M, so prompts of every length share a few plans: the cache holds
/// at most 4 + log2(max rows / 64) plans per weight shape instead of one per prompt length.
inline int64_t m_bucket(int64_t M) {
  if (M <= 64) return (M + 15) / 16 * 16;
  int64_t b = 128;
  while (b < M) b <<= 1;
  return b;
}

/// Whether cuBLASLt's int8 GEMM with int32 output (CUDA_R_8I inputs, CUBLAS_COMPUTE_32I,
/// ordinary column-major layouts: the IMMA kernels) may run on this call, and if not why. Here
/// Y[M, N] = X[M, K] W[N, K]^T runs as the column-major (N x M) = W^T(N x K) X(K x M), so
/// cuBLASLt's m is N, lda = ldb = K and ldc = ldy: m, the leading dimensions and K must be
/// multiples of 4, and every pointer 4-byte aligned. Empty when it may run.
inline std::string imma_refusal(int64_t N, int64_t K, int64_t ldc, int align_a, int align_b,
                                int align_c) {
  char buf[160];
  if (N % 4 != 0) {
    std::snprintf(buf, sizeof buf, "N=%lld is not a multiple of 4", (long long)N);
  } else if (K % 4 != 0) {
    std::snprintf(buf, sizeof buf, "K=%lld is not a multiple of 4", (long long)K);
  } else if (ldc % 4 != 0) {
    std::snprintf(buf, sizeof buf, "ldc=%lld is not a multiple of 4", (long long)ldc);
  } else if (align_a < 4 || align_b < 4 || align_c < 4) {
    std::snprintf(buf, sizeof buf, "operands aligned to %d/%d/%d bytes (A/B/C), not 4", align_a,
                  align_b, align_c);
  } else {
    return std::string();
  }
  return buf;
}

/// What a cuBLASLt plan depends on: the data kind, the M bucket, N, K, the output's leading
/// dimension and each operand's alignment (a plan chosen for 256-byte aligned operands may
/// use vector loads that an offset output cannot take).
struct LtKey {
  int kind = 0;
  int64_t m_bucket = 0, n = 0, k = 0, ldc = 0;
  int align_a = 256, align_b = 256, align_c = 256;
  /// A plan for exactly m_bucket rows: made when the bucket's plan fails at a smaller M (its
  /// algorithm was chosen for the bucket's largest M), so that one M falls back alone.
  bool exact = false;
  auto tie() const {
    return std::tie(kind, m_bucket, n, k, ldc, align_a, align_b, align_c, exact);
  }
  bool operator<(const LtKey& o) const { return tie() < o.tie(); }
};

/// Plans by key, and the keys cuBLASLt found no algorithm for (with the reason), so that a
/// failing shape costs one heuristic query per run, not one per call.
template <typename Plan>
class PlanCache {
 public:
  struct Entry {
    std::unique_ptr<Plan> plan;  // null: planning failed
    std::string failure;
  };
  /// The key's entry, or null when it was never planned.
  const Entry* find(const LtKey& k) const {
    auto it = map_.find(k);
    return it == map_.end() ? nullptr : &it->second;
  }
  Plan* put(const LtKey& k, std::unique_ptr<Plan> p) {
    Entry& e = map_[k];
    e.plan = std::move(p);
    e.failure.clear();
    return e.plan.get();
  }
  void put_failure(const LtKey& k, std::string why) {
    Entry& e = map_[k];
    e.plan.reset();
    e.failure = std::move(why);
  }
  size_t size() const { return map_.size(); }
  void clear() { map_.clear(); }

 private:
  std::map<LtKey, Entry> map_;
};

/// How the linears of prefill-sized batches ran, and the CUDA graphs of decode steps: what
/// `bench --format json` reports as backend_counters, and what tests/cuda asserts (cuBLASLt
/// must run for the shapes that should use it).
struct CudaCounters {
  uint64_t lt_gemm = 0;           // cuBLASLt matmuls run
  uint64_t lt_fallback = 0;       // linears past the GEMV's rows that ran the GEMV instead
  uint64_t lt_plans = 0;          // heuristic queries that found an algorithm
  uint64_t lt_plan_failures = 0;  // ... that found none (remembered: once per key)
  uint64_t lt_exact_replans = 0;  // calls where the bucket's plan failed at their M: M planned exactly
  uint64_t graph_captures = 0;    // decode steps recorded into a graph
  uint64_t graph_capture_failures = 0;
  uint64_t graph_replays = 0;
  std::vector<std::pair<std::string, uint64_t>> named(uint64_t plans_cached) const {
    return {{"lt_gemm", lt_gemm},
            {"lt_fallback", lt_fallback},
            {"lt_plans", lt_plans},
            {"lt_plan_failures", lt_plan_failures},
            {"lt_exact_replans", lt_exact_replans},
            {"lt_plans_cached", plans_cached},
            {"graph_captures", graph_captures},
            {"graph_capture_failures", graph_capture_failures},
            {"graph_replays", graph_replays}};
  }
};

/// When a decode step (one key: rows and output kind) is recorded into a CUDA graph.
///  - A key's first use runs eagerly, so one-time work (cuBLASLt heuristics, lazy module
///    loading, scratch growth) happens outside any recording; it is recorded from its second
///    use on.
///  - A recording that fails is logged and retried at the key's later uses, up to
///    kMaxFailuresPerKey; then the key stays eager (logged). After kMaxFailedKeys such keys,
///    graphs are off for the run (logged): something in the process, not one shape, is wrong.
///  - A recording aborted because a buffer had to grow is not a failure: the step reruns
///    eagerly, and the next use records again.
class GraphPolicy {
 public:
  static constexpr int kMaxFailuresPerKey = 3;
  static constexpr int kMaxFailedKeys = 3;
  using Log = std::function<void(const std::string&)>;

  GraphPolicy(bool on, Log log) : on_(on), log_(std::move(log)) {}
  bool on() const { return on_; }

  /// Whether to record `key` now; false: run it eagerly. Counts the use.
  bool should_capture(uint64_t key) {
    if (!on_) return false;
    if (seen_.insert(key).second) return false;  // the first use: eager
    auto it = failures_.find(key);
    return it == failures_.end() || it->second < kMaxFailuresPerKey;
  }

  /// A recording of `key` failed for `why` (the caller reruns the step eagerly).
  void capture_failed(uint64_t key, const std::string& why) {
    const int n = ++failures_[key];
    std::string msg = "cuda graph of step key " + std::to_string(key) + ": recording failed (" +
                      why + ")";
    if (n < kMaxFailuresPerKey) {
      msg += "; retried at its next use";
    } else {
      msg += "; " + std::to_string(n) + " failures, this step stays eager";
      if (++failed_keys_ >= kMaxFailedKeys) {
        on_ = false;
        msg += "; " + std::to_string(failed_keys_) + " steps failed, CUDA graphs are off";
      }
    }
    if (log_) log_(msg);
  }

  /// Failures recorded for key so far.
  int failures(uint64_t key) const {
    auto it = failures_.find(key);
    return it == failures_.end() ? 0 : it->second;
  }

 private:
  bool on_;
  Log log_;
  std::set<uint64_t> seen_;
  std::map<uint64_t, int> failures_;
  int failed_keys_ = 0;
};

/// "out of device memory: needed 1.50 GiB, free 0.25 GiB of 79.19 GiB".
inline std::string out_of_memory_message(uint64_t needed, uint64_t free_bytes,
                                         uint64_t total_bytes) {
  auto gib = [](uint64_t b) {
    char buf[32];
    if (b >= (uint64_t(1) << 30)) {
      std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(uint64_t(1) << 30));
    } else {
      std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / double(uint64_t(1) << 20));
    }
    return std::string(buf);
  };
  return "out of device memory: needed " + gib(needed) + ", free " + gib(free_bytes) + " of " +
         gib(total_bytes);
}

}  // namespace shrink::cuda
