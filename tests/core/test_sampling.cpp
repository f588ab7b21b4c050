// The selection samplers (core::sample_select, the CUDA sampler's algorithm, and
// core::sample_pick, the CPU's and core::Sampler's) against the sorted reference
// (core::sample_sorted) and each other, and the Sampler's RNG contract.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/sampling.h"

using namespace shrink::core;

namespace {

SampleRow row(float t, int32_t k, float p, double u) {
  SampleRow r;
  r.temperature = t;
  r.top_k = k;
  r.top_p = p;
  r.u = u;
  return r;
}

// OpenAI's penalties and bias, by hand: x = [1, 2, 3, 4, 5], token 1 generated twice and token
// 3 once, presence 0.5, frequency 0.25, bias +1 on token 0 and -2 on token 3:
// [1 + 1, 2 - 0.5 - 0.5, 3, 4 - 0.25 - 0.5 - 2, 5]; ids outside the row are ignored.
TEST(Sampler, LogitAdjustAppliesPenaltiesToGeneratedCountsThenBias) {
  std::vector<float> x = {1, 2, 3, 4, 5};
  LogitAdjust a;
  EXPECT_FALSE(a.on());
  a.presence = 0.5f;
  a.frequency = 0.25f;
  a.bias = {{0, 1.0f}, {3, -2.0f}, {7, 50.0f}};
  EXPECT_TRUE(a.on());
  logits_adjust(x.data(), 5, a, {{1, 2}, {3, 1}, {9, 4}});
  EXPECT_EQ(x, (std::vector<float>{2.0f, 1.0f, 3.0f, 1.25f, 5.0f}));
}

}  // namespace

TEST(SampleSelect, KeysOrderLikeFloats) {
  const std::vector<float> v = {-INFINITY, -3e38f, -1.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f,
                                3e38f, INFINITY};
  for (size_t i = 0; i + 1 < v.size(); ++i) {
    const float a = sample_scaled(v[i], 1.0f), b = sample_scaled(v[i + 1], 1.0f);
    if (a == b) {
      EXPECT_EQ(sample_key(a), sample_key(b)) << i;  // -0 and +0: one key
    } else {
      EXPECT_LT(sample_key(a), sample_key(b)) << i;
    }
    EXPECT_EQ(sample_unkey(sample_key(v[i])), v[i]);
  }
}

TEST(SampleSelect, TiesAtTheTopKCutGoToTheLowestIds) {
  // Sorted: id 1, 2, 3 (3.0), id 4 (2.0), id 0 (1.0). top-k 2 keeps ids 1 and 2, each 1/2.
  const std::vector<float> x = {1, 3, 3, 3, 2};
  EXPECT_EQ(sample_select(x.data(), 5, row(1, 2, 1, 0.25)), 1);
  EXPECT_EQ(sample_select(x.data(), 5, row(1, 2, 1, 0.75)), 2);
  std::vector<std::pair<float, int32_t>> scratch;
  EXPECT_EQ(sample_sorted(x.data(), 5, row(1, 2, 1, 0.75), scratch), 2);
  // top-k 4 keeps the three ties and id 4: e^0 e^0 e^0 e^-1 -> the last slice is id 4.
  const double w = std::exp(-1.0), z = 3 + w;
  EXPECT_EQ(sample_select(x.data(), 5, row(1, 4, 1, (3 + w / 2) / z)), 4);
  EXPECT_EQ(sample_select(x.data(), 5, row(1, 4, 1, 2.5 / z)), 3);
  // top-p 0.5 keeps the two first ties (2/(3+e^-1+e^-2) >= 0.5).
  for (double u : {0.1, 0.49, 0.51, 0.99}) {
    EXPECT_EQ(sample_select(x.data(), 5, row(1, 0, 0.5f, u)), u < 0.5 ? 1 : 2) << u;
  }
  // Greedy, and one candidate.
  EXPECT_EQ(sample_select(x.data(), 5, row(0, 0, 1, 0.3)), 1);
  EXPECT_EQ(sample_select(x.data(), 1, row(1, 0, 1, 0.3)), 0);
}

