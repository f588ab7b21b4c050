// File-system helpers: whole-file reads, atomic file writes and atomic model directories.
//
// Why: a failed or interrupted command must never leave a half-written output. Files are written
// to a temporary sibling and renamed; a model directory is built in "<dir>.tmp-<pid>-<n>" and
// renamed into place by commit(), replacing an older directory of the same name only then.
// Tested in tests/core/test_fs.cpp.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::core {

Result<std::string> read_file(const std::string& path);
/// Write via "<path>.tmp-<pid>" and rename().
Status write_file_atomic(const std::string& path, const std::string& content);
/// A borrowed run of bytes.
struct ByteSpan {
  const void* data = nullptr;
  size_t size = 0;
};
/// Write the concatenation of `chunks` via "<path>.tmp-<pid>" and rename(), without first
/// copying them into one buffer (checkpoint writers stream tensors straight from their memory).
Status write_file_atomic_spans(const std::string& path, const std::vector<ByteSpan>& chunks);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);

/// A directory that appears at `final_path` only when commit() succeeds.
class AtomicDir {
 public:
  /// Create the temporary sibling directory (parents of final_path are created).
  static Result<AtomicDir> create(const std::string& final_path);
  AtomicDir(AtomicDir&& o) noexcept;
  AtomicDir& operator=(AtomicDir&&) = delete;
  AtomicDir(const AtomicDir&) = delete;
  ~AtomicDir();  // removes the temporary directory if not committed
  /// Where to write files now.
  const std::string& path() const { return tmp_; }
  const std::string& final_path() const { return final_; }
  /// Rename into place. An existing final_path is moved aside and deleted after the rename.
  Status commit();

 private:
  AtomicDir(std::string tmp, std::string fin) : tmp_(std::move(tmp)), final_(std::move(fin)) {}
  std::string tmp_, final_;
  bool committed_ = false;
};

}  // namespace shrink::core
