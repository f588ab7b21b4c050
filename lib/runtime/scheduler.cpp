// Continuous batching (scheduler.h).
#include "runtime/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "runtime/api.h"

namespace shrink::runtime {

using Clock = std::chrono::steady_clock;

// ---- ServeStream -----------------------------------------------------------------------------

bool ServeStream::wait(size_t have, std::vector<TokenOut>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return done_ || tokens_.size() > have; });
  out.clear();
  if (tokens_.size() > have) out.assign(tokens_.begin() + long(have), tokens_.end());
  return done_ && tokens_.size() <= have + out.size();
}
std::string ServeStream::finish_reason() const {
  std::lock_guard<std::mutex> lk(mu_);
  return reason_;
}
std::string ServeStream::error() const {
  std::lock_guard<std::mutex> lk(mu_);
  return error_;
}
int64_t ServeStream::cached_tokens() const {
  std::lock_guard<std::mutex> lk(mu_);
  return cached_;
}
double ServeStream::ttft_seconds() const {
  std::lock_guard<std::mutex> lk(mu_);
  return ttft_;
}
void ServeStream::push(TokenOut t) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (tokens_.empty())
      ttft_ = std::chrono::duration<double>(Clock::now() - submitted_).count();
    tokens_.push_back(std::move(t));
  }
  cv_.notify_all();
}
void ServeStream::finish(const std::string& reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    done_ = true;
    reason_ = reason;
    error_ = error;
  }
  cv_.notify_all();
}
void ServeStream::set_cached(int64_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  cached_ = n;
}
void ServeStream::set_prompt_logprobs(std::vector<TokenOut> lp) {
  std::lock_guard<std::mutex> lk(mu_);
  prompt_lp_ = std::move(lp);
}
std::vector<TokenOut> ServeStream::prompt_logprobs() const {
  std::lock_guard<std::mutex> lk(mu_);
  return prompt_lp_;
}

// ---- Scheduler -------------------------------------------------------------------------------

struct Scheduler::Active {
  ServeRequest req;
  std::shared_ptr<ServeStream> out;
  int slot = -1;
  int64_t prefilled = 0;      // prompt tokens in the slot's cache
  std::vector<int32_t> gen;   // sampled tokens (the last one not yet in the cache)
  std::unordered_map<int32_t, int32_t> counts;  // of gen's ids, for penalties
  std::vector<TokenOut> prompt_lp;              // prompt_logprobs, as the chunks are prefilled
  core::Sampler sampler;
  bool cancel = false;  // this iteration's decision (the leader's, under tensor parallelism)
  Active(ServeRequest r, std::shared_ptr<ServeStream> s)
      : req(std::move(r)), out(std::move(s)), sampler(req.sampling, req.seed) {}
  bool prefilling() const { return prefilled < int64_t(req.prompt.size()); }
};

// One iteration's inputs: what the leader decided (and, under tensor parallelism, broadcast).
struct Scheduler::Tick {
  bool exit = false;      // stopping and nothing running
  bool deadline = false;  // stopping and the grace period is over: cancel what runs
  std::vector<std::pair<ServeRequest, std::shared_ptr<ServeStream>>> admitted;  // in slot order
  std::vector<uint32_t> cancel;  // indices into active_
};

