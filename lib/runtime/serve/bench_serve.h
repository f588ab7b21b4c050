// `shrink-rt bench-serve`: a load benchmark of an OpenAI-compatible completions server (shrink-rt
// serve, or any other), as vLLM's serving benchmark reports it. For each concurrency level,
// that many client threads send streamed /v1/completions requests back to back until the
// request count is reached; each request's time to first token (TTFT), the gaps between its
// streamed tokens (inter-token latency, ITL) and its end-to-end latency are recorded, and the
// level reports request throughput, output tokens/s and the p50/p90/p99 of each latency.
// Prompts are synthetic token ids (--prompt-len, optionally a --shared-prefix that every
// request starts with, as a system prompt) generated greedily for exactly --gen-len tokens
// (ignore_eos), or a JSONL dataset of {"prompt": ..., "max_tokens": ...} lines.
// Tested in tests/cli/test_serve.sh.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace shrink::runtime::serve {

struct BenchServeOptions {
  std::string url = "http://127.0.0.1:8080";
  std::string dataset;  // JSONL; empty with synthetic
  bool synthetic = false;
  std::vector<int> concurrency = {1, 4, 16, 64};
  int64_t requests = 0;  // per level; 0: max(16, 4 x concurrency)
  int64_t shared_prefix = 0, prompt_len = 128, gen_len = 64;
  int32_t vocab = 256;  // synthetic ids are drawn from [1, vocab)
  uint64_t seed = 0;
  std::string api_key;
  double timeout_s = 600;
  bool warmup = true;  // one request before the levels (not measured)
};

struct LatencyStats {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;
};
struct BenchServeRow {
  int concurrency = 0;
  int64_t requests = 0, errors = 0, output_tokens = 0, prompt_tokens = 0, cached_tokens = 0;
  double seconds = 0, requests_per_s = 0, output_tokens_per_s = 0;
  LatencyStats ttft_ms, itl_ms, e2e_ms;
  std::vector<std::string> error_samples;  // up to 3
};

/// Runs every level; errors: kInvalidInput for bad options or dataset lines (file:line), kIoError
/// when the server cannot be reached at all.
Result<std::vector<BenchServeRow>> bench_serve(const BenchServeOptions& o);
nlohmann::json bench_serve_json(const BenchServeOptions& o, const std::vector<BenchServeRow>& rows);
std::string bench_serve_table(const std::vector<BenchServeRow>& rows, const std::string& format);

}  // namespace shrink::runtime::serve
