// File-system helpers: whole-file reads, atomic file writes and atomic model directories.
//
// Why: a failed or interrupted command must never leave a half-written output. Files are written
// to a temporary sibling and renamed; a model directory is built in "<dir>.tmp-<pid>-<n>" and
// renamed into place by commit(), replacing an older directory of the same name only then (in one
// atomic exchange where the file system supports it). A process killed mid-write (kill -9, OOM)
// leaves its "<dir>.tmp-*" behind; the next AtomicDir for the same path deletes it. The test hooks
// at the end inject such kills. Tested in tests/core/test_fs.cpp and tests/cli/test_faults.sh.
#pragma once

#include <cstddef>
#include <cstdint>
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
/// pwrite() all of `size` bytes at `offset`, retrying short writes and EINTR; counts toward the
/// SHRINK_TEST_KILL_AFTER_BYTES hook. Threads may write disjoint ranges of one descriptor at once.
Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset, const std::string& path);
bool path_exists(const std::string& path);
bool is_directory(const std::string& path);

/// A directory that appears at `final_path` only when commit() succeeds. The temporary directory
/// is flock()ed while its owner lives; create() deletes each "<final_path>.tmp-<pid>-<n>"
/// sibling whose lock it can take (its owner died before committing), except an empty one younger
/// than 10 s (a directory another process has just made and not yet locked).
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
  /// Rename into place. An existing final_path is swapped out in one renameat2(RENAME_EXCHANGE)
  /// and then deleted, so final_path always names a complete directory; where the file system
  /// lacks the exchange, it is moved aside first (a short window with no final_path).
  Status commit();

 private:
  AtomicDir(std::string tmp, std::string fin, int lock_fd)
      : tmp_(std::move(tmp)), final_(std::move(fin)), lock_fd_(lock_fd) {}
  void unlock();
  std::string tmp_, final_;
  int lock_fd_ = -1;  // an open, flock()ed descriptor of tmp_ (-1 where flock is unsupported)
  bool committed_ = false;
};

/// This process's peak resident memory so far (getrusage), MiB.
double peak_rss_mib();

/// Gives the allocator's free pages back to the system (glibc's malloc_trim; a no-op elsewhere):
/// after a model is loaded or dropped, so that the temporaries of loading and the last model's
/// blocks are not counted on top of what follows (the programs keep up to 128 MiB free on the
/// heap otherwise: cli_main.h).
void memory_return();

/// The directory of the running executable (/proc/self/exe), "" if unknown: where the programs
/// find what is installed beside them (the CUDA backend plugin, shrink-rt).
std::string executable_dir();

/// A size as users write it: "4G", "512M", "1.5GiB", "64k", "1000000" (bytes); K, M, G and T are
/// powers of 1024, with or without "iB"/"B". kInvalidInput names the text and what is expected.
Result<uint64_t> bytes_parse(const std::string& text);

/// The default --max-memory of the streamed stages: the budget of their hidden states
/// (calibration or evaluation, float32) before they spill to a temporary file. 1 GiB keeps the
/// 1B shape's 128 x 2048 calibration (2 GiB of states) spilled, so that the stage stays near the
/// memory of one layer, while the default 64 x 256 tokens (128 MiB there) stay in memory.
inline constexpr const char* kDefaultStatesBudget = "1G";

/// Scratch memory of `bytes` bytes: on the heap, or (spilled) a shared mapping of an unlinked
/// temporary file in `dir`, whose pages the kernel writes back and drops under memory pressure,
/// and which release() drops from this process's resident memory at once. For buffers larger
/// than a stage's memory budget (the calibration states of --max-memory); the file disappears
/// with the buffer, or with the process.
class ScratchBuffer {
 public:
  static Result<ScratchBuffer> create(uint64_t bytes, bool spill, const std::string& dir);
  ScratchBuffer() = default;
  ScratchBuffer(ScratchBuffer&& o) noexcept;
  ScratchBuffer& operator=(ScratchBuffer&& o) noexcept;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer();
  uint8_t* data() { return data_; }
  uint64_t size() const { return size_; }
  bool spilled() const { return mapped_; }
  /// Spilled: drop bytes [offset, offset + n) from resident memory (they stay in the file and the
  /// page cache; reading them again brings them back). On the heap: nothing.
  void release(uint64_t offset, uint64_t n);

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;
};

/// Fault-injection hooks for tests/cli/test_faults.sh (the model of SHRINK_TEST_KILL_STEP in
/// lib/train/trainer.cpp). Each raises SIGKILL on this process, as `kill -9` or the OOM killer
/// would, at a chosen point; each is a no-op unless its variable is set.
///  - SHRINK_TEST_KILL_AFTER_BYTES=N: once N bytes of output have been written. Every writer of
///    model outputs counts its bytes here: the atomic file writers above (in 4 KiB writes while
///    the hook is armed, so the kill lands inside a file) and the ONNX external-data writer.
///  - SHRINK_TEST_KILL_IN_COMMIT=N: inside the Nth AtomicDir::commit() of the process, right after
///    its first rename (the point where an interrupted commit leaves the most behind).
void test_kill_after_bytes(uint64_t n);

}  // namespace shrink::core
