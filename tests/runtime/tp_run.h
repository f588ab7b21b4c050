// Tensor-parallel checks shared by the CPU tests (test_tp.cpp) and the CUDA ones
// (tests/cuda/test_tp_cuda.cpp): one rank's (or one process's) logits over a prompt, greedy
// decode and perplexity; N ranks as threads of the test process, each joining a group on a free
// local port; and the comparison of a rank's run with one process's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/launch.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "tests/runtime/util.h"

namespace shrink::test {

struct RankRun {
  std::vector<float> logits;    // [tokens, vocab], every position of the prompt
  std::vector<int32_t> greedy;  // decoded after the prompt
  double ppl = 0;
  std::string error;   // load or run error (empty when fine)
  std::string engine;  // Engine::describe()
};

inline const std::vector<int32_t>& tp_prompt() {
  static const std::vector<int32_t> p = {1, 17, 42, 99, 7, 63, 250, 3, 18, 77, 5, 140,
                                         29, 201, 11, 64, 2, 88, 120, 9, 33, 71, 150, 6};
  return p;
}

/// The engine of `eo` (its tp: a rank's group, or null for one process) over the prompt: logits
/// at every position, 12 greedy steps, and perplexity over the prompt repeated 4 times.
inline RankRun rank_run(const std::string& dir, const runtime::EngineOptions& eo) {
  RankRun r;
  auto e = runtime::Engine::load(dir, eo);
  if (!e.is_ok()) {
    r.error = e.status().message();
    return r;
  }
  runtime::Engine& m = **e;
  r.engine = m.describe();
  const std::vector<int32_t>& p = tp_prompt();
  Status st = m.forward({{0, p.data(), int64_t(p.size())}}, true, r.logits);
  m.reset_all();
  std::vector<int32_t> next;
  if (st.is_ok()) st = m.forward_argmax({{0, p.data(), int64_t(p.size())}}, next);
  for (int i = 0; i < 12 && st.is_ok(); ++i) {
    r.greedy.push_back(next[0]);
    st = m.forward_argmax({{0, &r.greedy.back(), 1}}, next);
  }
  if (!st.is_ok()) {
    r.error = st.message();
    return r;
  }
  std::vector<int32_t> stream;
  for (int k = 0; k < 4; ++k) stream.insert(stream.end(), p.begin(), p.end());
  auto ppl = runtime::perplexity(m, stream.data(), stream.size(), 32, 1);
  if (!ppl.is_ok()) {
    r.error = ppl.status().message();
    return r;
  }
  r.ppl = ppl->perplexity;
  return r;
}

/// N ranks as threads, each joining the group over `transport` and running rank_run with
/// options_of(rank) (its tp set here); every rank's run.
inline std::vector<RankRun> ranks_run(
    const std::string& dir, int n,
    const std::function<runtime::EngineOptions(int rank)>& options_of,
    const std::string& transport, double timeout_s) {
  const int port = core::tcp_port_free().take_or_throw();
  std::vector<RankRun> runs(static_cast<size_t>(n));
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r) {
    ts.emplace_back([&, r] {
      auto comm = tp_join_local(r, n, port, transport, timeout_s);
      if (!comm.is_ok()) {
        runs[size_t(r)].error = comm.status().message();
        return;
      }
      runtime::EngineOptions eo = options_of(r);
      eo.tp = *comm;
      runs[size_t(r)] = rank_run(dir, eo);
    });
  }
  for (auto& t : ts) t.join();
  return runs;
}

/// A rank's run equals one process's: greedy ids exactly, logits within tol relative to the
/// largest logit, perplexity within 1e-6 relative.
inline void expect_rank_equals(const RankRun& one, const RankRun& t, const std::string& at,
                               float tol) {
  ASSERT_TRUE(t.error.empty()) << at << ": " << t.error;
  ASSERT_EQ(t.logits.size(), one.logits.size()) << at;
  float scale = 1, worst = 0;
  for (size_t i = 0; i < one.logits.size(); ++i) {
    scale = std::max(scale, std::fabs(one.logits[i]));
    worst = std::max(worst, std::fabs(t.logits[i] - one.logits[i]));
  }
  EXPECT_LE(worst, tol * scale) << at << ": logits differ by " << worst;
  EXPECT_EQ(t.greedy, one.greedy) << at;
  EXPECT_NEAR(t.ppl / one.ppl, 1.0, 1e-6) << at << ": " << t.ppl << " vs " << one.ppl;
}

}  // namespace shrink::test
