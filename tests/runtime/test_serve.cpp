// Serving: the engine's KV export/import, the prefix cache, the continuous-batching scheduler
// against runtime::generate run alone, and the OpenAI protocol's text side (stop strings,
// UTF-8 boundaries, request validation). The HTTP server end to end: tests/cli/test_serve.sh.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "core/launch.h"
#include "core/tokenizer.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/prefix_cache.h"
#include "runtime/scheduler.h"
#include "runtime/serve/openai.h"
#include "tests/runtime/serve_check.h"
#include "tests/runtime/util.h"

namespace shrink::runtime {
namespace {

const std::string kTeacher = std::string(SHRINK_SOURCE_DIR) + "/models/teacher";

using test::ids_for;

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Rank r of a 2-rank shm group's share of the teacher (in fp32 arithmetic, as teacher()).
std::unique_ptr<Engine> tp_teacher(int r, int port, int slots, int64_t ctx) {
  auto comm = test::tp_join_local(r, 2, port, "shm");
  EXPECT_TRUE(comm.is_ok()) << comm.status().message();
  if (!comm.is_ok()) return nullptr;
  EngineOptions o;
  o.max_batch = slots;
  o.max_seq_len = ctx;
  o.float_weights = "exact";
  o.tp = comm.value();
  auto e = Engine::load(kTeacher, o);
  EXPECT_TRUE(e.is_ok()) << e.status().message();
  return e.is_ok() ? std::move(e).value() : nullptr;
}

// Every token of a submitted request, once it has ended.
std::vector<TokenOut> drain(const std::shared_ptr<ServeStream>& s) {
  std::vector<TokenOut> got;
  while (!s->wait(0, got, std::chrono::milliseconds(100))) {
  }
  s->wait(0, got, std::chrono::milliseconds(0));
  return got;
}

std::unique_ptr<Engine> teacher(int slots, const std::string& kv = "f32", int64_t ctx = 256) {
  EngineOptions o;
  o.max_batch = slots;
  o.max_seq_len = ctx;
  o.kv_cache = kv;
  // The teacher is bf16: in fp32 arithmetic, so that batched and alone differ by summation
  // order only (bf16 activations would turn those differences into rounding flips).
  o.float_weights = "exact";
  auto e = Engine::load(kTeacher, o);
  EXPECT_TRUE(e.is_ok()) << e.status().message();
  return e.is_ok() ? std::move(e).value() : nullptr;
}

// Rows exported from one slot and imported into another give that slot the same next logits,
// bit for bit (the same bytes feed the same attention), for every cache storage; and they agree
// with a fresh prefill of the whole prompt to float rounding.
TEST(Serve, KvExportImportReusesRowsExactly) {
  for (const char* kv : {"f32", "f16", "int8"}) {
    SCOPED_TRACE(kv);
    auto e = teacher(3, kv);
    ASSERT_TRUE(e);
    const int64_t V = e->config().vocab_size;
    const std::vector<int32_t> p = ids_for(40, int32_t(V), 7);
    std::vector<float> a, b, c;
    ASSERT_TRUE(e->forward({{0, p.data(), 32}}, false, a).is_ok());
    // Import in two pieces, as the prefix cache restores block by block (each piece is
    // layer-major: its own export).
    const size_t half = size_t(16 * e->kv_bytes_per_token());
    std::vector<uint8_t> first(half), second(half);
    ASSERT_TRUE(e->kv_export(0, 0, 16, first.data()).is_ok());
    ASSERT_TRUE(e->kv_export(0, 16, 16, second.data()).is_ok());
    ASSERT_TRUE(e->kv_import(1, 0, 16, first.data()).is_ok());
    ASSERT_TRUE(e->kv_import(1, 16, 16, second.data()).is_ok());
    std::vector<uint8_t>& rows = first;
    EXPECT_EQ(e->length(1), 32);
    ASSERT_TRUE(e->forward({{0, p.data() + 32, 8}}, false, a).is_ok());
    ASSERT_TRUE(e->forward({{1, p.data() + 32, 8}}, false, b).is_ok());
    EXPECT_EQ(max_abs_diff(a.data(), b.data(), V), 0.0f);
    ASSERT_TRUE(e->forward({{2, p.data(), 40}}, false, c).is_ok());
    EXPECT_LE(max_abs_diff(a.data(), c.data(), V), 1e-4f);
    // The comparison sees the rows: the same import with the second block's bytes swapped
    // for the first's changes the logits.
    e->reset(1);
    ASSERT_TRUE(e->kv_import(1, 0, 16, first.data()).is_ok());
    ASSERT_TRUE(e->kv_import(1, 16, 16, first.data()).is_ok());
    ASSERT_TRUE(e->forward({{1, p.data() + 32, 8}}, false, b).is_ok());
    EXPECT_GT(max_abs_diff(a.data(), b.data(), V), 1e-3f);
    // Bad ranges are refused, naming the slot.
    EXPECT_FALSE(e->kv_export(0, 30, 20, rows.data()).is_ok());  // slot 0 holds 40
    EXPECT_FALSE(e->kv_import(1, 0, 4, rows.data()).is_ok());  // slot 1 is not empty
    EXPECT_FALSE(e->kv_import(7, 0, 4, rows.data()).is_ok());
  }
}

TEST(Serve, PrefixCacheRestoresWholeBlocksAndEvictsByBytes) {
  auto e = teacher(2);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  const uint64_t per_token = e->kv_bytes_per_token();
  const std::vector<int32_t> p = ids_for(50, int32_t(V), 3);
  std::vector<float> logits;
  ASSERT_TRUE(e->forward({{0, p.data(), 50}}, false, logits).is_ok());
  // Budget for exactly 3 blocks of 16 tokens.
  PrefixCache cache(3 * 16 * per_token, 16, per_token);
  ASSERT_TRUE(cache.insert(*e, 0, p.data(), 50).is_ok());
  EXPECT_EQ(cache.blocks(), 3);  // 50 tokens: 3 whole blocks
  EXPECT_EQ(cache.bytes(), 3 * 16 * per_token);
  // A prompt sharing 40 tokens restores 32 (two whole blocks), and the rows are right.
  std::vector<int32_t> q(p.begin(), p.begin() + 40);
  q.push_back(int32_t((p[40] + 1) % V));
  Result<int64_t> got = cache.restore(*e, 1, q.data(), int64_t(q.size()) - 1);
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got.value(), 32);
  EXPECT_EQ(e->length(1), 32);
  std::vector<float> a, b;
  ASSERT_TRUE(e->forward({{1, q.data() + 32, int64_t(q.size()) - 32}}, false, a).is_ok());
  e->reset(1);
  ASSERT_TRUE(e->forward({{1, q.data(), int64_t(q.size())}}, false, b).is_ok());
  EXPECT_LE(max_abs_diff(a.data(), b.data(), V), 1e-4f);
  // A different first block misses entirely.
  e->reset(1);
  std::vector<int32_t> r = p;
  r[0] = (r[0] + 1) % int32_t(V);
  EXPECT_EQ(cache.restore(*e, 1, r.data(), 49).value(), 0);
  EXPECT_EQ(e->length(1), 0);
  // Inserting another 2-block chain evicts the least recently used blocks: the first chain's tail.
  e->reset(1);
  ASSERT_TRUE(e->forward({{1, r.data(), 33}}, false, a).is_ok());
  ASSERT_TRUE(cache.insert(*e, 1, r.data(), 33).is_ok());
  EXPECT_EQ(cache.blocks(), 3);
  EXPECT_EQ(cache.evictions(), 2u);
  e->reset(1);
  EXPECT_EQ(cache.restore(*e, 1, p.data(), 49).value(), 16);  // its head survived
  e->reset(1);
  EXPECT_EQ(cache.restore(*e, 1, r.data(), 33).value(), 32);
  EXPECT_EQ(cache.hits(), 3u);
}

// Requests served concurrently (greedy and seeded sampling, different prompt lengths, prompts
// chunked over several steps, the prefix cache on and a second round that hits it) give the
// tokens that runtime::generate gives each alone.
TEST(Serve, SchedulerBatchesEqualGenerateAlone) {
  auto alone = teacher(1);
  auto served = teacher(4);
  ASSERT_TRUE(alone && served);
  test::expect_scheduler_equals_generate(*alone, *served, 64u << 20);
}

// Under tensor parallelism every rank runs a scheduler in lockstep with rank 0's (which alone
// takes requests): rank 0 serves the tokens of runtime::generate in one process, greedy and
// sampled, with log-probabilities, a cancelled request and prefix-cache hits (each rank exports
// and imports its own KV heads) in between, and the follower stops when rank 0 does.
TEST(Serve, TensorParallelSchedulersRunInLockstep) {
  auto alone = teacher(1);
  ASSERT_TRUE(alone);
  const int64_t V = alone->config().vocab_size;
  const std::vector<int32_t> shared = ids_for(40, int32_t(V), 21);
  std::vector<ServeRequest> reqs;
  for (int i = 0; i < 5; ++i) {
    ServeRequest r;
    r.prompt = i % 2 ? shared : std::vector<int32_t>();
    auto own = ids_for(6 + 7 * i, int32_t(V), 200 + uint32_t(i));
    r.prompt.insert(r.prompt.end(), own.begin(), own.end());
    if (i % 3 == 1) r.sampling.temperature = 0.9f, r.sampling.top_k = 40;
    if (i % 3 == 2) r.sampling.temperature = 1.1f, r.sampling.top_p = 0.9f;
    r.seed = uint64_t(500 + i);
    r.max_tokens = 10 + i;
    r.top_logprobs = i == 0 ? 2 : -1;
    reqs.push_back(r);
  }
  std::vector<std::vector<int32_t>> want;
  for (const ServeRequest& r : reqs) {
    GenerateOptions g;
    g.max_new_tokens = r.max_tokens;
    g.sampling = r.sampling;
    g.seed = r.seed;
    g.stop_at_eos = false;
    auto out = generate(*alone, r.prompt, g);
    ASSERT_TRUE(out.is_ok()) << out.status().message();
    want.emplace_back(out.value().ids.begin() + out.value().prompt_len, out.value().ids.end());
  }
  const int port = core::tcp_port_free().take_or_throw();
  std::vector<std::vector<int32_t>> got(reqs.size());
  std::vector<int64_t> cached(reqs.size(), -1);
  std::string cancelled_reason, follower_status = "not run";
  auto rank = [&](int r) {
    auto e = tp_teacher(r, port, 3, 256);
    ASSERT_TRUE(e);
    SchedulerOptions so;
    so.max_batch_tokens = 20;
    so.prefix_cache_bytes = 16u << 20;
    so.heartbeat = std::chrono::milliseconds(20);
    Scheduler sched(*e, so);
    sched.start();
    if (sched.follower()) {
      EXPECT_FALSE(sched.submit(reqs[0]).is_ok());  // only rank 0 takes requests
      follower_status = sched.wait_stopped().message();
      return;
    }
    // A long request cancelled at once, then the rest, twice (the second round hits the cache).
    ServeRequest longr = reqs[0];
    longr.max_tokens = 200;
    auto c = sched.submit(longr);
    ASSERT_TRUE(c.is_ok());
    (*c)->cancel();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // idle: heartbeats only
    for (int round = 0; round < 2; ++round) {
      std::vector<std::shared_ptr<ServeStream>> streams;
      for (const ServeRequest& q : reqs) streams.push_back(sched.submit(q).take_or_throw());
      for (size_t i = 0; i < reqs.size(); ++i) {
        got[i].clear();
        for (const TokenOut& t : drain(streams[i])) got[i].push_back(t.id);
        if (round == 1) cached[i] = streams[i]->cached_tokens();
      }
    }
    drain(*c);
    cancelled_reason = (*c)->finish_reason();
    sched.shutdown(std::chrono::milliseconds(1000));
    EXPECT_TRUE(sched.failure().is_ok()) << sched.failure().message();
  };
  std::thread t1(rank, 1);
  rank(0);
  t1.join();
  EXPECT_EQ(follower_status, "");
  EXPECT_EQ(cancelled_reason, "cancelled");
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << "request " << i;
    if (reqs[i].prompt.size() > 16) EXPECT_GE(cached[i], 16) << "request " << i;
  }
}