namespace {

// The leader's Tick as bytes (tensor parallelism): every field of each admitted ServeRequest.
struct Writer {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  template <class T>
  void vec(const std::vector<T>& v) {
    put(uint32_t(v.size()));
    for (const T& x : v) put(x);
  }
};
struct Reader {
  const std::vector<uint8_t>& b;
  size_t at = 0;
  template <class T>
  T get() {
    T v{};
    if (at + sizeof(T) > b.size()) throw TpError("serving: a truncated step from the leader");
    std::memcpy(&v, b.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  template <class T>
  std::vector<T> vec() {
    const uint32_t n = get<uint32_t>();
    if (uint64_t(n) * sizeof(T) > b.size() - at) throw TpError("serving: a truncated step from the leader");
    std::vector<T> v(n);
    for (T& x : v) x = get<T>();
    return v;
  }
};

void write_request(Writer& w, const ServeRequest& r) {
  w.vec(r.prompt);
  w.put(r.max_tokens);
  w.put(r.sampling.temperature);
  w.put(r.sampling.top_k);
  w.put(r.sampling.top_p);
  w.put(r.seed);
  w.put(int32_t(r.top_logprobs));
  w.put(r.adjust.presence);
  w.put(r.adjust.frequency);
  w.put(uint32_t(r.adjust.bias.size()));
  for (const auto& [id, v] : r.adjust.bias) {
    w.put(id);
    w.put(v);
  }
  w.put(uint8_t(r.prompt_logprobs));
  w.vec(r.eos);
}

ServeRequest read_request(Reader& rd) {
  ServeRequest r;
  r.prompt = rd.vec<int32_t>();
  r.max_tokens = rd.get<int64_t>();
  r.sampling.temperature = rd.get<float>();
  r.sampling.top_k = rd.get<int32_t>();
  r.sampling.top_p = rd.get<float>();
  r.seed = rd.get<uint64_t>();
  r.top_logprobs = rd.get<int32_t>();
  r.adjust.presence = rd.get<float>();
  r.adjust.frequency = rd.get<float>();
  r.adjust.bias.resize(rd.get<uint32_t>());
  for (auto& [id, v] : r.adjust.bias) {
    id = rd.get<int32_t>();
    v = rd.get<float>();
  }
  r.prompt_logprobs = rd.get<uint8_t>() != 0;
  r.eos = rd.vec<int64_t>();
  return r;
}

}  // namespace

Scheduler::Scheduler(Engine& e, SchedulerOptions o)
    : e_(e), o_(o), cache_(o.prefix_cache_bytes, o.block_tokens, e.kv_bytes_per_token()) {
  if (TpComm* tp = e.tp(); tp && tp->size() > 1) {
    tp_ = &tp->host_group();  // its buffers are the host's (on cuda: NCCL's handshake group)
    follower_ = tp->rank() != 0;
  }
  for (int s = e.max_batch() - 1; s >= 0; --s) free_slots_.push_back(s);
  st_.slots = e.max_batch();
  st_.prefix_budget = o.prefix_cache_bytes;
}

Scheduler::~Scheduler() { shutdown(std::chrono::milliseconds(0)); }

void Scheduler::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
}

Result<std::shared_ptr<ServeStream>> Scheduler::submit(ServeRequest r, bool* busy) {
  if (busy) *busy = false;
  SHRINK_CHECK(!follower_, StatusCode::kInvalidInput,
               "a follower rank takes no requests (rank 0 of the tensor-parallel group does)");
  const int64_t V = e_.config().vocab_size, ctx = e_.max_seq_len();
  SHRINK_CHECK(!r.prompt.empty(), StatusCode::kInvalidInput, "the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    SHRINK_CHECK(r.prompt[i] >= 0 && r.prompt[i] < V, StatusCode::kInvalidInput,
                 "prompt token %zu is %d: expected an id in [0, %lld)", i, r.prompt[i],
                 (long long)V);
  }
  SHRINK_CHECK(r.max_tokens >= 0, StatusCode::kInvalidInput, "max_tokens %lld: expected >= 0",
               (long long)r.max_tokens);
  SHRINK_CHECK(int64_t(r.prompt.size()) + r.max_tokens <= ctx, StatusCode::kInvalidInput,
               "the prompt's %zu tokens plus max_tokens %lld exceed the context of %lld tokens",
               r.prompt.size(), (long long)r.max_tokens, (long long)ctx);
  auto s = std::make_shared<ServeStream>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Requests that will wait: those queued beyond the free slots (the thread admits them).
    const int64_t waiting = int64_t(queue_.size()) - int64_t(free_slots_.size());
    if (stopping_ || waiting >= o_.queue_limit) {
      if (busy) *busy = true;
      return Status(StatusCode::kInternal, stopping_ ? "the server is shutting down"
                                                      : "the request queue is full");
    }
    st_.requests++;
    st_.prompt_tokens += r.prompt.size();
    queue_.emplace_back(std::move(r), s);
    st_.queued = int64_t(queue_.size());
  }
  cv_.notify_all();
  return s;
}

void Scheduler::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
    deadline_ = Clock::now() + grace;
    has_deadline_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Anything still queued (the thread never ran, or stopped first) is refused.
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& q : queue_) q.second->finish("cancelled");
  queue_.clear();
}

Status Scheduler::wait_stopped() {
  if (thread_.joinable()) thread_.join();
  return failure();
}

Status Scheduler::failure() const {
  std::lock_guard<std::mutex> lk(mu_);
  return broken_;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return st_;
}

void Scheduler::retire(Active& a, const std::string& reason, const std::string& error) {
  // Keep what the slot holds (prompt and all but the last sampled token) for later requests.
  if (reason != "error") {
    std::vector<int32_t> held = a.req.prompt;
    held.insert(held.end(), a.gen.begin(), a.gen.end());
    const int64_t n = std::min<int64_t>(e_.length(a.slot), int64_t(held.size()));
    (void)cache_.insert(e_, a.slot, held.data(), n);
  }
  e_.reset(a.slot);
  // The slot is free before the client hears that its request ended: a client that sends its
  // next request at once (to a server of one slot and no queue) must find it free, not a 503.
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_slots_.push_back(a.slot);
    st_.finished++;
    if (reason == "cancelled") st_.cancelled++;
    if (reason == "error") st_.errors++;
  }
  a.slot = -1;
  a.out->finish(reason, error);
}

