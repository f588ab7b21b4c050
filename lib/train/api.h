// The LibTorch side's public entry points, with no LibTorch types in the signatures, so that
// tools/ compile without LibTorch headers (fast builds; clean module boundary).
//
// Each function validates its inputs first and throws shrink::Error with a StatusCode
// (kInvalidInput/kNotFound -> exit 2) naming the problem. Tested in tests/train/test_api.cpp and
// end to end by tests/cli/test_cli.sh.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/sampling.h"
#include "core/tokens.h"

namespace shrink::train {

struct EnvInfo {
  int threads = 1;
  std::string blas_library;  // resolved path of the library providing sgemm_
  bool blas_is_reference = false;
};
/// Set LibTorch's intra-op threads and inspect which BLAS it runs on.
EnvInfo env_init(int threads);
/// A warning line for a reference (unoptimized) BLAS, empty otherwise.
std::string env_blas_warning(const EnvInfo& e);

struct EvalOptions {
  core::TokenSource source;  // core/tokens.h
  int64_t seq_len = 0;  // 0 = min(512, max_position_embeddings)
  int64_t batch = 8;    // windows per forward pass
  bool progress = false;
  /// Load the whole model into LibTorch (the reference path) instead of streaming it layer by
  /// layer (train/streamed.h), which holds one layer and the windows' hidden states.
  bool load_model = false;
  std::string max_memory = core::kDefaultStatesBudget;  // budget of the streamed hidden states; beyond it they spill
};
struct EvalResult {
  double perplexity = 0, mean_nll = 0;
  uint64_t tokens = 0;           // tokens read
  uint64_t tokens_scored = 0;    // predictions scored
  uint64_t windows = 0;
  int64_t seq_len = 0;
  double seconds = 0, tokens_per_second = 0;
  std::string data_description;
  bool streamed = false;
  uint64_t states_bytes = 0;  // streamed: the hidden states of every window
  bool states_spilled = false;
  uint64_t bytes_read = 0;  // streamed: the checkpoint's tensor data, read once
};
/// Perplexity over non-overlapping windows (core::eval_windows): exp(mean NLL) over every
/// predicted token. No BOS is inserted.
EvalResult eval_perplexity(const std::string& model_dir, const EvalOptions& opts);

struct GenerateOptions {
  std::vector<int32_t> prompt_ids;  // used when non-empty
  std::string prompt;               // else tokenized with the model's tokenizer
  std::string tokenizer;            // override path
  int64_t max_new_tokens = 64;
  core::SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
};
struct GenerateResult {
  std::vector<int32_t> ids;  // prompt followed by the new tokens
  int64_t prompt_len = 0;
  std::string text;  // decoded prompt + continuation (empty without a tokenizer)
  bool has_text = false;
  double prefill_seconds = 0, decode_seconds = 0;
};
GenerateResult generate(const std::string& model_dir, const GenerateOptions& opts);

/// Create a randomly initialized model directory from a config (and optionally a tokenizer).
struct InitOptions {
  uint64_t seed = 0;
  std::string tokenizer;  // tokenizer.json to copy in; vocab_size must fit it
  std::string dtype = "float32";
};
void model_init(const core::ModelConfig& config, const std::string& out_dir,
                const InitOptions& opts);

}  // namespace shrink::train
