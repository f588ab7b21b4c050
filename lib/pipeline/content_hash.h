// Content hashes of files and directories: the cache keys of the recipe runner's stages and of
// anything derived from a model (the teacher fingerprint). A key built from paths would let an
// edited corpus or a replaced model reuse stale results; one built from contents cannot.
//
// Why this way:
// - XXH3-64 (xxHash, a library made for this) hashes at memory speed, so a key costs one read of
//   the inputs, which the stage itself reads many times over.
// - Hashes are cached by (path, size, mtime and ctime in nanoseconds, inode) in a JSON file, so
//   a rerun re-reads only what changed. A rewrite that keeps the size and lands within the same
//   timestamp tick as the cached one is not seen: the cost of not re-reading a teacher of 16 GB
//   on every rerun.
// - A directory's hash covers each regular file below it (sorted relative paths, each with its
//   size and hash), so a renamed, added or removed file changes it as an edited one does.
// Tested in tests/pipeline/test_content_hash.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/status.h"

namespace shrink::pipeline {

class ContentHasher {
 public:
  /// `cache_path`: the JSON file holding hashes of earlier calls ("" = no cache). A missing or
  /// unreadable cache file is an empty cache.
  explicit ContentHasher(std::string cache_path = "");

  /// 16 hex digits of XXH3-64 over the file's bytes, or over a directory's entries. Errors
  /// (kNotFound, kIoError) name the path.
  Result<std::string> hash(const std::string& path);
  /// Writes the cache file (atomically) when a hash was computed since it was read.
  Status save() const;
  /// Bytes read from disk by this object (cache hits read none).
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  struct Entry {
    std::string stamp;  // size, mtime, ctime and inode: when it changes, the hash is stale
    std::string hash;
  };
  Result<std::string> file_hash(const std::string& path);
  Result<std::string> directory_hash(const std::string& path);

  std::string cache_path_;
  std::map<std::string, Entry> cache_;  // absolute path -> entry
  bool dirty_ = false;
  uint64_t bytes_read_ = 0;
};

/// 16 hex digits of XXH3-64 over `text`: a key made of other keys.
std::string content_hash_of(const std::string& text);

/// The running program's identity, "VERSION+HASH": the shrink version and a content hash of the
/// executable (/proc/self/exe), so that an upgraded or rebuilt binary never reuses stage results
/// of another.
Result<std::string> tool_identity(ContentHasher& hasher);

}  // namespace shrink::pipeline