// The iteration's inputs. Alone, or as the leader: wait for work (an idle leader at most a
// heartbeat), then decide the stop, the admissions (queued requests, as many as there are free
// slots) and the cancellations; a leader broadcasts them. A follower receives them.
Status Scheduler::tick(Tick& t) {
  if (!follower_) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      auto ready = [&] {
        return stopping_ || !active_.empty() || (!queue_.empty() && !free_slots_.empty());
      };
      if (tp_) {
        cv_.wait_for(lk, o_.heartbeat, ready);
      } else {
        cv_.wait(lk, ready);
      }
      t.exit = stopping_ && active_.empty();
      t.deadline = !t.exit && stopping_ && has_deadline_ && Clock::now() >= deadline_;
      if (!stopping_) {
        for (size_t n = std::min(free_slots_.size(), queue_.size()); n > 0; --n) {
          t.admitted.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
    }
    for (size_t i = 0; i < active_.size(); ++i)
      if (active_[i]->slot >= 0 && active_[i]->out->cancelled()) t.cancel.push_back(uint32_t(i));
    if (!tp_) return Status::ok();
    Writer w;
    w.put(uint8_t(t.exit));
    w.put(uint8_t(t.deadline));
    w.put(uint32_t(t.admitted.size()));
    for (const auto& a : t.admitted) write_request(w, a.first);
    w.vec(t.cancel);
    try {
      tp_->broadcast(w.b);
    } catch (const TpError& e) {
      return Status(StatusCode::kInternal, std::string("serving step: ") + e.what());
    }
    return Status::ok();
  }
  std::vector<uint8_t> b;
  try {
    tp_->broadcast(b);
    Reader rd{b};
    t.exit = rd.get<uint8_t>() != 0;
    t.deadline = rd.get<uint8_t>() != 0;
    for (uint32_t n = rd.get<uint32_t>(); n > 0; --n)
      t.admitted.emplace_back(read_request(rd), std::make_shared<ServeStream>());
    t.cancel = rd.vec<uint32_t>();
    if (rd.at != b.size()) throw TpError("serving: a step from the leader with trailing bytes");
  } catch (const TpError& e) {
    return Status(StatusCode::kInternal, std::string("serving step: ") + e.what());
  }
  // The ranks' states are equal by construction; a step that says otherwise (ranks started with
  // different --slots, say) stops the group rather than run on a diverged schedule.
  for (uint32_t i : t.cancel)
    SHRINK_CHECK(i < active_.size(), StatusCode::kInternal,
                 "serving step: the leader cancels request %u of %zu", i, active_.size());
  {
    std::lock_guard<std::mutex> lk(mu_);
    SHRINK_CHECK(t.admitted.size() <= free_slots_.size(), StatusCode::kInternal,
                 "serving step: the leader admits %zu requests to this rank's %zu free slots (were "
                 "the ranks started with the same --slots?)",
                 t.admitted.size(), free_slots_.size());
  }
  return Status::ok();
}

// A failed tensor-parallel group: the scheduler stops, and what still waits in the queue ends
// with the error (no caller is left waiting on a request that will never run).
void Scheduler::break_group(const Status& why) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    broken_ = why;
    stopping_ = true;
    for (auto& q : queue_) q.second->finish("error", why.message());
    queue_.clear();
    st_.queued = 0;
  }
  if (o_.on_broken) o_.on_broken();
}

// The admitted requests take free slots in order (the same slots on every rank) and restore
// their cached prefix.
void Scheduler::admit(Tick& t) {
  for (auto& [req, out] : t.admitted) {
    auto a = std::make_unique<Active>(std::move(req), std::move(out));
    {
      std::lock_guard<std::mutex> lk(mu_);
      a->slot = free_slots_.back();
      free_slots_.pop_back();
      st_.queued = int64_t(queue_.size());
    }
    e_.reset(a->slot);
    // Reuse at most prompt - 1 tokens: the last prompt token's forward gives the first logits.
    // Prompt log-probabilities need every position's logits: nothing is reused.
    Result<int64_t> got =
        a->req.prompt_logprobs
            ? Result<int64_t>(int64_t(0))
            : cache_.restore(e_, a->slot, a->req.prompt.data(), int64_t(a->req.prompt.size()) - 1);
    if (!got.is_ok()) {
      e_.reset(a->slot);
      got = int64_t(0);
    }
    a->prefilled = got.value();
    a->out->set_cached(a->prefilled);
    {
      std::lock_guard<std::mutex> lk(mu_);
      st_.cached_tokens += uint64_t(a->prefilled);
    }
    active_.push_back(std::move(a));
  }
}

