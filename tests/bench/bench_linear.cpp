// Google Benchmark micro-benchmarks of the CPU backend's linear layers (the GEMM/GEMV behind every
// projection), through the same Backend::linear the engine calls, so the library choice
// (the built-in multi-row GEMVs for decode-sized M, oneDNN above) is the real one.
// Shapes: M = 1 (decode GEMV) and M = 512 (prefill GEMM) at K = N = 2048, in f32, bf16, W8A16,
// W8A8 (dynamic per token), W4A16 and W4A8 (int8 activations per 32, --act-quant int8-block). Counters: GOP/s (2*M*N*K per call) and weight GB/s (bytes of the
// weights read per call; what bounds decode). The second argument 1 rotates over enough copies
// of the layer (512 MB in all) that the weights come from DRAM, as in a real decode step; with 0
// one layer is reused and may sit in the last-level cache. Not a test: run build/bin/bench_linear
// [--benchmark_filter=...] [--threads N via SHRINK_THREADS], numbers in README "Runtime speed".
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>

#include "runtime/backend.h"

using namespace shrink;
using runtime::LinearDesc;
using runtime::LinearKind;

namespace {

int threads() {
  const char* t = std::getenv("SHRINK_THREADS");
  return t && std::atoi(t) > 0 ? std::atoi(t) : 1;
}

void bench_linear(benchmark::State& state, LinearKind kind, bool bf16 = false, int bits = 8,
                  runtime::ActInt8 act_int8 = runtime::ActInt8::kOff, int64_t group4 = 128) {
  const int64_t M = state.range(0);
  const int64_t N = state.range(2), K = state.range(3);
  runtime::CpuBackendOptions bo;
  bo.threads = threads();
  if (bf16) bo.float_weights = "bf16";
  auto be = runtime::backend_cpu_create(bo);
  if (!be.is_ok()) {
    state.SkipWithError(be.status().message().c_str());
    return;
  }
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  LinearDesc d;
  d.name = "bench";
  d.out = N;
  d.in = K;
  d.kind = kind;
  if (kind == LinearKind::kF32) {
    d.w.resize(size_t(N * K));
    for (float& v : d.w) v = u(rng) * 0.02f;
  } else {
    d.q.resize(size_t(N * K));
    for (int8_t& v : d.q)
      v = bits == 4 ? int8_t(int(rng() % 16) - 8) : int8_t(int(rng() % 255) - 127);
    d.bits = bits;
    d.group = bits == 4 ? group4 : K;  // W4A16: groups of 128, as `shrink quantize --scheme w4a16`
    d.act_int8 = act_int8;
    d.scale.assign(size_t(N * (K / d.group)), 0.02f / 127.f);
    if (kind == LinearKind::kW8A8) d.act = runtime::ActQuant::kDynamic;
  }
  const uint64_t bytes = kind == LinearKind::kF32 ? uint64_t(N * K) * (bf16 ? 2 : 4)
                                                  : uint64_t(N * K) * uint64_t(bits) / 8;
  const size_t copies = state.range(1) ? size_t((512ull << 20) / bytes) : 1;
  std::vector<std::unique_ptr<runtime::Linear>> lins;
  for (size_t c = 0; c < copies; ++c) {
    LinearDesc dc = d;
    auto lin = (*be)->linear_create(std::move(dc));
    if (!lin.is_ok()) {
      state.SkipWithError(lin.status().message().c_str());
      return;
    }
    lins.push_back(std::move(lin).value());
  }
  std::vector<float> x(size_t(M * K)), y(size_t(M * N));
  for (float& v : x) v = u(rng);
  size_t next = 0;
  for (auto _ : state) {
    (*be)->linear(*lins[next], x.data(), M, y.data(), N);
    next = (next + 1) % copies;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  auto& lin = lins[0];
  const double calls = double(state.iterations());
  state.counters["GOP/s"] =
      benchmark::Counter(2.0 * double(M * N * K) * calls / 1e9, benchmark::Counter::kIsRate);
  state.counters["weight_GB/s"] = benchmark::Counter(
      double(lin->weight_bytes) * calls / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel((*be)->describe());
}

}  // namespace

// Args: {M, DRAM, N, K}. M = 8..64 are batched decode and speculative verification, where the
// runtime's multi-row GEMV (M <= kGemvMaxM) and the library meet.
void linear_args(benchmark::internal::Benchmark* b) {
  b->Args({1, 0, 2048, 2048})->Args({1, 1, 2048, 2048})->Args({512, 0, 2048, 2048});
  for (int64_t m : {8, 16, 32, 64}) b->Args({m, 1, 2048, 2048});
  for (int64_t m : {8, 16, 32, 64}) b->Args({m, 1, 1536, 576});  // smollm-135m's gate/up
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

BENCHMARK_CAPTURE(bench_linear, f32, LinearKind::kF32)->Apply(linear_args);
BENCHMARK_CAPTURE(bench_linear, bf16, LinearKind::kF32, true)->Apply(linear_args);
BENCHMARK_CAPTURE(bench_linear, w8a16, LinearKind::kW8A16)->Apply(linear_args);
BENCHMARK_CAPTURE(bench_linear, w8a8, LinearKind::kW8A8)->Apply(linear_args);
BENCHMARK_CAPTURE(bench_linear, w4a16, LinearKind::kW8A16, false, 4)->Apply(linear_args);
// 4-bit in groups of 32 (GPTQ/AWQ's Q4_0 layout): float activations, then int8 per 32 (W4A8).
BENCHMARK_CAPTURE(bench_linear, w4a16_g32, LinearKind::kW8A16, false, 4, runtime::ActInt8::kOff,
                  32)->Apply(linear_args);
BENCHMARK_CAPTURE(bench_linear, w4a8_g32, LinearKind::kW8A16, false, 4,
                  runtime::ActInt8::kBlock32, 32)->Apply(linear_args);

BENCHMARK_MAIN();
