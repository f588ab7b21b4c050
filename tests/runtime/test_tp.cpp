// Tensor parallelism (EngineOptions::tp): N ranks, run here as N threads of the test process, each
// with its own Engine and its own Gloo group (runtime/tp/gloo_comm.h, rendezvous over HTTP on a
// free local port), compute what one process computes:
//   - logits at every position agree with the single-process engine's within float tolerance
//     (the partial sums of o_proj and down_proj are added in another order);
//   - greedy decoding gives the same ids;
//   - perplexity agrees to 1e-6 relative;
// on the HF fixtures (GQA with Llama 3 RoPE, MHA from f16 shards, Qwen2 with q/k/v biases and a
// tied bf16 head), the default teacher, and int8 and 4-bit models written by util.h's quantizer
// (per channel, groups, asymmetric zero points, act-order groups). Splits that cannot be made
// (KV heads, groups) are refused at load, naming the tensor. The multi-process launch and a
// killed rank are checked by scripts/tp_check.sh (ctest tp_check).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <thread>

#include "core/launch.h"
#include "core/safetensors.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/tp/gloo_comm.h"
#include "tests/runtime/tp_run.h"
#include "tests/runtime/util.h"

namespace shrink::runtime {
namespace {

using test::RankRun;

// One rank's (or the single process's, when comm is null) run, one thread each. A bf16 model (the
// default teacher) in fp32 arithmetic: with its default bf16 activations a split's other
// summation order flips some bf16 roundings, and the comparison is of the split.
EngineOptions rank_options(EngineOptions eo) {
  eo.threads = 1;
  eo.max_seq_len = 64;
  if (eo.float_weights.empty()) eo.float_weights = "exact";
  return eo;
}

RankRun rank_run(const std::string& dir, std::shared_ptr<TpComm> comm, EngineOptions eo) {
  eo = rank_options(std::move(eo));
  eo.tp = std::move(comm);
  return test::rank_run(dir, eo);
}

// N ranks as threads, each joining the group; returns every rank's run.
std::vector<RankRun> tp_run(const std::string& dir, int n, const EngineOptions& eo = {},
                            const std::string& transport = "gloo", double timeout_s = 30) {
  return test::ranks_run(
      dir, n, [&](int) { return rank_options(eo); }, transport, timeout_s);
}

// Every rank of an N-way split equals the single process: ids exactly, logits within tol
// (relative to the largest logit), perplexity within 1e-6 relative.
void expect_same_as_one_process(const std::string& dir, const std::vector<int>& sizes,
                                const std::string& what, const EngineOptions& eo = {},
                                const std::string& transport = "gloo", float tol = 2e-5f) {
  const RankRun one = rank_run(dir, nullptr, eo);
  ASSERT_TRUE(one.error.empty()) << what << ": " << one.error;
  for (int n : sizes) {
    const std::vector<RankRun> runs = tp_run(dir, n, eo, transport);
    for (int r = 0; r < n; ++r) {
      const RankRun& t = runs[size_t(r)];
      const std::string at = what + ", " + transport + ", --tp " + std::to_string(n) + ", rank " +
                             std::to_string(r);
      test::expect_rank_equals(one, t, at, tol);
      // Every rank returns the same logits (the gathered whole, the same sums).
      if (r > 0) {
        EXPECT_EQ(t.logits, runs[0].logits) << at;
      }
    }
  }
}

core::QuantScheme scheme(int bits, int64_t group, bool symmetric = true) {
  core::QuantScheme s;
  s.bits = bits;
  s.symmetric = symmetric;
  if (group) {
    s.weight_strategy = "group";
    s.group_size = group;
  }
  return s;
}

TEST(TensorParallel, FloatModelsEqualOneProcess) {
  expect_same_as_one_process(test::fixture("llama_gqa_llama3rope"), {2}, "gqa, llama3 rope");
  expect_same_as_one_process(test::fixture("llama_mha_sharded_f16"), {2, 4}, "mha f16 shards");
  expect_same_as_one_process(test::fixture("qwen2_bias_tied_bf16"), {2, 4},
                             "qwen2 biases, tied bf16 head");
  // A group of one rank runs the --tp code (the vocabulary-parallel lookup and head, gathers
  // of one slice) with collectives over one rank: the path a single GPU checks NCCL by.
  expect_same_as_one_process(std::string(SHRINK_SOURCE_DIR) + "/models/teacher", {1, 2, 4},
                             "default teacher");
}

// The shared-memory transport (ranks on one machine) computes the same as Gloo's.
TEST(TensorParallel, SharedMemoryTransportEqualsOneProcess) {
  expect_same_as_one_process(test::fixture("qwen2_bias_tied_bf16"), {2, 4},
                             "qwen2 biases, tied bf16 head", {}, "shm");
  expect_same_as_one_process(std::string(SHRINK_SOURCE_DIR) + "/models/teacher", {2, 4},
                             "default teacher", {}, "shm");
}

TEST(TensorParallel, QuantizedModelsEqualOneProcess) {
  const std::string base = test::temp_dir("tp_quant");
  const std::string src = test::fixture("qwen2_bias_tied_bf16");
  struct Case {
    std::string name;
    core::QuantScheme s;
    bool act_order;
    std::vector<int> sizes;
  };
  const std::vector<Case> cases = {
      {"w8a16 per channel", scheme(8, 0), false, {2, 4}},
      {"w8a16 group 8", scheme(8, 8), false, {2, 4}},
      {"w4a16 group 8", scheme(4, 8), false, {2, 4}},
      {"w4a16 group 8 asymmetric", scheme(4, 8, false), false, {2}},
      {"w4a16 group 8 act-order", scheme(4, 8), true, {2, 4}},
  };
  for (const Case& c : cases) {
    const std::string q = base + "/" + std::to_string(&c - cases.data());
    test::quantize_dir(src, q, c.s, 0.05f, "", c.act_order);
    // Float activations: int8 activations per 32 inputs would need 32-aligned slices of
    // these 64- and 96-wide layers.
    EngineOptions eo;
    eo.act_quant = "none";
    expect_same_as_one_process(q, c.sizes, c.name, eo);
  }
  // W8A8 static (one input scale per tensor) splits too, and so do per-token int8 activations
  // (W8A8 dynamic; W8A16 with --act-quant int8-row): each token's scale is its whole row's
  // maximum, reduced over the ranks, so the int8 values are one process's.
  core::QuantScheme st = scheme(8, 0);
  st.activations = "static";
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), base + "/static", st, 0.05f);
  expect_same_as_one_process(base + "/static", {2}, "w8a8 static");
  core::QuantScheme dy = scheme(8, 0);
  dy.activations = "dynamic";
  test::quantize_dir(src, base + "/dynamic", dy);
  expect_same_as_one_process(base + "/dynamic", {2, 4}, "w8a8 dynamic");
  expect_same_as_one_process(base + "/dynamic", {2}, "w8a8 dynamic, shm", {}, "shm");
  test::quantize_dir(src, base + "/w8row", scheme(8, 0));
  EngineOptions row;
  row.act_quant = "int8-row";
  expect_same_as_one_process(base + "/w8row", {2, 4}, "w8a16 --act-quant int8-row", row);
  // 4-bit weights with per-token int8 activations (W4A8): the packed activations take the whole
  // row's scale too (the W4A8 kernel path: the engine says so).
  test::quantize_dir(src, base + "/w4row", scheme(4, 0));
  {
    EngineOptions one = row;
    one.float_weights = "exact";
    auto e = Engine::load(base + "/w4row", one);
    ASSERT_TRUE(e.is_ok()) << e.status().message();
    EXPECT_NE((*e)->describe().find("int8 activations per row"), std::string::npos)
        << (*e)->describe();
  }
  expect_same_as_one_process(base + "/w4row", {2, 4}, "w4a16 --act-quant int8-row (W4A8)", row);
  std::filesystem::remove_all(base);
}

