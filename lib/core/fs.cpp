// File-system helpers (see fs.h): POSIX calls for whole files, std::filesystem (error_code
// overloads only, so nothing throws) for directories.
//
// Atomicity is against interruption of this process, not power loss: files are written to a
// sibling and rename()d, but not fsync()ed (checkpoints are large and the cost buys little on the
// machines this runs on). AtomicDir::commit() swaps an existing final_path with the new directory
// in one renameat2(RENAME_EXCHANGE), so a kill at any point leaves a complete directory there (a
// resumable checkpoint stays resumable). Where the exchange is unsupported (EINVAL: some network
// and FUSE file systems), it falls back to moving the old directory aside first, with a short
// window where final_path does not exist; it tries to move the old one back if the second rename
// fails.
//
// Stale temporaries: a killed process leaves "<final>.tmp-<pid>-<n>" behind, and pids alone
// cannot tell a dead owner from a live one (pid reuse, containers, other machines). So the owner
// holds a flock() on the directory, which the kernel drops when the process dies however it dies;
// create() takes the lock of each sibling temporary to learn whether its owner is gone. A lock
// taken between another process's mkdir() and its flock() would wrongly look free, so an empty
// directory younger than 10 s is left alone (its owner locks it before writing anything). Where
// flock() fails (some network file systems), nothing is deleted.
// Tested in tests/core/test_fs.cpp; kills and full disks in tests/cli/test_faults.sh.
#include "core/fs.h"

#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/resource.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

namespace shrink::core {

namespace fsys = std::filesystem;

namespace {

Status errno_status(int err, const std::string& what, const std::string& path) {
  const std::string msg = path + ": cannot " + what + ": " + std::strerror(err);
  if (err == ENOENT || err == ENOTDIR) return not_found(msg);
  return io_error(msg);
}

// A test hook's count from the environment (0 = unset).
uint64_t env_count(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : 0;
}

uint64_t kill_after_bytes() {
  static const uint64_t n = env_count("SHRINK_TEST_KILL_AFTER_BYTES");
  return n;
}

void test_kill_in_commit() {
  static const uint64_t n = env_count("SHRINK_TEST_KILL_IN_COMMIT");
  static std::atomic<uint64_t> commits{0};
  if (n && ++commits == n) ::raise(SIGKILL);
}

}  // namespace

Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  // Small writes while the kill hook is armed, so that it lands inside a file.
  const size_t max_write = kill_after_bytes() ? size_t(4096) : size;
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, std::min(size, max_write), off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "write", path);
    }
    test_kill_after_bytes(uint64_t(n));
    p += n;
    size -= size_t(n);
    offset += uint64_t(n);
  }
  return Status::ok();
}

namespace {

// flock() the directory `path` without blocking: the descriptor holding the lock, or -1 when it
// is held elsewhere (*busy = true) or flock is unsupported here (*busy = false).
int dir_lock(const std::string& path, bool* busy) {
  *busy = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    *busy = errno == EWOULDBLOCK;
    ::close(fd);
    return -1;
  }
  return fd;
}

// `name` is `prefix` + "<pid>-<n>" (digits only: a user's "model.tmp-backup" is not ours).
bool is_temporary_name(const std::string& name, const std::string& prefix) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string rest = name.substr(prefix.size());
  const size_t dash = rest.find('-');
  if (dash == 0 || dash == std::string::npos || dash + 1 == rest.size()) return false;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (i != dash && (rest[i] < '0' || rest[i] > '9')) return false;
  }
  return true;
}

// Delete the "<fin>.tmp-<pid>-<n>" siblings whose owners died (see the file comment).
void sweep_stale_temporaries(const std::string& fin) {
  const fsys::path fp(fin);
  const fsys::path parent = fp.has_parent_path() ? fp.parent_path() : fsys::path(".");
  const std::string prefix = fp.filename().string() + ".tmp-";
  std::error_code ec;
  std::vector<fsys::path> stale;
  for (fsys::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!is_temporary_name(name, prefix)) continue;
    struct stat st;
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    bool busy = false;
    const int fd = dir_lock(it->path().string(), &busy);
    if (fd < 0) continue;  // alive, or no way to tell
    std::error_code ec2;
    const bool empty = fsys::is_empty(it->path(), ec2);
    const bool young = std::time(nullptr) - st.st_ctime < 10;
    if (!ec2 && !(empty && young)) stale.push_back(it->path());
    ::close(fd);
  }
  for (const fsys::path& p : stale) fsys::remove_all(p, ec);  // best effort
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
  uint64_t offset = 0;
  for (const ByteSpan& c : chunks) {
    if (c.size == 0) continue;
    Status st = pwrite_all(fd, c.data, c.size, offset, tmp);
    offset += c.size;
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

void test_kill_after_bytes(uint64_t n) {
  static std::atomic<uint64_t> written{0};
  const uint64_t limit = kill_after_bytes();
  if (limit && (written += n) >= limit) ::raise(SIGKILL);
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
  sweep_stale_temporaries(fin);
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      fin + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  // A leftover from an earlier process with the same pid is ours to replace.
  fsys::remove_all(tmp, ec);
  if (!fsys::create_directory(tmp, ec) || ec) {
    return io_error(
        tmp + ": cannot create directory: " + (ec ? ec.message() : std::string("already exists")));
  }
  bool busy = false;
  return AtomicDir(tmp, fin, dir_lock(tmp, &busy));
}

AtomicDir::AtomicDir(AtomicDir&& o) noexcept
    : tmp_(std::move(o.tmp_)),
      final_(std::move(o.final_)),
      lock_fd_(o.lock_fd_),
      committed_(o.committed_) {
  o.tmp_.clear();
  o.lock_fd_ = -1;
  o.committed_ = true;  // the moved-from object owns nothing
}

void AtomicDir::unlock() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
}

