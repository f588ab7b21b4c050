// Helpers shared by the LibTorch tests: a very small Llama config (2 layers, hidden 32, GQA 4/2)
// that trains and evaluates in milliseconds, a learnable token stream, the options of a short
// training run on it, and what the trainer's tests compare (weights, metrics.jsonl series).
// Temporary directories come from tests/util.h.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "tests/util.h"
#include "train/trainer.h"

namespace shrink::test {

/// The OBS factor as GPTQ's reference code computes it, in float64: H + damp * mean(diag H) * I
/// (inputs that never fire get diagonal 1 first), then U = cholesky(cholesky_inverse(cholesky)),
/// upper, so that (H + damp)^-1 = U^T U.
inline torch::Tensor obs_factor_reference(const torch::Tensor& H, double damp) {
  auto Hd = H.to(torch::kFloat64).clone();
  Hd.diagonal().masked_fill_(Hd.diagonal() == 0, 1.0);
  Hd.diagonal().add_(damp * Hd.diagonal().mean().item<double>());
  return torch::linalg::cholesky(torch::cholesky_inverse(torch::linalg::cholesky(Hd))).t();
}

inline core::ModelConfig micro_config(int64_t vocab) {
  core::ModelConfig c = core::config_preset("tiny", vocab).take_or_throw();
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  return c;
}

/// dir/config.json (micro config, vocab 64) and dir/data: a learnable token stream (a noisy
/// repeating pattern) as train (20k tokens) and val (2k) shards.
inline void make_inputs(const std::string& dir) {
  core::ModelConfig c = micro_config(64);
  ASSERT_TRUE(core::write_file_atomic(dir + "/config.json", core::config_to_json(c)).is_ok());
  std::mt19937 rng(5);
  for (const char* split : {"train", "val"}) {
    core::ShardWriter w(dir + "/data", split, 64, "test");
    std::vector<int32_t> t;
    for (int i = 0; i < (split[0] == 't' ? 20000 : 2000); ++i) {
      t.push_back(rng() % 10 == 0 ? int32_t(rng() % 64) : int32_t((i * 7) % 23));
    }
    ASSERT_TRUE(w.append(t.data(), t.size()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }
  ASSERT_TRUE(core::write_file_atomic(dir + "/data/dataset.json", "{}").is_ok());
}

/// A short run on make_inputs' data in `dir`, writing to `out` (the model still to be given):
/// `steps` steps of 4 windows of 32 tokens at lr 3e-3 after `warmup` steps, validation and a
/// checkpoint every `every` steps (0: only at the end), seeded by `seed`.
inline train::TrainOptions short_run(const std::string& dir, const std::string& out,
                                     int64_t steps, int64_t warmup, int64_t every,
                                     uint64_t seed) {
  train::TrainOptions o;
  o.data = dir + "/data";
  o.out = out;
  o.steps = steps;
  o.seq_len = 32;
  o.batch = 4;
  o.lr = 3e-3;
  o.warmup = warmup;
  o.eval_every = every;
  o.save_every = every;
  o.seed = seed;
  return o;
}

/// make_inputs in `dir`, then `steps` steps of short_run from its micro config (seed `seed`):
/// the trained model's directory, dir/run/model.
inline std::string trained_micro_model(const std::string& dir, int64_t steps, uint64_t seed) {
  make_inputs(dir);
  train::TrainOptions t = short_run(dir, dir + "/run", steps, 0, 0, seed);
  t.config = dir + "/config.json";
  train::train_run(t);
  return dir + "/run/model";
}

/// (step, value) for each line of a metrics.jsonl that has one of `keys` (the first it has).
inline std::vector<std::pair<int64_t, double>> metric_series(
    const std::string& path, std::initializer_list<const char*> keys) {
  std::vector<std::pair<int64_t, double>> v;
  std::stringstream ss(core::read_file(path).take_or_throw());
  std::string line;
  while (std::getline(ss, line)) {
    auto j = nlohmann::json::parse(line);
    for (const char* key : keys) {
      if (j.contains(key)) {
        v.emplace_back(j["step"].get<int64_t>(), j[key].get<double>());
        break;
      }
    }
  }
  return v;
}

/// The model directories a and b hold the same tensors, byte for byte.
inline void expect_same_weights(const std::string& a, const std::string& b) {
  auto ca = core::Checkpoint::open(a).take_or_throw();
  auto cb = core::Checkpoint::open(b).take_or_throw();
  ASSERT_EQ(ca.names(), cb.names());
  for (const std::string& n : ca.names()) {
    const core::TensorInfo* ta = ca.find(n);
    const core::TensorInfo* tb = cb.find(n);
    ASSERT_EQ(ta->nbytes, tb->nbytes);
    EXPECT_EQ(0, std::memcmp(ca.data(*ta), cb.data(*tb), ta->nbytes)) << n;
  }
}

}  // namespace shrink::test