// Ranks whose serving options differ would schedule differently: the group stops at start,
// every rank saying why (exit 2 from `serve`).
TEST(Serve, TensorParallelRanksWithDifferentOptionsStop) {
  const int port = core::tcp_port_free().take_or_throw();
  std::string why[2];
  auto rank = [&](int r) {
    auto e = tp_teacher(r, port, 2, 128);
    ASSERT_TRUE(e);
    SchedulerOptions so;
    so.max_batch_tokens = r == 0 ? 32 : 16;  // rank 1 started with another --max-batch-tokens
    Scheduler sched(*e, so);
    sched.start();
    if (sched.follower()) {
      why[r] = sched.wait_stopped().message();
      return;
    }
    for (int i = 0; i < 200 && sched.failure().is_ok(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    why[r] = sched.failure().message();
    ServeRequest q;
    q.prompt = {1, 2, 3};
    EXPECT_FALSE(sched.submit(q).is_ok());
  };
  std::thread t1(rank, 1);
  rank(0);
  t1.join();
  for (int r = 0; r < 2; ++r)
    EXPECT_NE(why[r].find("the ranks were started with different serving options"), std::string::npos)
        << "rank " << r << ": " << why[r];
}

TEST(Serve, SchedulerStopsAtEosCancelsAndRefusesWhatDoesNotFit) {
  auto e = teacher(2, "f32", 64);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  // The greedy continuation's third token, declared an end token, stops the request there.
  auto alone = teacher(1, "f32", 64);
  GenerateOptions g;
  g.max_new_tokens = 8;
  g.stop_at_eos = false;
  const std::vector<int32_t> p = ids_for(9, int32_t(V), 5);
  auto r = generate(*alone, p, g);
  ASSERT_TRUE(r.is_ok());
  const int32_t third = r.value().ids[size_t(r.value().prompt_len) + 2];
  SchedulerOptions so;
  so.queue_limit = 1;
  Scheduler sched(*e, so);  // 2 slots, 1 request may wait
  ServeRequest q;
  q.prompt = p;
  q.max_tokens = 8;
  q.eos = {third};
  // Before start(): two requests have slots, a third waits, a fourth is refused as busy.
  auto s1 = sched.submit(q);
  ASSERT_TRUE(s1.is_ok());
  ASSERT_TRUE(sched.submit(q).is_ok());
  ASSERT_TRUE(sched.submit(q).is_ok());
  bool busy = false;
  EXPECT_FALSE(sched.submit(q, &busy).is_ok());
  EXPECT_TRUE(busy);
  sched.start();
  std::vector<TokenOut> got;
  while (!s1.value()->wait(0, got, std::chrono::milliseconds(100))) {
  }
  s1.value()->wait(0, got, std::chrono::milliseconds(0));
  int64_t first_third = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i].id == third) { first_third = int64_t(i); break; }
  EXPECT_EQ(int64_t(got.size()), first_third + 1);
  EXPECT_EQ(s1.value()->finish_reason(), "stop");
  // Too long for the context, out-of-vocabulary ids, an empty prompt: refused, not busy.
  ServeRequest big;
  big.prompt = ids_for(60, int32_t(V), 1);
  big.max_tokens = 10;
  auto sb = sched.submit(big, &busy);
  ASSERT_FALSE(sb.is_ok());
  EXPECT_FALSE(busy);
  EXPECT_NE(sb.status().message().find("exceed the context of 64"), std::string::npos);
  ServeRequest oov;
  oov.prompt = {1, int32_t(V)};
  EXPECT_FALSE(sched.submit(oov).is_ok());
  EXPECT_FALSE(sched.submit(ServeRequest{}).is_ok());
  // A cancelled request ends "cancelled" and frees its slot.
  ServeRequest longer;
  longer.prompt = p;
  longer.max_tokens = 50;
  auto s2 = sched.submit(longer);
  ASSERT_TRUE(s2.is_ok());
  s2.value()->cancel();
  while (!s2.value()->wait(0, got, std::chrono::milliseconds(100))) {
  }
  EXPECT_EQ(s2.value()->finish_reason(), "cancelled");
  sched.shutdown(std::chrono::milliseconds(1000));
  EXPECT_EQ(sched.stats().running, 0);
}

