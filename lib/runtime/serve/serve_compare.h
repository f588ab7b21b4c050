// The serving side of verify: the load benchmark (bench_serve.h) against the reference and the
// compact model in turn, each served by a `shrink-rt serve` process started beside this one
// (the binary in this executable's directory; in this process when it is not there), on a free
// loopback port, so a recipe's verify stage can put their throughput and latency side by side
// in report.json/md. Tested in tests/cli/test_run.sh (a recipe with a serve block).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "runtime/engine.h"

namespace shrink::runtime::serve {

struct ServeCompareOptions {
  std::vector<int> concurrency = {1, 8};
  int64_t requests = 0;  // per level; 0: max(16, 4 x concurrency)
  int64_t prompt_len = 64, gen_len = 32, shared_prefix = 0;
  double prefix_cache_mb = 256;
  int repeats = 3;  // interleaved phases per model; per level the medians
  EngineOptions engine;  // max_batch and max_seq_len are set from the workload
};

/// Each model is served and measured `repeats` times, interleaved with the other (one loaded at
/// a time). {"reference": {last run's levels}, "compact": {...}, "levels": [{concurrency,
/// output_tokens_per_s_reference, output_tokens_per_s_compact (medians, and the runs),
/// throughput_ratio, ttft_p50_ms_reference, ttft_p50_ms_compact, ...}]}. Errors: the models' load errors, and
/// kInternal when a request of the benchmark failed.
Result<nlohmann::json> serve_compare(const std::string& compact, const std::string& reference,
                                     const ServeCompareOptions& o);

}  // namespace shrink::runtime::serve
