// perplexity / generate / bench (see api.h).
#include "runtime/api.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/sampling.h"
#include "core/tokenizer.h"

namespace shrink::runtime {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

double log_sum_exp(const float* x, int64_t V) {
  const float mx = *std::max_element(x, x + V);
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(double(x[v]) - double(mx));
  return double(mx) + std::log(z);
}

int64_t logit_rows_per_forward(int64_t vocab) {
  return std::max<int64_t>(16, (int64_t(64) << 20) / (4 * std::max<int64_t>(1, vocab)));
}

Result<PerplexityResult> perplexity(Engine& e, const int32_t* tokens, uint64_t n, int64_t seq_len,
                                    int64_t batch, const std::function<void(uint64_t)>& progress,
                                    int64_t logit_rows) {
  SHRINK_CHECK(seq_len >= 2, StatusCode::kInvalidInput, "--seq-len %lld: expected >= 2",
               (long long)seq_len);
  SHRINK_CHECK(batch >= 1 && batch <= e.max_batch(), StatusCode::kInternal,
               "perplexity batch %lld exceeds the engine's %d slots", (long long)batch,
               e.max_batch());
  SHRINK_CHECK(seq_len <= e.max_seq_len(), StatusCode::kInvalidInput,
               "--seq-len %lld exceeds the engine's maximum sequence length %lld",
               (long long)seq_len, (long long)e.max_seq_len());
  const std::vector<core::EvalWindow> windows = core::eval_windows(n, seq_len);
  SHRINK_CHECK(!windows.empty(), StatusCode::kInvalidInput,
               "only %llu tokens; perplexity needs at least 2", (unsigned long long)n);
  const int64_t V = e.config().vocab_size;
  const int64_t cap = logit_rows > 0 ? logit_rows : logit_rows_per_forward(V);
  const size_t per = size_t(std::clamp<int64_t>(cap / seq_len, 1, batch));  // windows per pass
  PerplexityResult r;
  r.seq_len = seq_len;
  r.tokens = n;
  r.windows = windows.size();
  double nll = 0;
  uint64_t done = 0;
  std::vector<float> logits;
  auto t0 = Clock::now();
  for (size_t i = 0; i < windows.size(); i += per) {
    const size_t j = std::min(windows.size(), i + per);
    e.reset_all();
    // Positions [p0, p0 + step) of every window of the pass: the whole windows unless one
    // window alone exceeds the cap, which is then prefilled a chunk at a time.
    const int64_t step = std::max<int64_t>(1, std::min<int64_t>(seq_len, cap / int64_t(j - i)));
    for (int64_t p0 = 0; p0 < seq_len; p0 += step) {
      std::vector<SeqChunk> chunks;
      std::vector<size_t> of;
      for (size_t w = i; w < j; ++w) {
        if (windows[w].len <= p0) continue;
        chunks.push_back({int(w - i), tokens + windows[w].start + p0,
                          std::min(step, windows[w].len - p0)});
        of.push_back(w);
      }
      if (chunks.empty()) break;
      SHRINK_RETURN_IF_ERROR(e.forward(chunks, /*all_logits=*/true, logits));
      int64_t row = 0;
      for (size_t k = 0; k < chunks.size(); ++k) {
        const core::EvalWindow& w = windows[of[k]];
        const int32_t* tk = tokens + w.start;
        for (int64_t t = p0; t < p0 + chunks[k].n; ++t, ++row) {
          if (t + 1 >= w.len) continue;  // the last position predicts nothing scored
          const float* x = logits.data() + row * V;
          nll -= double(x[tk[t + 1]]) - log_sum_exp(x, V);
          r.tokens_scored++;
        }
      }
    }
    for (size_t w = i; w < j; ++w) done += uint64_t(windows[w].len);
    if (progress) progress(done);
  }
  e.reset_all();
  r.seconds = since(t0);
  r.mean_nll = nll / double(r.tokens_scored);
  r.perplexity = std::exp(r.mean_nll);
  r.tokens_per_second = r.seconds > 0 ? double(n) / r.seconds : 0;
  return r;
}

namespace {
double bernoulli_stderr(double p, int64_t n) {
  return n > 1 ? std::sqrt(p * (1 - p) / double(n - 1)) : 0.0;
}
}  // namespace

int64_t choice_task_positions(const std::vector<core::ChoiceItem>& items) {
  int64_t n = 0;
  for (const core::ChoiceItem& it : items) {
    for (const auto& c : it.choices)
      n = std::max<int64_t>(n, int64_t(it.context.size() + c.size()));
  }
  return n;
}

Result<std::vector<core::ChoiceItem>> choice_task_for(const std::string& model_dir,
                                                      const std::string& tokenizer,
                                                      const std::string& task_path,
                                                      int64_t vocab_size) {
  const std::string tok_path = tokenizer.empty() ? model_dir + "/tokenizer.json" : tokenizer;
  std::optional<core::Tokenizer> tok;
  if (!tokenizer.empty() || core::path_exists(tok_path)) {
    SHRINK_ASSIGN_OR_RETURN(core::Tokenizer t, core::Tokenizer::load(tok_path));
    tok = std::move(t);
  }
  return core::choice_task_load(task_path, tok ? &*tok : nullptr, vocab_size);
}

Result<ChoiceResult> score_choices(Engine& e, const std::vector<core::ChoiceItem>& items,
                                   const std::function<void(uint64_t)>& progress) {
  const int64_t V = e.config().vocab_size, max_seq = e.max_seq_len();
  ChoiceResult r;
  r.items = int64_t(items.size());
  r.loglik.resize(items.size());
  std::vector<std::vector<int32_t>> ctx(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const core::ChoiceItem& it = items[i];
    SHRINK_CHECK(!it.context.empty() && it.choices.size() >= 2 &&
                     it.norm_length.size() == it.choices.size() && it.label >= 0 &&
                     it.label < int64_t(it.choices.size()) &&
                     (it.given.empty() || it.given.size() == it.choices.size()),
                 StatusCode::kInvalidInput,
                 "item %zu: expected a context, at least 2 choices with a length each, and a "
                 "label among them",
                 i + 1);
    for (size_t c = 0; c < it.given.size(); ++c) {
      SHRINK_CHECK(it.given[c] >= 0 && it.given[c] < int64_t(it.choices[c].size()),
                   StatusCode::kInvalidInput,
                   "item %zu: choice %zu has %lld given tokens of %zu; expected at least one "
                   "scored token",
                   i + 1, c, (long long)it.given[c], it.choices[c].size());
    }
    int64_t longest = 0;
    std::vector<const std::vector<int32_t>*> seqs = {&it.context};
    for (double len : it.norm_length) {
      SHRINK_CHECK(len > 0, StatusCode::kInvalidInput,
                   "item %zu: a choice's normalization length is %g; expected > 0", i + 1, len);
    }
    for (const auto& c : it.choices) {
      SHRINK_CHECK(!c.empty(), StatusCode::kInvalidInput, "item %zu: a choice has no tokens",
                   i + 1);
      longest = std::max<int64_t>(longest, int64_t(c.size()));
      seqs.push_back(&c);
    }
    for (const auto* sq : seqs) {
      for (int32_t t : *sq) {
        SHRINK_CHECK(t >= 0 && t < V, StatusCode::kInvalidInput,
                     "item %zu: token id %d is outside the vocabulary [0, %lld)", i + 1, t,
                     (long long)V);
      }
    }
    SHRINK_CHECK(longest < max_seq, StatusCode::kInvalidInput,
                 "item %zu: a choice of %lld tokens leaves no room for context in the engine's "
                 "%lld positions",
                 i + 1, (long long)longest, (long long)max_seq);
    const int64_t keep = std::min<int64_t>(int64_t(it.context.size()), max_seq - longest);
    if (keep < int64_t(it.context.size())) r.truncated++;
    ctx[i].assign(it.context.end() - keep, it.context.end());
  }
  auto t0 = Clock::now();
  std::vector<float> logits;
  const size_t B = size_t(e.max_batch());
  for (size_t i = 0; i < items.size(); i += B) {
    const size_t j = std::min(items.size(), i + B);
    e.reset_all();
    std::vector<SeqChunk> chunks;
    for (size_t k = i; k < j; ++k) {
      chunks.push_back({int(k - i), ctx[k].data(), int64_t(ctx[k].size())});
    }
    SHRINK_RETURN_IF_ERROR(e.forward(chunks, /*all_logits=*/false, logits));
    // The context's last row predicts every choice's first token: each log-likelihood starts
    // there.
    size_t most = 0;
    for (size_t k = i; k < j; ++k) {
      const float* x = logits.data() + (k - i) * size_t(V);
      const double lse = log_sum_exp(x, V);
      for (size_t c = 0; c < items[k].choices.size(); ++c) {
        const bool scored = items[k].given.empty() || items[k].given[c] == 0;
        r.loglik[k].push_back(scored ? double(x[items[k].choices[c][0]]) - lse : 0.0);
      }
      most = std::max(most, items[k].choices.size());
    }
    for (size_t c = 0; c < most; ++c) {
      chunks.clear();
      std::vector<size_t> who;
      for (size_t k = i; k < j; ++k) {
        if (c >= items[k].choices.size()) continue;
        const auto& ch = items[k].choices[c];
        chunks.push_back({int(k - i), ch.data(), int64_t(ch.size())});
        who.push_back(k);
      }
      SHRINK_RETURN_IF_ERROR(e.forward(chunks, /*all_logits=*/true, logits));
      size_t row = 0;
      for (size_t k : who) {
        const auto& ch = items[k].choices[c];
        double& ll = r.loglik[k][c];
        const size_t first = items[k].given.empty() ? 0 : size_t(items[k].given[c]);
        for (size_t t = 1; t < ch.size(); ++t, ++row) {
          if (t < first) continue;  // the choice's own context
          const float* x = logits.data() + row * size_t(V);
          ll += double(x[ch[t]]) - log_sum_exp(x, V);
        }
        ++row;  // the choice's last row predicts nothing scored
        SHRINK_RETURN_IF_ERROR(e.truncate(int(k - i), int64_t(ctx[k].size())));
      }
    }
    if (progress) progress(uint64_t(j));
  }
  e.reset_all();
  r.seconds = since(t0);
  int64_t right = 0, right_norm = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const auto& ll = r.loglik[k];
    int64_t p = 0, pn = 0;
    for (size_t c = 1; c < ll.size(); ++c) {
      if (ll[c] > ll[size_t(p)]) p = int64_t(c);
      const auto& len = items[k].norm_length;
      if (ll[c] / len[c] > ll[size_t(pn)] / len[size_t(pn)]) pn = int64_t(c);
    }
    r.pred.push_back(p);
    r.pred_norm.push_back(pn);
    right += p == items[k].label;
    right_norm += pn == items[k].label;
  }
  const int64_t n = r.items;
  r.acc = n ? double(right) / double(n) : 0;
  r.acc_norm = n ? double(right_norm) / double(n) : 0;
  r.acc_stderr = bernoulli_stderr(r.acc, n);
  r.acc_norm_stderr = bernoulli_stderr(r.acc_norm, n);
  return r;
}