// A request's end reaches its client only once its slot is free: with one slot and no waiting
// room, a client that sends its next request the moment the last one ended is served, never
// refused as busy (serve_check's --warm request lost this race under load and got a 503).
TEST(Serve, ASlotIsFreeOnceItsRequestHasEnded) {
  auto e = teacher(1, "f32", 64);
  ASSERT_TRUE(e);
  SchedulerOptions so;
  so.queue_limit = 0;
  Scheduler sched(*e, so);
  sched.start();
  ServeRequest q;
  q.prompt = ids_for(4, int32_t(e->config().vocab_size), 3);
  q.max_tokens = 1;
  for (int i = 0; i < 200; ++i) {
    bool busy = false;
    auto s = sched.submit(q, &busy);
    ASSERT_TRUE(s.is_ok()) << "request " << i << (busy ? ": refused as busy" : "") << ": "
                           << s.status().message();
    std::vector<TokenOut> got;
    while (!s.value()->wait(0, got, std::chrono::milliseconds(100))) {
    }
  }
  sched.shutdown(std::chrono::milliseconds(1000));
  EXPECT_EQ(sched.stats().finished, 200u);
}

// Logit bias and penalties act on the pick, not on the reported log-probabilities: -100 on the
// greedy first token makes the runner-up (from the unbiased run's top log-probabilities) the
// first token, +100 on a token makes every token that one; with a frequency penalty each greedy
// pick is the argmax of the raw top-20 log-probabilities minus 2 x its count so far (checked
// where that argmax beats the 20th raw value, so no token outside the list can win).
TEST(Serve, LogitBiasAndPenaltiesChangeThePickNotTheLogprobs) {
  auto e = teacher(2, "f32", 64);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  Scheduler sched(*e, SchedulerOptions{});
  sched.start();
  auto run = [&](ServeRequest q) {
    auto s = sched.submit(std::move(q));
    EXPECT_TRUE(s.is_ok());
    return drain(s.value());
  };
  ServeRequest q;
  q.prompt = ids_for(7, int32_t(V), 11);
  q.max_tokens = 12;
  q.top_logprobs = 20;
  const std::vector<TokenOut> plain = run(q);
  ASSERT_EQ(plain.size(), 12u);
  ServeRequest down = q;
  down.adjust.bias = {{plain[0].id, -100.0f}};
  const std::vector<TokenOut> d = run(down);
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d[0].id, plain[0].top[1].first);
  EXPECT_FLOAT_EQ(d[0].top[0].second, plain[0].top[0].second);  // the model's own
  ServeRequest up = q;
  const int32_t forced = int32_t((plain[0].id + 17) % V);
  up.adjust.bias = {{forced, 100.0f}};
  for (const TokenOut& t : run(up)) EXPECT_EQ(t.id, forced);
  ServeRequest pen = q;
  pen.adjust.frequency = 2.0f;
  const std::vector<TokenOut> p = run(pen);
  std::map<int32_t, int> counts;
  int checked = 0;
  for (const TokenOut& t : p) {
    ASSERT_EQ(t.top.size(), 20u);
    int32_t best = -1;
    float best_v = -INFINITY;
    for (const auto& [id, lp] : t.top) {
      const float v = lp - 2.0f * float(counts[id]);
      if (v > best_v) best_v = v, best = id;
    }
    if (best_v > t.top.back().second) {
      EXPECT_EQ(t.id, best);
      ++checked;
    }
    ++counts[t.id];
  }
  EXPECT_GE(checked, 6);
  int distinct = 0;
  for (const auto& kv : counts) distinct += kv.second > 0;
  EXPECT_GT(distinct, 1);
  sched.shutdown(std::chrono::milliseconds(1000));
}

