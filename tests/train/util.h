// Helpers shared by the LibTorch tests: a unique temporary directory and a very small Llama
// config (2 layers, hidden 32, GQA 4/2) that trains and evaluates in milliseconds.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

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

}  // namespace shrink::test