namespace {
// The prompt and length checks of generate() and generate_speculative().
Status check_request(const std::vector<int32_t>& prompt, const GenerateOptions& opts, int64_t V,
                     int64_t max_seq) {
  SHRINK_CHECK(opts.max_new_tokens >= 0, StatusCode::kInvalidInput,
               "--max-new-tokens must be >= 0");
  SHRINK_CHECK(!prompt.empty(), StatusCode::kInvalidInput, "the prompt is empty");
  SHRINK_CHECK(int64_t(prompt.size()) + opts.max_new_tokens <= max_seq + 1,
               StatusCode::kInvalidInput,
               "prompt (%zu tokens) + --max-new-tokens %lld exceeds the maximum sequence length "
               "%lld",
               prompt.size(), (long long)opts.max_new_tokens, (long long)max_seq);
  for (int32_t id : prompt) {
    SHRINK_CHECK(id >= 0 && id < V, StatusCode::kInvalidInput,
                 "prompt token %d is outside the vocabulary (vocab_size %lld)", id, (long long)V);
  }
  return Status::ok();
}
}  // namespace

Result<GenerateResult> generate(Engine& e, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts) {
  SHRINK_CHECK(
      opts.sampling.temperature >= 0 && opts.sampling.top_p > 0 && opts.sampling.top_p <= 1,
      StatusCode::kInvalidInput, "sampling: expected temperature >= 0 and 0 < top-p <= 1");
  SHRINK_RETURN_IF_ERROR(check_request(prompt, opts, e.config().vocab_size, e.max_seq_len()));
  GenerateResult r;
  r.ids = prompt;
  r.prompt_len = int64_t(prompt.size());
  core::Sampler sampler(opts.sampling, opts.seed);
  e.reset(0);
  auto t0 = Clock::now();
  // The next token is picked on the backend (no logits cross to the host): the argmax when
  // greedy, else the sampler's row (parameters and its next draw, taken before the forward
  // that samples with it, so the RNG is consumed as core::Sampler::sample consumes it).
  const bool greedy = opts.sampling.temperature <= 0.0f;
  std::vector<int32_t> best;
  auto step_fwd = [&](const std::vector<SeqChunk>& ch) {
    return greedy ? e.forward_argmax(ch, best) : e.forward_sample(ch, {sampler.next_row()}, best);
  };
  SHRINK_RETURN_IF_ERROR(step_fwd({{0, prompt.data(), int64_t(prompt.size())}}));
  r.prefill_seconds = since(t0);
  auto t1 = Clock::now();
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    const int32_t next = best[0];
    r.ids.push_back(next);
    if (opts.stop_at_eos && std::find(opts.eos.begin(), opts.eos.end(), next) != opts.eos.end())
      break;
    if (step + 1 == opts.max_new_tokens) break;
    SHRINK_RETURN_IF_ERROR(step_fwd({{0, &r.ids.back(), 1}}));
  }
  r.decode_seconds = since(t1);
  return r;
}