// Prompt log-probabilities (echo with logprobs): scored in chunks of 5 rows beside another
// request, they equal the log-softmax of one whole-prompt forward on a fresh engine, row p - 1
// for token p, to float rounding (1e-4: the batched products' summation order); the prefix cache
// is bypassed (nothing restored although the prompt was served before), and the generated
// tokens are still the greedy continuation.
TEST(Serve, PromptLogprobsEqualOneWholeForward) {
  auto e = teacher(2, "f32", 64);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  const std::vector<int32_t> p = ids_for(13, int32_t(V), 21);
  auto alone = teacher(1, "f32", 64);
  std::vector<float> all;
  ASSERT_TRUE(alone->forward({SeqChunk{0, p.data(), int64_t(p.size())}}, true, all).is_ok());
  ASSERT_EQ(int64_t(all.size()), int64_t(p.size()) * V);
  SchedulerOptions so;
  so.max_batch_tokens = 6;  // the other request's decode row + chunks of 5
  so.prefix_cache_bytes = 1 << 20;
  so.block_tokens = 4;
  Scheduler sched(*e, so);
  sched.start();
  ServeRequest warm;
  warm.prompt = p;
  warm.max_tokens = 2;
  drain(sched.submit(warm).value());  // the prompt is now in the prefix cache
  ServeRequest other;
  other.prompt = ids_for(4, int32_t(V), 3);
  other.max_tokens = 20;
  auto so2 = sched.submit(other);
  ServeRequest q;
  q.prompt = p;
  q.max_tokens = 3;
  q.top_logprobs = 2;
  q.prompt_logprobs = true;
  auto s = sched.submit(q);
  ASSERT_TRUE(s.is_ok());
  const std::vector<TokenOut> gen = drain(s.value());
  EXPECT_EQ(s.value()->cached_tokens(), 0);
  const std::vector<TokenOut> lp = s.value()->prompt_logprobs();
  ASSERT_EQ(lp.size(), p.size() - 1);
  for (size_t i = 1; i < p.size(); ++i) {
    const float* x = all.data() + int64_t(i - 1) * V;
    double m = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, double(x[v]));
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(x[v]) - m);
    const double want = double(x[p[i]]) - m - std::log(z);
    EXPECT_EQ(lp[i - 1].id, p[i]);
    EXPECT_NEAR(lp[i - 1].logprob, want, 1e-4) << "prompt token " << i;
    ASSERT_EQ(lp[i - 1].top.size(), 2u);
    EXPECT_EQ(lp[i - 1].top[0].first, core::argmax(x, V));
  }
  ASSERT_EQ(gen.size(), 3u);
  EXPECT_EQ(gen[0].id, core::argmax(all.data() + int64_t(p.size() - 1) * V, V));
  drain(so2.value());
  sched.shutdown(std::chrono::milliseconds(1000));
}

