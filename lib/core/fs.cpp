// File-system helpers (see fs.h): POSIX calls for whole files, std::filesystem (error_code
// overloads only, so nothing throws) for directories.
//
// Atomicity is against interruption of this process, not power loss: files are written to a
// sibling and rename()d, but not fsync()ed (checkpoints are large and the cost buys little on the
// machines this runs on). AtomicDir::commit() has a short window, between moving the old
// directory aside and renaming the new one in, where final_path does not exist; it tries to move
// the old one back if the second rename fails. Tested in tests/core/test_fs.cpp.
#include "core/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace shrink::core {

namespace fsys = std::filesystem;

namespace {

Status errno_status(int err, const std::string& what, const std::string& path) {
  const std::string msg = path + ": cannot " + what + ": " + std::strerror(err);
  if (err == ENOENT || err == ENOTDIR) return not_found(msg);
  return io_error(msg);
}

Status write_all(int fd, const void* data, size_t size, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "write", path);
    }
    p += n;
    size -= size_t(n);
  }
  return Status::ok();
}

std::string strip_trailing_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

Result<std::string> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, "open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return errno_status(err, "stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return invalid_input(path + ": is a directory, expected a file");
  }
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return errno_status(err, "read", path);
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

Status write_file_atomic_spans(const std::string& path, const std::vector<ByteSpan>& chunks) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status(errno, "create", tmp);
  for (const ByteSpan& c : chunks) {
    if (c.size == 0) continue;
    Status st = write_all(fd, c.data, c.size, tmp);
    if (!st.is_ok()) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, "close", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return errno_status(err, "rename " + tmp + " to", path);
  }
  return Status::ok();
}

Status write_file_atomic(const std::string& path, const std::string& content) {
  return write_file_atomic_spans(path, {ByteSpan{content.data(), content.size()}});
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Result<AtomicDir> AtomicDir::create(const std::string& final_path) {
  const std::string fin = strip_trailing_slashes(final_path);
  if (fin.empty() || fin == "/" || fin == "." || fin == "..") {
    return invalid_input("output directory '" + final_path + "' is not a usable path");
  }
  std::error_code ec;
  const fsys::path parent = fsys::path(fin).parent_path();
  if (!parent.empty()) {
    fsys::create_directories(parent, ec);
    if (ec) return io_error(parent.string() + ": cannot create directory: " + ec.message());
  }
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      fin + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  // A leftover from an earlier process with the same pid is ours to replace.
  fsys::remove_all(tmp, ec);
  if (!fsys::create_directory(tmp, ec) || ec) {
    return io_error(
        tmp + ": cannot create directory: " + (ec ? ec.message() : std::string("already exists")));
  }
  return AtomicDir(tmp, fin);
}

AtomicDir::AtomicDir(AtomicDir&& o) noexcept
    : tmp_(std::move(o.tmp_)), final_(std::move(o.final_)), committed_(o.committed_) {
  o.tmp_.clear();
  o.committed_ = true;  // the moved-from object owns nothing
}

AtomicDir::~AtomicDir() {
  if (committed_ || tmp_.empty()) return;
  std::error_code ec;
  fsys::remove_all(tmp_, ec);
}

Status AtomicDir::commit() {
  if (committed_ || tmp_.empty()) {
    return internal_error(final_ + ": AtomicDir::commit() called twice or after a move");
  }
  std::error_code ec;
  const fsys::file_status fst = fsys::symlink_status(final_, ec);
  const bool had_old = fsys::exists(fst);
  const std::string old = final_ + ".old-" + std::to_string(::getpid());
  if (had_old) {
    if (!fsys::is_directory(fst)) {
      return invalid_input(final_ +
                           ": exists and is not a directory; refusing to replace it with the "
                           "output directory (remove it or choose another path)");
    }
    fsys::remove_all(old, ec);
    ec.clear();
    fsys::rename(final_, old, ec);
    if (ec) return io_error(final_ + ": cannot move the old directory aside: " + ec.message());
  }
  fsys::rename(tmp_, final_, ec);
  if (ec) {
    const std::string why = ec.message();
    if (had_old) {
      std::error_code ec2;
      fsys::rename(old, final_, ec2);  // best effort: put the old one back
    }
    return io_error(final_ + ": cannot rename " + tmp_ + " into place: " + why);
  }
  committed_ = true;
  if (had_old) fsys::remove_all(old, ec);  // the new directory is in place; a leftover is harmless
  return Status::ok();
}

}  // namespace shrink::core
