// The serving check both backends run (tests/runtime/test_serve.cpp on the CPU,
// tests/cuda/test_serve_cuda.cpp on the GPU): requests served concurrently by the continuous-
// batching scheduler, greedy and seeded-sampled, some sharing a prefix, get exactly the tokens
// runtime::generate gives each alone; a second round reuses the prefix cache.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"

namespace shrink::test {

/// n pseudo-random token ids below vocab (a fixed LCG per seed).
inline std::vector<int32_t> ids_for(int64_t n, int32_t vocab, uint32_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& t : v) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % uint32_t(vocab));
  }
  return v;
}

/// Six requests (every other one after a shared 37-token prefix; greedy, top-k and top-p
/// sampled) served by a scheduler over `served` (at least 4 slots) in two rounds, against
/// runtime::generate on `alone`.
inline void expect_scheduler_equals_generate(runtime::Engine& alone, runtime::Engine& served,
                                             size_t prefix_cache_bytes) {
  const int64_t V = served.config().vocab_size;
  struct Case {
    std::vector<int32_t> prompt;
    core::SamplingParams s;
    uint64_t seed;
    int64_t max_tokens;
  };
  const std::vector<int32_t> shared = ids_for(37, int32_t(V), 11);
  std::vector<Case> cases;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = i % 2 ? shared : std::vector<int32_t>();
    auto own = ids_for(5 + 9 * i, int32_t(V), 100 + uint32_t(i));
    p.insert(p.end(), own.begin(), own.end());
    core::SamplingParams s;
    if (i % 3 == 1) s.temperature = 0.9f, s.top_k = 40;
    if (i % 3 == 2) s.temperature = 1.1f, s.top_p = 0.9f;
    cases.push_back({p, s, uint64_t(1000 + i), 12 + i});
  }
  std::vector<std::vector<int32_t>> want;
  for (const Case& c : cases) {
    runtime::GenerateOptions g;
    g.max_new_tokens = c.max_tokens;
    g.sampling = c.s;
    g.seed = c.seed;
    g.stop_at_eos = false;
    auto r = runtime::generate(alone, c.prompt, g);
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    want.emplace_back(r.value().ids.begin() + r.value().prompt_len, r.value().ids.end());
  }
  runtime::SchedulerOptions so;
  so.max_batch_tokens = 24;  // longer prompts take several steps beside the others' decoding
  so.prefix_cache_bytes = prefix_cache_bytes;
  runtime::Scheduler sched(served, so);
  sched.start();
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    std::vector<std::shared_ptr<runtime::ServeStream>> streams;
    for (const Case& c : cases) {
      runtime::ServeRequest r;
      r.prompt = c.prompt;
      r.sampling = c.s;
      r.seed = c.seed;
      r.max_tokens = c.max_tokens;
      auto s = sched.submit(r);
      ASSERT_TRUE(s.is_ok()) << s.status().message();
      streams.push_back(s.value());
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      std::vector<runtime::TokenOut> got;
      while (!streams[i]->wait(0, got, std::chrono::milliseconds(100))) {
      }
      streams[i]->wait(0, got, std::chrono::milliseconds(0));
      std::vector<int32_t> ids;
      for (const runtime::TokenOut& t : got) ids.push_back(t.id);
      EXPECT_EQ(ids, want[i]) << "request " << i;
      EXPECT_EQ(streams[i]->finish_reason(), "length");
      // The second round finds each prompt of more than one block in the cache.
      if (round == 1 && cases[i].prompt.size() > 16)
        EXPECT_GE(streams[i]->cached_tokens(), 16) << "request " << i;
    }
  }
  const runtime::SchedulerStats st = sched.stats();
  EXPECT_EQ(st.requests, 12u);
  EXPECT_GT(st.cached_tokens, 0u);
  EXPECT_LT(st.prefill_tokens, st.prompt_tokens);
  // Steps ran several requests at once: fewer steps than tokens generated.
  EXPECT_LT(st.steps, st.generated_tokens);
  sched.shutdown(std::chrono::milliseconds(1000));
}

}  // namespace shrink::test