// ---- the protocol's text side ---------------------------------------------------------------

TEST(Serve, TextStreamHoldsBackStopPrefixesAndPartialCharacters) {
  auto tok = core::Tokenizer::load(kTeacher + "/tokenizer.json");
  ASSERT_TRUE(tok.is_ok());
  const core::Tokenizer& t = tok.value();
  const std::vector<int32_t> ids = t.encode("Hello world. The end is near.", false);
  ASSERT_GE(ids.size(), 4u);
  auto toks = [](const std::vector<int32_t>& v) {
    std::vector<TokenOut> o;
    for (int32_t id : v) o.push_back({id, 0, {}});
    return o;
  };
  // No stop strings: the text arrives token by token and adds up to the decode of all.
  serve::TextStream plain(&t, {});
  std::string acc;
  for (size_t i = 0; i < ids.size(); ++i) acc += plain.push(toks({ids[i]}), i + 1 == ids.size());
  EXPECT_EQ(acc, t.decode(ids, true));
  // A stop string spanning tokens: the text ends before it, the rest is never sent.
  serve::TextStream st(&t, {"end is"});
  acc.clear();
  for (size_t i = 0; i < ids.size() && !st.stopped(); ++i) acc += st.push(toks({ids[i]}), false);
  EXPECT_TRUE(st.stopped());
  EXPECT_EQ(acc, "Hello world. The ");
  EXPECT_EQ(st.text(), acc);
  // A multi-byte character split over two byte tokens is held back until complete.
  const std::vector<int32_t> e_acute = t.encode("\xC3\xA9", false);  // é
  if (e_acute.size() == 2) {
    serve::TextStream u(&t, {});
    EXPECT_EQ(u.push(toks({e_acute[0]}), false), "");
    EXPECT_EQ(u.push(toks({e_acute[1]}), false), "\xC3\xA9");
  } else {
    GTEST_LOG_(INFO) << "é is one token in this tokenizer: the split case is not exercised";
  }
}