// Tensor parallelism: every rank's scheduler must make the same decisions, so its options must be
// the leader's; a rank started otherwise stops the group before the first request.
Status Scheduler::handshake() {
  Writer w;
  w.put(int64_t(e_.max_batch()));
  w.put(int64_t(e_.max_seq_len()));
  w.put(int64_t(e_.kv_bytes_per_token()));
  w.put(o_.max_batch_tokens);
  w.put(o_.prefix_cache_bytes);
  w.put(o_.block_tokens);
  std::vector<uint8_t> leader = w.b;
  try {
    tp_->broadcast(leader);
    float differ = leader == w.b ? 0.0f : 1.0f;
    tp_->allreduce_max(&differ, 1);
    SHRINK_CHECK(differ == 0.0f, StatusCode::kInvalidInput,
                 "serve --tp: the ranks were started with different serving options (--slots, "
                 "--ctx, --max-batch-tokens, --prefix-cache-mb or --kv-cache); expected the same "
                 "command on every rank");
  } catch (const TpError& e) {
    return Status(StatusCode::kInternal, std::string("serving handshake: ") + e.what());
  }
  return Status::ok();
}

void Scheduler::loop() {
  if (tp_) {
    Status hs = handshake();
    if (!hs.is_ok()) {
      break_group(hs);
      return;
    }
  }
  for (;;) {
    Tick t;
    Status ts = tick(t);
    if (!ts.is_ok()) {  // the tensor-parallel group failed: every rank stops
      for (auto& a : active_) retire(*a, "error", ts.message());
      active_.clear();
      for (auto& q : t.admitted) q.second->finish("error", ts.message());
      break_group(ts);
      break;
    }
    if (t.exit) break;
    if (t.deadline) {
      for (auto& a : active_) retire(*a, "cancelled");
      active_.clear();
      break;
    }
    admit(t);
    for (uint32_t i : t.cancel) active_[i]->cancel = true;
    if (active_.empty()) continue;  // an idle leader's heartbeat
    Status s = step();
    if (!s.is_ok()) {
      for (auto& a : active_) retire(*a, "error", s.message());
      active_.clear();
      if (tp_) {  // a rank failed mid-step: the group cannot go on
        break_group(s);
        break;
      }
    }
    active_.erase(std::remove_if(active_.begin(), active_.end(),
                                 [](const std::unique_ptr<Active>& a) { return a->slot < 0; }),
                  active_.end());
    std::lock_guard<std::mutex> lk(mu_);
    st_.running = int64_t(active_.size());
    const PrefixCache& c = cache_;
    st_.prefix_lookups = c.lookups();
    st_.prefix_hits = c.hits();
    st_.prefix_bytes = c.bytes();
    st_.prefix_blocks = c.blocks();
    st_.prefix_evictions = c.evictions();
  }
}

namespace {

// log-softmax of one row's entry and its best alternatives (raw logits, before temperature).
void logprobs_of(const float* x, int64_t V, int32_t id, int top, TokenOut& t) {
  const double lse = log_sum_exp(x, V);
  t.logprob = float(double(x[id]) - lse);
  if (top <= 0) return;
  std::vector<int32_t> idx(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) idx[size_t(i)] = int32_t(i);
  const int k = int(std::min<int64_t>(top, V));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return x[a] > x[b] || (x[a] == x[b] && a < b);
  });
  for (int i = 0; i < k; ++i) t.top.emplace_back(idx[size_t(i)], float(double(x[idx[size_t(i)]]) - lse));
}

}  // namespace