Result<GenerateResult> generate_speculative(Engine& target, Engine& draft,
                                            const std::vector<int32_t>& prompt,
                                            const GenerateOptions& opts, int64_t k) {
  SHRINK_CHECK(opts.sampling.temperature <= 0.0f, StatusCode::kInvalidInput,
               "speculative decoding is greedy only: expected --temperature 0, got %g",
               double(opts.sampling.temperature));
  SHRINK_CHECK(k >= 1 && k <= 64, StatusCode::kInvalidInput, "--draft-tokens %lld: expected 1..64",
               (long long)k);
  const int64_t V = target.config().vocab_size;
  SHRINK_CHECK(draft.config().vocab_size == V, StatusCode::kInvalidInput,
               "the draft model has vocab_size %lld but the target has %lld: speculative decoding "
               "needs the same vocabulary",
               (long long)draft.config().vocab_size, (long long)V);
  SHRINK_RETURN_IF_ERROR(
      check_request(prompt, opts, V, std::min(target.max_seq_len(), draft.max_seq_len())));
  GenerateResult r;
  r.ids = prompt;
  r.prompt_len = int64_t(prompt.size());
  if (opts.max_new_tokens == 0) return r;
  target.reset(0);
  draft.reset(0);
  auto t0 = Clock::now();
  std::vector<int32_t> best, next;
  SHRINK_RETURN_IF_ERROR(target.forward_argmax({{0, prompt.data(), int64_t(prompt.size())}}, best));
  if (prompt.size() > 1) {  // the draft's cache lags the target's by the tokens in `pending`
    SHRINK_RETURN_IF_ERROR(
        draft.forward_argmax({{0, prompt.data(), int64_t(prompt.size()) - 1}}, next));
  }
  r.prefill_seconds = since(t0);
  auto t1 = Clock::now();
  auto is_eos = [&](int32_t id) {
    return opts.stop_at_eos && std::find(opts.eos.begin(), opts.eos.end(), id) != opts.eos.end();
  };
  int64_t fresh = 1;
  r.ids.push_back(best[0]);
  std::vector<int32_t> pending = {prompt.back(), best[0]};  // accepted, not yet in the draft
  std::vector<int32_t> chunk, one(1);
  std::vector<float> logits;
  while (fresh < opts.max_new_tokens && !is_eos(r.ids.back())) {
    const int64_t ke = std::min(k, opts.max_new_tokens - fresh - 1);
    // Draft: feed what it has not seen, then propose ke tokens one at a time.
    chunk.assign(1, r.ids.back());
    const int64_t draft_base = draft.length(0);
    for (int64_t i = 0; i < ke; ++i) {
      one[0] = chunk.back();
      const std::vector<int32_t>& feed = i == 0 ? pending : one;
      SHRINK_RETURN_IF_ERROR(draft.forward_argmax({{0, feed.data(), int64_t(feed.size())}}, next));
      chunk.push_back(next[0]);
    }
    // Target: score the last token and every proposal in one forward.
    const int64_t target_base = target.length(0);
    SHRINK_RETURN_IF_ERROR(
        target.forward({{0, chunk.data(), int64_t(chunk.size())}}, true, logits));
    int64_t n = 0;
    while (n < ke && core::argmax(logits.data() + n * V, V) == chunk[size_t(n + 1)]) ++n;
    const int32_t own = core::argmax(logits.data() + n * V, V);
    r.rounds++;
    r.drafted += ke;
    r.accepted += n;
    // Keep the last token and the accepted proposals in the target's cache.
    SHRINK_RETURN_IF_ERROR(target.truncate(0, target_base + 1 + n));
    // The draft saw pending + proposals 0..ke-2. (ke == 0 only for the last token: the draft
    // is not used again.)
    if (n < ke) {
      SHRINK_RETURN_IF_ERROR(draft.truncate(0, draft_base + int64_t(pending.size()) + n));
      pending = {own};
    } else if (ke > 0) {
      pending = {chunk.back(), own};
    }
    bool stop = false;
    for (int64_t i = 1; i <= n + 1 && !stop; ++i) {
      const int32_t id = i <= n ? chunk[size_t(i)] : own;
      r.ids.push_back(id);
      ++fresh;
      stop = is_eos(id) || fresh == opts.max_new_tokens;
    }
    if (stop) break;
  }
  r.decode_seconds = since(t1);
  return r;
}