// Each rank reads only its part of each layer from the mapped checkpoint (TpRegion): a
// non-finite scale in the last output row of q_proj (rank 1's heads) stops rank 1, naming the
// tensor, while rank 0, which never reads that row, fails only on its lost peer. One process,
// which reads the whole layer, refuses it too.
TEST(TensorParallel, EachRankReadsOnlyItsSlices) {
  const std::string q = test::temp_dir("tp_region");
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, scheme(8, 0));
  const std::string file = q + "/model.safetensors";
  uint64_t pos = 0;
  {
    auto f = core::SafetensorsFile::open(file).take_or_throw();
    const core::TensorInfo* t = f->find("model.layers.0.self_attn.q_proj.weight_scale");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->dtype, core::DType::kF32);
    std::ifstream in(file, std::ios::binary);
    uint64_t header = 0;
    in.read(reinterpret_cast<char*>(&header), 8);
    pos = 8 + header + t->offset + uint64_t(t->numel() - 1) * 4;
  }
  {
    std::fstream io(file, std::ios::binary | std::ios::in | std::ios::out);
    io.seekp(std::streamoff(pos));
    const float inf = INFINITY;
    io.write(reinterpret_cast<const char*>(&inf), 4);
  }
  const std::string bad = "q_proj.weight_scale holds a non-finite value";
  auto one = Engine::load(q, EngineOptions{});
  ASSERT_FALSE(one.is_ok());
  EXPECT_NE(one.status().message().find(bad), std::string::npos) << one.status().message();
  std::vector<RankRun> runs = tp_run(q, 2, {}, "shm", 5);
  EXPECT_NE(runs[1].error.find(bad), std::string::npos) << runs[1].error;
  EXPECT_FALSE(runs[0].error.empty());
  EXPECT_EQ(runs[0].error.find(bad), std::string::npos) << "rank 0 read rank 1's rows: " << runs[0].error;
  std::filesystem::remove_all(q);
}

TEST(TensorParallel, UnsplittableModelsAreRefusedNamingWhy) {
  // One KV head (MQA) cannot be split over 2 ranks.
  // Every rank refuses; a rank whose peer refused first may instead report the lost peer, so
  // the refusal is looked for in all ranks' errors.
  auto errors = [](const std::vector<RankRun>& runs) {
    std::string all;
    for (const RankRun& r : runs) all += r.error + "\n";
    return all;
  };
  std::vector<RankRun> runs = tp_run(test::fixture("mistral_mqa_linearrope"), 2, {}, "gloo", 5);
  EXPECT_FALSE(runs[0].error.empty());
  EXPECT_NE(errors(runs).find("num_key_value_heads 1 cannot be split over --tp 2"),
            std::string::npos)
      << errors(runs);
  // Groups of 32 over down_proj's 96 inputs: 48 per rank cuts a group.
  const std::string q = test::temp_dir("tp_refuse");
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, scheme(4, 32));
  EngineOptions eo;
  eo.act_quant = "none";
  runs = tp_run(q, 2, eo, "gloo", 5);
  EXPECT_FALSE(runs[0].error.empty());
  EXPECT_NE(errors(runs).find("model.layers.0.mlp.down_proj: tensor parallelism would cut a "
                              "quantization group"),
            std::string::npos)
      << errors(runs);
  std::filesystem::remove_all(q);
}

}  // namespace
}  // namespace shrink::runtime