Status Scheduler::step() {
  // Cancelled requests leave first.
  for (auto& a : active_)
    if (a->slot >= 0 && a->cancel) retire(*a, "cancelled");
  // Decode rows first (one each), then prompt chunks in arrival order within the row budget.
  std::vector<SeqChunk> chunks;
  std::vector<Active*> who;
  std::vector<bool> picks;  // whether the chunk's next token is taken (a decode row or a prompt's end)
  int64_t budget = std::max<int64_t>(o_.max_batch_tokens, 1);
  for (auto& a : active_) {
    if (a->slot < 0 || a->prefilling()) continue;
    chunks.push_back({a->slot, &a->gen.back(), 1});
    who.push_back(a.get());
    picks.push_back(true);
    --budget;
  }
  for (auto& a : active_) {
    if (a->slot < 0 || !a->prefilling() || budget <= 0) continue;
    const int64_t left = int64_t(a->req.prompt.size()) - a->prefilled;
    const int64_t n = std::min(left, budget);
    chunks.push_back({a->slot, a->req.prompt.data() + a->prefilled, n});
    who.push_back(a.get());
    picks.push_back(n == left && a->req.max_tokens > 0);
    budget -= n;
  }
  if (chunks.empty()) {
    for (auto& a : active_)  // prefill-only requests whose prompt is cached already
      if (a->slot >= 0 && !a->prefilling()) retire(*a, "length");
    return Status::ok();
  }
  // Each picking row draws from its request's sampler, as generate() does; other rows pick
  // nothing and draw nothing.
  std::vector<core::SampleRow> rows(chunks.size());
  bool want_logits = false, all_rows = false;
  for (size_t i = 0; i < chunks.size(); ++i) {
    all_rows = all_rows || (who[i]->req.prompt_logprobs && who[i]->prefilling());
    if (!picks[i]) continue;
    rows[i] = who[i]->sampler.next_row();
    want_logits = want_logits || who[i]->req.top_logprobs >= 0 || who[i]->req.adjust.on();
  }
  const int64_t V = e_.config().vocab_size;
  // Row of chunk i's first position in logits_: every position's with all_rows, else its last.
  std::vector<int64_t> first_row(chunks.size() + 1, 0);
  for (size_t i = 0; i < chunks.size(); ++i) first_row[i + 1] = first_row[i] + (all_rows ? chunks[i].n : 1);
  auto last_row = [&](size_t i) { return first_row[i + 1] - 1; };
  if (want_logits || all_rows) {
    SHRINK_RETURN_IF_ERROR(e_.forward(chunks, all_rows, logits_));
    next_.assign(chunks.size(), 0);
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (!picks[i]) continue;
      const float* x = logits_.data() + last_row(i) * V;
      if (who[i]->req.adjust.on()) {  // on a copy: log-probabilities stay the model's
        adjusted_.assign(x, x + V);
        core::logits_adjust(adjusted_.data(), V, who[i]->req.adjust, who[i]->counts);
        x = adjusted_.data();
      }
      next_[i] = core::sample_pick(x, V, rows[i], scratch_);
    }
  } else {
    SHRINK_RETURN_IF_ERROR(e_.forward_sample(chunks, rows, next_));
  }
  uint64_t rows_run = 0, prefill_rows = 0, generated = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Active& a = *who[i];
    rows_run += uint64_t(chunks[i].n);
    if (a.prefilling()) {
      if (a.req.prompt_logprobs) {  // row r scores prompt token prefilled + r + 1
        const int64_t P = int64_t(a.req.prompt.size());
        for (int64_t r = 0; r < chunks[i].n && a.prefilled + r + 1 < P; ++r) {
          TokenOut t;
          t.id = a.req.prompt[size_t(a.prefilled + r + 1)];
          logprobs_of(logits_.data() + (first_row[i] + r) * V, V, t.id, a.req.top_logprobs, t);
          a.prompt_lp.push_back(std::move(t));
        }
      }
      a.prefilled += chunks[i].n;
      prefill_rows += uint64_t(chunks[i].n);
      if (!a.prefilling()) {
        if (a.req.prompt_logprobs) a.out->set_prompt_logprobs(std::move(a.prompt_lp));
        (void)cache_.insert(e_, a.slot, a.req.prompt.data(), int64_t(a.req.prompt.size()));
        if (a.req.max_tokens == 0) {
          retire(a, "length");
          continue;
        }
      }
    }
    if (!picks[i]) continue;
    TokenOut t;
    t.id = next_[i];
    if (a.req.top_logprobs >= 0)
      logprobs_of(logits_.data() + last_row(i) * V, V, t.id, a.req.top_logprobs, t);
    a.gen.push_back(t.id);
    if (a.req.adjust.on()) ++a.counts[t.id];
    a.out->push(std::move(t));
    ++generated;
    const bool eos = std::find(a.req.eos.begin(), a.req.eos.end(), int64_t(a.gen.back())) != a.req.eos.end();
    if (eos) {
      retire(a, "stop");
    } else if (int64_t(a.gen.size()) >= a.req.max_tokens || e_.length(a.slot) >= e_.max_seq_len()) {
      retire(a, "length");
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  st_.steps++;
  st_.step_rows += rows_run;
  st_.prefill_tokens += prefill_rows;
  st_.generated_tokens += generated;
  return Status::ok();
}

}  // namespace shrink::runtime
