// Continuous (iteration-level) batching for serving, as in Orca and vLLM: one thread owns the
// engine and runs steps; at every step requests join (a free KV slot, their cached prefix
// restored from the PrefixCache) and leave (stop token, max_tokens, end of context, cancel),
// and one forward pass runs a decode row for every generating request plus chunks of waiting
// prompts, within `max_batch_tokens` rows, so a long prompt is prefilled over several steps
// instead of stalling the others' decoding.
//
// Each request samples with its own core::Sampler (its settings and seed), drawn exactly as
// runtime::generate draws it (one draw per sampled token, taken before the forward that picks
// it; no draw for prompt chunks that pick nothing), so a request's tokens are those of
// `shrink-rt generate` with the same seed, up to the float rounding of a batched product (the
// rows of a step are stacked for every GEMM; tested equal on the default teacher).
// Callers (the HTTP server's threads) submit() and wait on the returned ServeStream; nothing but
// the scheduler's thread touches the engine. Tested in tests/runtime/test_serve.cpp.
//
// Under tensor parallelism (the engine has a TpComm of several ranks) every rank runs a
// scheduler and they stay in lockstep, since every rank must make the same engine calls: rank 0,
// the leader, takes the submissions; at each iteration it broadcasts what changes the schedule
// (the requests it admits, the cancellations, the stop), and every rank then runs the same
// deterministic admission, prefix cache, chunking and sampling on the same gathered logits. The
// followers take no submissions and wait_stopped() for the leader's stop. An idle leader sends
// an empty iteration every `heartbeat`, so a follower's collective never waits long enough to
// time out; a failed collective stops every rank (failure(), and on_broken on the leader).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/sampling.h"
#include "core/status.h"
#include "runtime/engine.h"
#include "runtime/prefix_cache.h"

namespace shrink::runtime {

struct ServeRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;  // 0: prefill only (warm-up, scoring)
  core::SamplingParams sampling;
  uint64_t seed = 0;
  /// -1: no log-probabilities; 0..20: each sampled token's log-probability under the model
  /// (log-softmax of its logits, before temperature) and this many most likely alternatives.
  int top_logprobs = -1;
  /// Penalties and logit bias (OpenAI's), applied to a copy of the logits before the pick; the
  /// log-probabilities stay the model's own.
  core::LogitAdjust adjust;
  /// Also the log-probability of every prompt token after the first (each under the logits of
  /// the positions before it, with top_logprobs alternatives): OpenAI's echo with logprobs, the
  /// way evaluation harnesses score text. The whole prompt is then prefilled (no prefix reuse).
  bool prompt_logprobs = false;
  std::vector<int64_t> eos;  // any of these ends the request (finish "stop"); empty: none
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0;                           // when ServeRequest::top_logprobs >= 0
  std::vector<std::pair<int32_t, float>> top;  // best first
};

/// A submitted request as its caller sees it: tokens arrive as the scheduler produces them.
class ServeStream {
 public:
  /// Wait until more than `have` tokens exist, the request ended, or `timeout` passed; copy the
  /// tokens past `have` into `out`. Returns whether the request has ended.
  bool wait(size_t have, std::vector<TokenOut>& out, std::chrono::milliseconds timeout);
  /// Ask the scheduler to stop this request at its next step (its slot is freed then).
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Valid once ended (wait() returned true):
  std::string finish_reason() const;  // "stop" | "length" | "cancelled" | "error"
  std::string error() const;          // for "error"
  int64_t cached_tokens() const;      // prompt tokens restored from the prefix cache
  /// With ServeRequest::prompt_logprobs: prompt tokens 1..P-1 (set before the first generated
  /// token or the end, whichever comes first).
  std::vector<TokenOut> prompt_logprobs() const;
  double ttft_seconds() const;        // submit to first token