TEST(Serve, CompletionRequestsAreValidatedWithTheirPath) {
  auto tok = core::Tokenizer::load(kTeacher + "/tokenizer.json");
  ASSERT_TRUE(tok.is_ok());
  serve::CompletionRequest q;
  auto parse = [&](const std::string& body) {
    return serve::parse_completion(body, &tok.value(), "teacher", 4096, 64, q);
  };
  EXPECT_FALSE(parse(R"({"prompt":"hi","max_tokens":3,"temperature":0,"stop":["x"],"seed":4})"));
  EXPECT_EQ(q.max_tokens, 3);
  EXPECT_EQ(q.sampling.temperature, 0.0f);
  EXPECT_EQ(q.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(q.prompt, tok.value().encode("hi", true));
  EXPECT_FALSE(parse(R"({"prompt":[[1,2,3]]})"));
  EXPECT_EQ(q.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(q.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_EQ(q.max_tokens, 16);
  EXPECT_FALSE(parse(R"({"prompt":[1],"logit_bias":{"9":-100,"3":2.5},"presence_penalty":0.5,"frequency_penalty":-1})"));
  EXPECT_EQ(q.adjust.bias, (std::vector<std::pair<int32_t, float>>{{3, 2.5f}, {9, -100.0f}}));
  EXPECT_EQ(q.adjust.presence, 0.5f);
  EXPECT_EQ(q.adjust.frequency, -1.0f);
  EXPECT_EQ(q.n, 1);
  EXPECT_FALSE(parse(R"({"prompt":[1],"n":3})"));
  EXPECT_EQ(q.n, 3);
  struct Bad {
    const char* body;
    int status;
    const char* param;
    const char* says;
  };
  for (const Bad& b : std::vector<Bad>{
           {"{", 400, "", "not valid JSON"},
           {"[1]", 400, "", "expected a JSON object"},
           {R"({"max_tokens":3})", 400, "prompt", "required"},
           {R"({"prompt":"x","max_tokens":"3"})", 400, "max_tokens", "expected an integer, got a string"},
           {R"({"prompt":"x","max_tokens":-1})", 400, "max_tokens", "[0, 64]"},
           {R"({"prompt":"x","temperature":3})", 400, "temperature", "[0, 2]"},
           {R"({"prompt":"x","top_p":0})", 400, "top_p", "(0, 1]"},
           {R"({"prompt":[1,99999]})", 400, "prompt[1]", "outside the vocabulary"},
           {R"({"prompt":"x","n":17})", 400, "n", "[1, 16]"},
           {R"({"prompt":"x","stop":[1]})", 400, "stop[0]", "expected a string"},
           {R"({"prompt":"x","stream":"yes"})", 400, "stream", "expected a boolean"},
           {R"({"prompt":"x","model":"gpt-4"})", 404, "model", "does not exist"},
           {R"({"prompt":[1,2,3],"max_tokens":62})", 400, "max_tokens", "maximum context length is 64"},
           {R"({"prompt":"x","logprobs":21})", 400, "logprobs", "[0, 20]"},
           {R"({"prompt":"x","presence_penalty":2.5})", 400, "presence_penalty", "[-2, 2]"},
           {R"({"prompt":"x","logit_bias":{"abc":1}})", 400, "logit_bias.abc", "token id in [0, 4096)"},
           {R"({"prompt":"x","logit_bias":{"4096":1}})", 400, "logit_bias.4096", "token id"},
           {R"({"prompt":"x","logit_bias":{"5":"1"}})", 400, "logit_bias.5", "expected a number"},
           {R"({"prompt":"x","logit_bias":{"5":101}})", 400, "logit_bias.5", "[-100, 100]"},
           {R"({"prompt":"x","stream_options":{"include_usage":true}})", 400, "stream_options", "stream: true"},
       }) {
    SCOPED_TRACE(b.body);
    auto e = parse(b.body);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->status, b.status);
    EXPECT_EQ(e->param, b.param);
    EXPECT_NE(e->message.find(b.says), std::string::npos) << e->message;
  }
  // Text prompts need a tokenizer.
  auto e = serve::parse_completion(R"({"prompt":"x"})", nullptr, "teacher", 4096, 64, q);
  ASSERT_TRUE(e);
  EXPECT_NE(e->message.find("token ids"), std::string::npos);
}

TEST(Serve, ChatRequestsRenderTheTemplateAndNameBadMessages) {
  auto tok = core::Tokenizer::load(kTeacher + "/tokenizer.json");
  ASSERT_TRUE(tok.is_ok());
  core::ChatTemplate ct;
  ct.tmpl = core::JinjaTemplate::parse(
                "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
                "<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
                "t")
                .take_or_throw();
  serve::CompletionRequest q;
  auto parse = [&](const std::string& body, const core::ChatTemplate* t) {
    return serve::parse_chat(body, &tok.value(), t, "teacher", 4096, 256, q);
  };
  ASSERT_FALSE(parse(R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_completion_tokens":5,"logprobs":true,"top_logprobs":3})", &ct));
  EXPECT_EQ(q.prompt_text, "<user>a\nb\n<assistant>");
  EXPECT_EQ(q.prompt, tok.value().encode("<user>a\nb\n<assistant>", false));
  EXPECT_EQ(q.max_tokens, 5);
  EXPECT_EQ(q.logprobs, 3);
  EXPECT_TRUE(q.chat);
  ASSERT_FALSE(parse(R"({"messages":[{"role":"user","content":"x"}],"add_generation_prompt":false})", &ct));
  EXPECT_EQ(q.prompt_text, "<user>x\n");
  EXPECT_EQ(q.logprobs, -1);
  struct Bad {
    const char* body;
    const char* param;
    const char* says;
  };
  for (const Bad& b : std::vector<Bad>{
           {R"({"messages":[]})", "messages", "non-empty array"},
           {R"({"messages":[{"content":"x"}]})", "messages[0].role", "required"},
           {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content", "expected a string or an array"},
           {R"({"messages":[{"role":"user","content":"x"},{"role":"tool","content":"y"}]})", "messages", "refused them: no tools"},
           {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", "top_logprobs", "logprobs: true"},
           {R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":300})", "max_completion_tokens", "[0, 256]"},
       }) {
    SCOPED_TRACE(b.body);
    auto e = parse(b.body, &ct);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->status, 400);
    EXPECT_EQ(e->param, b.param);
    EXPECT_NE(e->message.find(b.says), std::string::npos) << e->message;
  }
  auto none = parse(R"({"messages":[{"role":"user","content":"x"}]})", nullptr);
  ASSERT_TRUE(none.has_value());
  EXPECT_NE(none->message.find("no chat template"), std::string::npos);
  // Nesting is capped before anything copies the body (a copy recurses once per level).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto nested = parse(R"({"messages":[{"role":"user","content":"x","extra":)" + deep + "}]}", &ct);
  ASSERT_TRUE(nested.has_value());
  EXPECT_EQ(nested->status, 400);
  EXPECT_EQ(nested->message, "the body:1:112: JSON nested deeper than 64 levels; expected at most 64");
  // Tool-call arguments nested too deep stay the text they came as.
  core::ChatTemplate args_ct;
  args_ct.tmpl = core::JinjaTemplate::parse("{{ messages[0].tool_calls[0].function.arguments is string }}", "a").take_or_throw();
  const std::string call = R"({"messages":[{"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":")";
  ASSERT_FALSE(parse(call + deep + R"("}}]}]})", &args_ct));
  EXPECT_EQ(q.prompt_text, "True");
  ASSERT_FALSE(parse(call + R"([[1]]"}}]}]})", &args_ct));
  EXPECT_EQ(q.prompt_text, "False");
}

