// Helpers shared by the LibTorch tests: a unique temporary directory and a very small Llama
// config (2 layers, hidden 32, GQA 4/2) that trains and evaluates in milliseconds.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <random>
#include <vector>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/model_config.h"

namespace shrink::test {

/// A fresh, empty directory under the GoogleTest temp dir.
inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::path(::testing::TempDir()) /
           ("shrink_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
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

}  // namespace shrink::test