  // Scheduler side.
  void push(TokenOut t);
  void finish(const std::string& reason, const std::string& error = "");
  void set_cached(int64_t n);
  void set_prompt_logprobs(std::vector<TokenOut> lp);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TokenOut> tokens_;
  std::vector<TokenOut> prompt_lp_;
  bool done_ = false;
  std::string reason_, error_;
  int64_t cached_ = 0;
  std::chrono::steady_clock::time_point submitted_ = std::chrono::steady_clock::now();
  double ttft_ = 0;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  int64_t max_batch_tokens = 512;  // rows of one forward pass (decode rows + prompt chunks)
  int64_t queue_limit = 256;       // requests waiting for a slot (none free); beyond: refused
  uint64_t prefix_cache_bytes = 0; // 0: no prefix cache
  int64_t block_tokens = 16;       // prefix-cache block
  /// Under tensor parallelism: the idle leader's empty iteration period (well below the group's
  /// timeout), and what to call when the group breaks (a rank died: the server should stop).
  std::chrono::milliseconds heartbeat{250};
  std::function<void()> on_broken;
};

struct SchedulerStats {
  uint64_t requests = 0, finished = 0, cancelled = 0, errors = 0;
  uint64_t prompt_tokens = 0, prefill_tokens = 0, cached_tokens = 0, generated_tokens = 0;
  uint64_t steps = 0, step_rows = 0;
  int64_t queued = 0, running = 0, slots = 0;
  uint64_t prefix_lookups = 0, prefix_hits = 0, prefix_bytes = 0, prefix_budget = 0;
  int64_t prefix_blocks = 0;
  uint64_t prefix_evictions = 0;
};

class Scheduler {
 public:
  Scheduler(Engine& e, SchedulerOptions o);
  ~Scheduler();  // shutdown(0) if running
  /// Start the scheduler's thread.
  void start();
  /// Queue a request. Errors: kInvalidInput for an empty prompt, ids outside the vocabulary or
  /// prompt + max_tokens beyond the context (the message says which); when the queue is full or
  /// the scheduler is stopping, an error with `*busy` set (HTTP 503, not the client's fault).
  Result<std::shared_ptr<ServeStream>> submit(ServeRequest r, bool* busy = nullptr);
  /// Stop accepting; requests still running after `grace` are cancelled; joins the thread.
  void shutdown(std::chrono::milliseconds grace);
  /// A follower rank (tensor parallelism): run until the leader stops, or the group fails.
  /// Returns failure().
  Status wait_stopped();
  /// ok, or why a tensor-parallel group failed (a collective's error naming the peer).
  Status failure() const;
  bool follower() const { return follower_; }
  SchedulerStats stats() const;
  int64_t context() const { return e_.max_seq_len(); }
  int64_t vocab() const { return e_.config().vocab_size; }
  int slots() const { return e_.max_batch(); }
  int64_t queue_limit() const { return o_.queue_limit; }

 private:
  struct Active;
  struct Tick;
  void loop();
  Status tick(Tick& t);
  void break_group(const Status& why);
  Status handshake();
  void admit(Tick& t);
  Status step();
  void retire(Active& a, const std::string& reason, const std::string& error = "");

  Engine& e_;
  SchedulerOptions o_;
  TpComm* tp_ = nullptr;  // several ranks: the leader (rank 0) or a follower
  bool follower_ = false;
  Status broken_;         // under mu_
  PrefixCache cache_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<ServeRequest, std::shared_ptr<ServeStream>>> queue_;
  std::vector<std::unique_ptr<Active>> active_;  // scheduler thread only
  std::vector<int> free_slots_;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  bool has_deadline_ = false;
  std::thread thread_;
  SchedulerStats st_;  // under mu_
  // Step buffers.
  std::vector<float> logits_;
  std::vector<float> adjusted_;  // one row's logits after its penalties and bias
  std::vector<int32_t> next_;
  core::SampleScratch scratch_;
};

}  // namespace shrink::runtime
