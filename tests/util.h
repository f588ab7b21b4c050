// Helpers every GoogleTest binary may share: a fresh temporary directory per test. Module
// helpers (tests/runtime/util.h, tests/train/util.h) include this one.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace shrink::test {

/// A fresh, empty directory under the GoogleTest temp dir, named after the test and the
/// process (ctest runs tests as separate processes, possibly at once).
inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::path(::testing::TempDir()) /
           ("shrink_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace shrink::test