TEST(Serve, ResponseCacheKeysOnlyDeterministicRequestsAndEvictsLru) {
  serve::CompletionRequest a;
  a.prompt = {1, 2};
  a.sampling.temperature = 0.7f;
  EXPECT_EQ(serve::ResponseCache::key(a), "");  // sampled without a seed
  a.seed = 5;
  const std::string k1 = serve::ResponseCache::key(a);
  EXPECT_NE(k1, "");
  a.seed = 6;
  EXPECT_NE(serve::ResponseCache::key(a), k1);
  serve::CompletionRequest g;
  g.prompt = {1, 2};
  g.sampling.temperature = 0;
  g.seed = 9;  // the seed does not matter when greedy
  serve::CompletionRequest g2 = g;
  g2.seed.reset();
  EXPECT_EQ(serve::ResponseCache::key(g), serve::ResponseCache::key(g2));
  serve::ResponseCache c(2);
  c.put("a", 1);
  c.put("b", 2);
  EXPECT_EQ(c.get("a").value(), 1);  // a is now newer than b
  c.put("c", 3);
  EXPECT_FALSE(c.get("b").has_value());
  EXPECT_TRUE(c.get("a").has_value());
  EXPECT_EQ(c.hits(), 2u);
  EXPECT_EQ(c.misses(), 1u);
}

}  // namespace
}  // namespace shrink::runtime
