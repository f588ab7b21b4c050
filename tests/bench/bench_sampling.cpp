// Google Benchmark micro-benchmarks of one sampled pick from a row of logits, per algorithm:
// the sorted reference (core::sample_sorted), the radix selection the CUDA sampler runs
// (core::sample_select, here on the CPU) and the bucketed pick (core::sample_pick, what the
// CPU backend and core::Sampler run). Rows: smollm's 49,152 and Llama 3's 128,256 entries of
// N(0, 3^2) logits; settings: temperature 0.8 alone, with top-p 0.95, with top-k 50 and top-p
// 0.95. Single-threaded. Not a test: run build/bin/bench_sampling, numbers in README.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "core/sampling.h"

using namespace shrink::core;

namespace {

enum Algo { kSorted, kRadix, kPick };

void bench_pick(benchmark::State& state, Algo algo) {
  const int64_t n = state.range(0);
  const int setting = int(state.range(1));
  std::mt19937_64 g(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(g) * 3.0f;
  SampleRow r;
  r.temperature = 0.8f;
  r.top_p = setting >= 1 ? 0.95f : 1.0f;
  r.top_k = setting == 2 ? 50 : 0;
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  std::vector<std::pair<float, int32_t>> sorted_scratch;
  SampleScratch items;
  int64_t sink = 0;
  for (auto _ : state) {
    r.u = ud(g);
    switch (algo) {
      case kSorted: sink += sample_sorted(x.data(), n, r, sorted_scratch); break;
      case kRadix: sink += sample_select(x.data(), n, r); break;
      case kPick: sink += sample_pick(x.data(), n, r, items); break;
    }
  }
  benchmark::DoNotOptimize(sink);
  state.SetLabel(setting == 0 ? "T 0.8" : setting == 1 ? "T 0.8 top-p 0.95"
                                                       : "T 0.8 top-k 50 top-p 0.95");
}

void args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {49152, 128256}) {
    for (int s = 0; s < 3; ++s) b->Args({n, s});
  }
  b->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK_CAPTURE(bench_pick, sorted, kSorted)->Apply(args);
BENCHMARK_CAPTURE(bench_pick, radix_select, kRadix)->Apply(args);
BENCHMARK_CAPTURE(bench_pick, bucketed, kPick)->Apply(args);
BENCHMARK_MAIN();