AtomicDir::~AtomicDir() {
  unlock();
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
#ifdef RENAME_EXCHANGE
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, final_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;
      unlock();
      test_kill_in_commit();
      fsys::remove_all(tmp_, ec);  // now the old directory; a leftover is swept later
      return Status::ok();
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
      return errno_status(errno, "exchange " + tmp_ + " with", final_);
    }
#endif
    fsys::remove_all(old, ec);
    ec.clear();
    fsys::rename(final_, old, ec);
    if (ec) return io_error(final_ + ": cannot move the old directory aside: " + ec.message());
    test_kill_in_commit();
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
  unlock();
  if (!had_old) test_kill_in_commit();
  if (had_old) fsys::remove_all(old, ec);  // the new directory is in place; a leftover is harmless
  return Status::ok();
}

Result<uint64_t> bytes_parse(const std::string& text) {
  auto bad = [&] {
    return Status(StatusCode::kInvalidInput,
                  "size '" + text + "': expected a number of bytes with an optional K, M, G or T "
                  "(powers of 1024), such as 4G or 512M");
  };
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    return bad();
  }
  std::string unit = text.substr(used);
  // "GiB" / "GB" / "G", "B" / "".
  if (unit.size() == 3 && (unit.compare(1, 2, "iB") == 0 || unit.compare(1, 2, "ib") == 0)) {
    unit.resize(1);
  } else if (unit.size() == 2 && (unit[1] == 'B' || unit[1] == 'b')) {
    unit.resize(1);
  } else if (unit == "B" || unit == "b") {
    unit.clear();
  }
  double mul = 1;
  if (unit == "k" || unit == "K") mul = 1024.0;
  else if (unit == "m" || unit == "M") mul = 1024.0 * 1024;
  else if (unit == "g" || unit == "G") mul = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "T") mul = 1024.0 * 1024 * 1024 * 1024;
  else if (!unit.empty()) return bad();
  const double bytes = v * mul;
  if (!(bytes >= 0) || bytes > 1.8e19) return bad();
  return uint64_t(bytes);
}

Result<ScratchBuffer> ScratchBuffer::create(uint64_t bytes, bool spill, const std::string& dir) {
  ScratchBuffer b;
  b.size_ = bytes;
  if (bytes == 0) return b;
  if (!spill) {
    b.data_ = static_cast<uint8_t*>(std::malloc(bytes));
    if (!b.data_) return Status(StatusCode::kIoError, "cannot allocate " + std::to_string(bytes) + " bytes");
    return b;
  }
  std::string path = (dir.empty() ? std::string("/tmp") : dir) + "/.shrink-spill-XXXXXX";
  int fd = mkstemp(path.data());
  if (fd < 0) return Status(StatusCode::kIoError, path + ": cannot create a spill file: " + std::strerror(errno));
  unlink(path.c_str());
  if (ftruncate(fd, off_t(bytes)) != 0) {
    const int e = errno;
    close(fd);
    return Status(StatusCode::kIoError, "cannot size a spill file of " + std::to_string(bytes) +
                                            " bytes in " + dir + ": " + std::strerror(e));
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return Status(StatusCode::kIoError, std::string("cannot map a spill file: ") + std::strerror(errno));
  b.data_ = static_cast<uint8_t*>(p);
  b.mapped_ = true;
  return b;
}

ScratchBuffer::ScratchBuffer(ScratchBuffer&& o) noexcept
    : data_(o.data_), size_(o.size_), mapped_(o.mapped_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

ScratchBuffer& ScratchBuffer::operator=(ScratchBuffer&& o) noexcept {
  if (this != &o) {
    this->~ScratchBuffer();
    data_ = o.data_;
    size_ = o.size_;
    mapped_ = o.mapped_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

ScratchBuffer::~ScratchBuffer() {
  if (!data_) return;
  if (mapped_) munmap(data_, size_);
  else std::free(data_);
  data_ = nullptr;
}

void ScratchBuffer::release(uint64_t offset, uint64_t n) {
  if (!mapped_ || n == 0) return;
  const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
  const uint64_t begin = (offset + page - 1) / page * page, end = (offset + n) / page * page;
  if (end > begin) madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

double peak_rss_mib() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

void memory_return() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

std::string executable_dir() {
  std::vector<char> buf(4096);
  const ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return "";
  std::string p(buf.data(), size_t(n));
  const size_t slash = p.rfind('/');
  return slash == std::string::npos ? "" : p.substr(0, slash);
}

}  // namespace shrink::core
