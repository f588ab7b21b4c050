// Reports that runs can be compared by: model statistics read from a model directory, the
// Pareto front of (size or latency, perplexity), report.md tables and an SVG scatter plot that
// shrink writes itself (no Python). Report JSON schema: "shrink-report/1" (see README).
// Tested end to end by tests/cli/test_run.sh (report.json/md/svg, compare); model_stats is fuzzed
// by tests/fuzz/fuzz_checkpoint.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "pipeline/content_hash.h"

namespace shrink::pipeline {

constexpr const char* kReportSchema = "shrink-report/1";

struct ModelStats {
  int64_t params = 0;         // weights (int8 tensors count as their elements; scales excluded)
  uint64_t bytes = 0;         // safetensors bytes on disk
  double sparsity = 0;        // fraction of exact zeros in the decoder-layer matrices
  std::string quantization;   // "" (float) or e.g. "w8a8-dynamic", "w8a16-channel"
  std::string dtype;
  int64_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0;
};
Result<ModelStats> model_stats(const std::string& model_dir);
nlohmann::json model_stats_json(const ModelStats& s);

/// A content hash of a model directory (config.json and every .safetensors file, XXH3 through
/// ContentHasher), as 16 hex digits: the cache key of anything derived from a model (the teacher top-k
/// cache, recipe stage hashes).
/// `hasher`: a ContentHasher whose cache spares re-reading unchanged files (nullptr: none).
std::string model_fingerprint(const std::string& model_dir, ContentHasher* hasher = nullptr);

/// Indices on the Pareto front when both coordinates are minimized.
std::vector<bool> pareto_front(const std::vector<double>& x, const std::vector<double>& y);

struct PlotPoint {
  std::string label;
  double x = 0, y = 0;
  bool highlight = false;  // the teacher
  bool front = false;      // on the Pareto front
};
/// A self-contained SVG scatter plot (log-scaled x when the range spans over 10x).
std::string plot_svg(const std::vector<PlotPoint>& points, const std::string& title,
                     const std::string& x_label, const std::string& y_label);

/// report.md from a report.json document.
std::string report_markdown(const nlohmann::json& report);

}  // namespace shrink::pipeline
