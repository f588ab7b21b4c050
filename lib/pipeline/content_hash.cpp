// See content_hash.h.
#include "pipeline/content_hash.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "core/fs.h"
#include "core/json_util.h"

namespace shrink::pipeline {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kCacheVersion = 1;
constexpr size_t kReadChunk = size_t(4) << 20;

std::string hex16(uint64_t h) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

// What changes when a file is rewritten: size, modification and status-change times, inode.
std::string stamp_of(const struct stat& st) {
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ctim.tv_sec) + "." +
         std::to_string(st.st_ctim.tv_nsec) + ":" + std::to_string(st.st_ino);
}

Status os_error(const std::string& what, const std::string& path) {
  return Status(StatusCode::kIoError, what + " " + path + ": " + std::strerror(errno));
}

struct XxhState {
  XXH3_state_t* s = XXH3_createState();
  XxhState() { XXH3_64bits_reset(s); }
  ~XxhState() { XXH3_freeState(s); }
  XxhState(const XxhState&) = delete;
  XxhState& operator=(const XxhState&) = delete;
  void update(const void* p, size_t n) { XXH3_64bits_update(s, p, n); }
  void update(const std::string& str) { update(str.data(), str.size() + 1); }  // with the NUL
  uint64_t digest() const { return XXH3_64bits_digest(s); }
};

// The cache file's entries; anything unreadable or of another version is an empty cache.
std::map<std::string, std::pair<std::string, std::string>> cache_read(const std::string& path) {
  std::map<std::string, std::pair<std::string, std::string>> out;
  if (path.empty()) return out;
  auto text = core::read_file(path);
  if (!text.is_ok()) return out;
  auto j = core::json_parse_untrusted(text.value(), path);
  if (!j.is_ok() || !j->is_object() || j->value("version", 0) != kCacheVersion) return out;
  const json& entries = (*j)["entries"];
  if (!entries.is_object()) return out;
  for (const auto& [file, e] : entries.items()) {
    if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      out[file] = {e[0].get<std::string>(), e[1].get<std::string>()};
    }
  }
  return out;
}

}  // namespace

ContentHasher::ContentHasher(std::string cache_path) : cache_path_(std::move(cache_path)) {
  for (auto& [file, e] : cache_read(cache_path_)) cache_[file] = Entry{e.first, e.second};
}

Result<std::string> ContentHasher::hash(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return not_found(path + ": no such file or directory");
  if (fs::is_directory(st)) return directory_hash(path);
  return file_hash(path);
}

Result<std::string> ContentHasher::file_hash(const std::string& path) {
  std::error_code ec;
  const std::string key = fs::weakly_canonical(path, ec).string();  // /proc/self/exe: the binary
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return os_error("cannot open", path);
  std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) {
    ::close(*f);
    delete f;
  });
  struct stat st {};
  if (::fstat(fd, &st) != 0) return os_error("cannot stat", path);
  const std::string stamp = stamp_of(st);
  auto it = cache_.find(key);
  if (it != cache_.end() && it->second.stamp == stamp) return it->second.hash;

  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  XxhState h;
  std::vector<char> buf(kReadChunk);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return os_error("cannot read", path);
    if (n == 0) break;
    h.update(buf.data(), size_t(n));
    bytes_read_ += uint64_t(n);
  }
  const std::string digest = hex16(h.digest());
  cache_[key] = Entry{stamp, digest};
  dirty_ = true;
  return digest;
}

Result<std::string> ContentHasher::directory_hash(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> files;  // relative path, full path
  std::error_code ec;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code fec;
    if (!it->is_regular_file(fec)) continue;  // follows file symlinks, not directory ones
    files.emplace_back(fs::relative(it->path(), path, fec).generic_string(), it->path().string());
  }
  if (ec) return Status(StatusCode::kIoError, "cannot list " + path + ": " + ec.message());
  std::sort(files.begin(), files.end());
  XxhState h;
  h.update("shrink-directory/1");
  for (const auto& [rel, full] : files) {
    SHRINK_ASSIGN_OR_RETURN(std::string fh, file_hash(full));
    h.update(rel);
    h.update(fh);
  }
  return hex16(h.digest());
}

Status ContentHasher::save() const {
  if (cache_path_.empty() || !dirty_) return Status::ok();
  json entries = json::object();
  for (const auto& [file, e] : cache_) entries[file] = json::array({e.stamp, e.hash});
  return core::write_file_atomic(cache_path_,
                                 json({{"version", kCacheVersion}, {"entries", entries}}).dump() + "\n");
}

std::string content_hash_of(const std::string& text) {
  return hex16(XXH3_64bits(text.data(), text.size()));
}

Result<std::string> tool_identity(ContentHasher& hasher) {
  SHRINK_ASSIGN_OR_RETURN(std::string exe, hasher.hash("/proc/self/exe"));
  return std::string(SHRINK_VERSION) + "+" + exe;
}

}  // namespace shrink::pipeline