Result<BenchResult> bench(Engine& e, const BenchOptions& o) {
  SHRINK_CHECK(o.prompt_len >= 1 && o.gen_len >= 1 && o.batch >= 1, StatusCode::kInvalidInput,
               "bench: expected --prompt-len >= 1, --gen-len >= 1, --batch >= 1");
  SHRINK_CHECK(o.warmup >= 0, StatusCode::kInvalidInput, "bench: --warmup must be >= 0");
  SHRINK_CHECK(o.batch <= e.max_batch() && o.prompt_len + o.gen_len <= e.max_seq_len() &&
                   (o.warmup == 0 || o.prompt_len + o.warmup <= e.max_seq_len()),
               StatusCode::kInvalidInput,
               "bench: batch %d x %lld tokens does not fit the engine (%d slots of %lld)", o.batch,
               (long long)(o.prompt_len + o.gen_len), e.max_batch(), (long long)e.max_seq_len());
  const int64_t V = e.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts(size_t(o.batch));
  uint64_t h = o.seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& p : prompts) {
    for (int64_t t = 0; t < o.prompt_len; ++t) {
      h = h * 6364136223846793005ull + 1442695040888963407ull;
      p.push_back(int32_t((h >> 33) % uint64_t(V)));
    }
  }
  e.reset_all();
  BenchResult r;
  r.batch = o.batch;
  r.prompt_len = o.prompt_len;
  r.gen_len = o.gen_len;
  r.weight_bytes = e.weight_bytes();
  std::vector<SeqChunk> chunks;
  for (int b = 0; b < o.batch; ++b) chunks.push_back({b, prompts[size_t(b)].data(), o.prompt_len});
  std::vector<int32_t> next(size_t(o.batch));
  core::Sampler sampler(o.sampling, o.seed);
  std::vector<core::SampleRow> rows;
  auto pick = [&](const std::vector<SeqChunk>& ch) {
    if (o.sampling.temperature <= 0.0f) return e.forward_argmax(ch, next);
    rows.clear();
    for (size_t i = 0; i < ch.size(); ++i) rows.push_back(sampler.next_row());
    return e.forward_sample(ch, rows, next);
  };
  if (o.warmup > 0) {
    SHRINK_RETURN_IF_ERROR(pick(chunks));
    std::vector<SeqChunk> steps;
    for (int64_t s = 0; s < o.warmup; ++s) {
      steps.clear();
      for (int b = 0; b < o.batch; ++b) steps.push_back({b, &next[size_t(b)], 1});
      SHRINK_RETURN_IF_ERROR(pick(steps));
    }
    e.reset_all();
  }
  auto t0 = Clock::now();
  SHRINK_RETURN_IF_ERROR(pick(chunks));
  r.prefill_seconds = since(t0);
  r.ttft_seconds = since(t0);
  r.prefill_tokens_per_second = double(o.batch * o.prompt_len) / r.prefill_seconds;
  std::vector<double> lat;
  double total = 0;
  if (e.tp()) e.tp()->stats_reset();
  for (int64_t s = 0; s < o.gen_len; ++s) {
    for (int b = 0; b < o.batch; ++b) chunks[size_t(b)] = {b, &next[size_t(b)], 1};
    auto ts = Clock::now();
    SHRINK_RETURN_IF_ERROR(pick(chunks));
    const double dt = since(ts);
    lat.push_back(dt);
    total += dt;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) {
    size_t i = size_t(std::ceil(p * double(lat.size()))) - 1;
    return lat[std::min(i, lat.size() - 1)] * 1e3;
  };
  r.latency_p50_ms = pct(0.50);
  r.latency_p99_ms = pct(0.99);
  r.decode_tokens_per_second = double(o.batch * o.gen_len) / total;
  r.weight_gb_per_second = double(r.weight_bytes) * double(o.gen_len) / total / 1e9;
  r.peak_rss_mib = core::peak_rss_mib();
  r.backend_counters = e.backend_counters();
  if (e.tp() && o.gen_len > 0) {
    const TpComm::Stats& st = e.tp()->stats();
    const double steps = double(o.gen_len);
    r.tp_allreduce_bytes_per_step = double(st.allreduce_bytes) / steps;
    // A device group's calls only enqueue: no host time is theirs (NaN: reported as null).
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const bool timed = e.tp()->timed_on_host();
    r.tp_allreduce_us_per_step = timed ? st.allreduce_s * 1e6 / steps : nan;
    r.tp_allgather_bytes_per_step = double(st.allgather_bytes) / steps;
    r.tp_allgather_us_per_step = timed ? st.allgather_s * 1e6 / steps : nan;
  }
  e.reset_all();
  return r;
}

Result<core::ModelConfig> bench_shape(const std::string& name) {
  core::ModelConfig c;
  c.arch = core::Arch::kLlama;
  if (name == "smollm-135m") {
    c.vocab_size = 49152;
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_layers = 30;
    c.num_heads = 9;
    c.num_kv_heads = 3;
    c.max_position_embeddings = 8192;
    c.rope_theta = 100000.0;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = true;
  } else if (name == "llama-1b") {
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.intermediate_size = 8192;
    c.num_layers = 16;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.max_position_embeddings = 131072;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = true;
  } else {
    return invalid_input("--shape '" + name + "' is unknown; expected smollm-135m or llama-1b");
  }
  c.head_dim = c.hidden_size / c.num_heads;
  return c;
}

}  // namespace shrink::runtime