// Radix selection (the CUDA sampler's reference) and the bucketed pick (the CPU's) both equal
// the sorted reference, and each other.
TEST(SampleSelect, EqualsTheSortedReference) {
  std::mt19937_64 g(42);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<std::pair<float, int32_t>> scratch;
  SampleScratch items;
  int cases = 0, differ = 0;
  for (int64_t n : {1, 2, 7, 100, 1000, 32000}) {
    for (int dist = 0; dist < 3; ++dist) {
      std::vector<float> x(static_cast<size_t>(n));
      for (float& v : x) {
        v = nd(g) * (dist == 2 ? 8.0f : 2.0f);
        if (dist == 1) v = std::round(v);  // many ties
      }
      for (float t : {0.7f, 1.0f, 1.3f}) {
        for (int32_t k : {0, 1, 5, 50, int32_t(n), int32_t(n) + 3}) {
          for (float p : {1.0f, 0.95f, 0.5f, 0.01f}) {
            const int draws = n >= 32000 ? 2 : 6;
            for (int d = 0; d < draws; ++d) {
              const double u = d == 0 ? 0.0 : ud(g) * 0.999;
              const SampleRow r = row(t, k, p, u);
              const int32_t a = sample_select(x.data(), n, r);
              const int32_t b = sample_sorted(x.data(), n, r, scratch);
              const int32_t q = sample_pick(x.data(), n, r, items);
              ++cases;
              EXPECT_EQ(q, a) << "pick: n " << n << " dist " << dist << " T " << t
                              << " k " << k << " p " << p << " u " << u;
              if (a != b) {
                ++differ;
                ADD_FAILURE() << "n " << n << " dist " << dist << " T " << t << " k " << k
                              << " p " << p << " u " << u << ": select " << a << ", sorted " << b;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(differ, 0);
  EXPECT_GT(cases, 3000);
}

// Llama-3-wide rows where most weights are 0 in fixed point (a wide spread), where the top-k
// cut holds zero-weight ties (a constant row, one spike), and with quantised logits: the
// bucketed pick is the radix selection's, draw for draw, including u at 0 and near 1.
TEST(SamplePick, EqualsTheRadixSelectionOnWideRows) {
  const int64_t n = 128256;
  std::mt19937_64 g(7);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  SampleScratch items;
  int cases = 0;
  for (int dist = 0; dist < 4; ++dist) {
    std::vector<float> x(static_cast<size_t>(n));
    for (size_t i = 0; i < x.size(); ++i) {
      switch (dist) {
        case 0: x[i] = nd(g) * 12.0f; break;                   // most weights 0
        case 1: x[i] = 1.5f; break;                           // one big tie
        case 2: x[i] = i == 4242 ? 80.0f : nd(g); break;      // a spike: the rest weigh 0
        default: x[i] = std::round(nd(g) * 3.0f) * 0.5f;  // heavy ties
      }
    }
    for (float t : {0.6f, 1.0f}) {
      for (int32_t k : {0, 1, 40, 5000}) {
        for (float p : {1.0f, 0.9f, 0.3f}) {
          for (double u : {0.0, ud(g), ud(g), 0.999999999}) {
            const SampleRow r = row(t, k, p, u);
            ASSERT_EQ(sample_pick(x.data(), n, r, items), sample_select(x.data(), n, r))
                << "dist " << dist << " T " << t << " k " << k << " p " << p << " u " << u;
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 4 * 2 * 4 * 3 * 4);
  // The spike takes (almost) all the mass; a constant row's draw is uniform over the kept ids.
  std::vector<float> spike(size_t(n), 0.0f), flat(size_t(n), 2.0f);
  spike[99] = 60.0f;
  EXPECT_EQ(sample_pick(spike.data(), n, row(1, 0, 1, 0.5), items), 99);
  EXPECT_EQ(sample_pick(flat.data(), n, row(1, 0, 1, 0.5), items), n / 2);
  EXPECT_EQ(sample_pick(flat.data(), n, row(1, 10, 1, 0.55), items), 5);
  EXPECT_EQ(sample_pick(flat.data(), n, row(1, 0, 0.25f, 0.5), items), n / 8);
}

TEST(Sampler, NextRowConsumesTheRngAsSample) {
  std::vector<float> x(500);
  std::mt19937_64 g(3);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(g) * 3;
  Sampler a({0.9f, 40, 0.9f}, 77), b({0.9f, 40, 0.9f}, 77);
  for (int i = 0; i < 200; ++i) {
    const SampleRow r = b.next_row();
    ASSERT_EQ(a.sample(x.data(), 500), sample_select(x.data(), 500, r)) << i;
  }
  // Greedy rows draw nothing.
  Sampler gr({0.0f, 0, 1.0f}, 5);
  EXPECT_EQ(gr.next_row().u, 0.0);
}
