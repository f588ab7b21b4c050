// Implementation of the LibTorch-free entry points in api.h: environment (threads, BLAS),
// perplexity, generation and random init.
//
// Perplexity follows core::eval_windows exactly (the shared definition with the runtime):
// non-overlapping windows of seq_len tokens, each scoring len-1 next-token predictions, NLL
// summed in double; by default the model streams layer by layer (train/streamed.h), with
// --load-model the whole model is loaded (nll_over_windows). Generation prefills the prompt once and then decodes one token at a time
// through the KV cache; the token choice is core::Sampler, the same as in the runtime.
#include "train/api.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>

#include "core/fs.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "train/model.h"
#include "train/streamed.h"

namespace shrink::train {

using Clock = std::chrono::steady_clock;

EnvInfo env_init(int threads) {
  EnvInfo e;
  e.threads = threads;
  torch::set_num_threads(threads);
  // Which library answers sgemm_ (LibTorch's BLAS on this platform)? Debian switches it through
  // alternatives, so resolve the symlinks to see the real file.
  void* sym = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info{};
  if (sym && dladdr(sym, &info) && info.dli_fname) {
    char buf[PATH_MAX];
    e.blas_library = realpath(info.dli_fname, buf) ? buf : info.dli_fname;
    const std::string& p = e.blas_library;
    bool optimized = p.find("openblas") != std::string::npos || p.find("blis") != std::string::npos ||
                     p.find("mkl") != std::string::npos || p.find("atlas") != std::string::npos;
    e.blas_is_reference = !optimized;
  }
  return e;
}

std::string env_blas_warning(const EnvInfo& e) {
  if (!e.blas_is_reference) return "";
  return "warning: LibTorch is running on the reference BLAS (" + e.blas_library +
         "); matrix products will be 15-30x slower. Install an optimized BLAS: "
         "apt-get install libopenblas0-openmp";
}

namespace {

core::Tokenizer tokenizer_for(const std::string& model_dir, const std::string& override_path,
                              const std::string& why) {
  std::string path = override_path.empty() ? model_dir + "/tokenizer.json" : override_path;
  if (!core::path_exists(path)) {
    throw Error(StatusCode::kInvalidInput,
                path + ": not found; " + why + " needs a tokenizer. Pass --tokenizer PATH, " +
                    "or give token ids (pre-tokenized shards from `shrink data prepare`, or "
                    "--prompt-ids)");
  }
  return core::Tokenizer::load(path).take_or_throw();
}

}  // namespace

EvalResult eval_perplexity(const std::string& model_dir, const EvalOptions& opts) {
  core::ModelConfig cfg = core::config_load(model_dir).take_or_throw();
  int64_t seq_len = opts.seq_len ? opts.seq_len : std::min<int64_t>(512, cfg.max_position_embeddings);
  if (seq_len < 2) {
    throw Error(StatusCode::kInvalidInput,
                "--seq-len " + std::to_string(seq_len) + ": expected >= 2");
  }
  if (opts.batch < 1) {
    throw Error(StatusCode::kInvalidInput, "--batch " + std::to_string(opts.batch) + ": expected >= 1");
  }
  core::LoadedTokens data =
      core::tokens_load(model_dir, cfg.vocab_size, opts.source, opts.progress).take_or_throw();
  std::vector<core::EvalWindow> windows = core::eval_windows(data.tokens.size(), seq_len);
  if (windows.empty()) {
    throw Error(StatusCode::kInvalidInput,
                opts.source.data + ": only " + std::to_string(data.tokens.size()) +
                    " tokens; perplexity needs at least 2");
  }
  EvalResult r;
  r.seq_len = seq_len;
  r.tokens = data.tokens.size();
  r.windows = windows.size();
  r.data_description = data.description;
  auto t0 = Clock::now();
  double nll_sum = 0;
  if (opts.load_model) {
    CausalLM model = model_load(model_dir);
    model->eval();
    core::Progress prog("eval", r.tokens, "tok", opts.progress);
    auto [sum, scored] = nll_over_windows(model, data.tokens.data(), data.tokens.size(), seq_len,
                                          opts.batch, [&](uint64_t done) { prog.update(done); });
    prog.finish();
    nll_sum = sum;
    r.tokens_scored = scored;
  } else {
    core::Progress prog("eval", uint64_t(cfg.num_layers), "layers", opts.progress);
    StreamedEvalOptions so;
    so.seq_len = seq_len;
    so.batch = opts.batch;
    so.max_memory = opts.max_memory;
    so.progress = [&](int64_t done, int64_t) { prog.update(uint64_t(done)); };
    const StreamedEval e = nll_streamed(model_dir, data.tokens.data(), data.tokens.size(), so);
    prog.finish();
    nll_sum = e.nll_sum;
    r.tokens_scored = e.scored;
    r.streamed = true;
    r.states_bytes = e.states_bytes;
    r.states_spilled = e.states_spilled;
    r.bytes_read = e.bytes_read;
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.mean_nll = nll_sum / double(r.tokens_scored);
  r.perplexity = std::exp(r.mean_nll);
  r.tokens_per_second = r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0;
  return r;
}

GenerateResult generate(const std::string& model_dir, const GenerateOptions& opts) {
  if (opts.max_new_tokens < 0) {
    throw Error(StatusCode::kInvalidInput, "--max-new-tokens must be >= 0");
  }
  if (opts.sampling.temperature < 0 || !(opts.sampling.top_p > 0 && opts.sampling.top_p <= 1)) {
    throw Error(StatusCode::kInvalidInput,
                "sampling: expected temperature >= 0 and 0 < top-p <= 1");
  }
  CausalLM model = model_load(model_dir);
  model->eval();
  const core::ModelConfig& cfg = model->config();
  GenerateResult r;
  std::unique_ptr<core::Tokenizer> tok;
  std::string tok_path = opts.tokenizer.empty() ? model_dir + "/tokenizer.json" : opts.tokenizer;
  if (opts.prompt_ids.empty() || core::path_exists(tok_path)) {
    tok = std::make_unique<core::Tokenizer>(tokenizer_for(model_dir, opts.tokenizer, "--prompt"));
  }
  r.ids = opts.prompt_ids.empty() ? tok->encode(opts.prompt, true) : opts.prompt_ids;
  if (r.ids.empty()) throw Error(StatusCode::kInvalidInput, "the prompt is empty");
  for (int32_t id : r.ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw Error(StatusCode::kInvalidInput, "prompt token " + std::to_string(id) +
                                                 " is outside the vocabulary (vocab_size " +
                                                 std::to_string(cfg.vocab_size) + ")");
    }
  }
  r.prompt_len = int64_t(r.ids.size());
  const std::vector<int64_t> eos =
      core::stop_token_ids(model_dir, cfg, tok && tok->eos_id() ? *tok->eos_id() : -1)
          .take_or_throw();

  core::Sampler sampler(opts.sampling, opts.seed);
  torch::NoGradGuard ng;
  KVCache cache;
  auto t0 = Clock::now();
  std::vector<int64_t> prompt(r.ids.begin(), r.ids.end());
  auto logits = model->forward(torch::tensor(prompt, torch::kLong).unsqueeze(0), false, &cache).logits;
  auto t1 = Clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    auto last = logits[0][logits.size(1) - 1].contiguous();
    int32_t next = sampler.sample(last.data_ptr<float>(), last.numel());
    r.ids.push_back(next);
    if (opts.stop_at_eos && std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    if (step + 1 == opts.max_new_tokens) break;
    logits = model->forward(torch::tensor({int64_t(next)}, torch::kLong).unsqueeze(0), false, &cache)
                 .logits;
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  if (tok) {
    r.text = tok->decode(r.ids, /*skip_special_tokens=*/false);
    r.has_text = true;
  }
  return r;
}

void model_init(const core::ModelConfig& config, const std::string& out_dir,
                const InitOptions& opts) {
  throw_if_error(core::config_validate(config, "config"));
  SaveOptions so;
  so.dtype = opts.dtype;
  if (!opts.tokenizer.empty()) {
    core::Tokenizer tok = core::Tokenizer::load(opts.tokenizer).take_or_throw();
    if (tok.vocab_size() > config.vocab_size) {
      throw Error(StatusCode::kInvalidInput,
                  opts.tokenizer + ": tokenizer has " + std::to_string(tok.vocab_size()) +
                      " tokens but the config's vocab_size is " +
                      std::to_string(config.vocab_size));
    }
    so.tokenizer_json = opts.tokenizer;
  }
  CausalLM m = model_create(config, opts.seed);
  so.provenance = {{"stage", "init"}, {"seed", opts.seed}};
  model_save(m, out_dir, so);
}

}  // namespace shrink::train
