// Safetensors reader and writer, and multi-file (sharded) checkpoints.
//
// Format: 8-byte little-endian header length N, N bytes of JSON mapping tensor names to
// {dtype, shape, data_offsets:[begin,end)} relative to the data section (plus an optional
// "__metadata__" string map), then the data section.
//
// Why this way: files are memory-mapped read-only, so a multi-GB checkpoint opens instantly and
// the runtime can use weights in place. Everything in the header is validated before any byte is
// handed out (length bounds, JSON, known dtypes, shape x dtype == byte range, ranges inside the
// file and non-overlapping, unique names), so a malformed file yields a Status naming the file
// and the tensor, never a crash. Writers go through a temporary file and rename().
// Tested in tests/core/test_safetensors.cpp (round trips and a corpus of malformed files).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace shrink::core {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // bytes from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

/// A read-only memory mapping of a whole file.
class MappedFile {
 public:
  static Result<std::unique_ptr<MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
};

/// One validated, memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  /// Map and validate. Errors are kInvalidInput (malformed) or kNotFound, and name the file.
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::string& path);
  const std::string& path() const { return file_->path(); }
  /// Tensors in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;
  /// Pointer to the tensor's bytes inside the mapping (valid while this object lives).
  const uint8_t* data(const TensorInfo& t) const { return data_start_ + t.offset; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::unique_ptr<MappedFile> file_;
  const uint8_t* data_start_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// Drops the whole pages inside [p, p + n) of a read-only file mapping from this process's
/// resident memory (madvise MADV_DONTNEED): the mapping stays valid and pages read again come
/// back from the page cache or the file.
void pages_release(const void* p, uint64_t n);

/// A tensor to be written: borrowed bytes plus its description.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

/// Write one .safetensors file (tensors in the given order, data 8-byte aligned in the header
/// padding) to `path` via a temporary sibling and rename(). Validates names unique and
/// shape x dtype == nbytes.
Status safetensors_write(const std::string& path, const std::vector<TensorView>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

/// A model's weights: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {name: file}}).
/// 4-bit weights in compressed-tensors' pack-quantized layout (`<m>.weight_packed` I32
/// [out, ceil(in / 8)] with `<m>.weight_shape` [2] = [out, in]) are presented as the int8 tensor
/// `<m>.weight` [out, in] with values in [-8, 7], unpacked on first access, so that every reader
/// of int8 checkpoints reads them; the two stored tensors are not listed. An asymmetric
/// scheme's zero points stored packed beside them (`<m>.weight_zero_point` I32
/// [ceil(out / 8), groups], packed along the output dimension) are presented the same way, as
/// I8 [out, groups] with values in [-8, 7].
class Checkpoint {
 public:
  Checkpoint();
  ~Checkpoint();
  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  /// Open the checkpoint in a model directory. The index (if present) is validated against the
  /// shards: every mapped tensor exists in the named file, no tensor is in two files.
  static Result<Checkpoint> open(const std::string& dir);
  const std::string& dir() const { return dir_; }
  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  const TensorInfo* find(std::string_view name) const;
  const uint8_t* data(const TensorInfo& t) const;
  /// Drops bytes [offset, offset + n) of a tensor's data from this process's resident memory
  /// (madvise MADV_DONTNEED on the whole pages inside the range): the mapping stays valid and
  /// pages read again come back from the page cache or the file. For streaming readers, whose
  /// RSS would otherwise grow to the size of everything they have read. No-op for a presented
  /// 4-bit weight (heap memory).
  void release(const TensorInfo& t, uint64_t offset, uint64_t n) const;
  /// For a weight presented from 4-bit packing: the stored `<m>.weight_packed`; else null.
  const TensorInfo* packed_of(std::string_view name) const;
  /// For a weight presented from 4-bit packing (along its columns): rows `rows` (all when null)
  /// and columns [c0, c1) of the presented I8 values into out ([rows, c1 - c0]), unpacked from
  /// the stored bytes of that region only, without unpacking the whole tensor (a tensor-parallel
  /// rank's slice). False, writing nothing, for any other tensor or an odd c0.
  bool unpack_region(std::string_view name, const std::vector<int64_t>* rows, int64_t c0,
                     int64_t c1, int8_t* out) const;
  /// The file (basename) that holds a tensor.
  std::string file_of(std::string_view name) const;
  /// __metadata__ of the single file, or the first shard's.
  const std::map<std::string, std::string>& metadata() const;
  uint64_t total_bytes() const;
  size_t num_files() const { return files_.size(); }

 private:
  Status present_packed();
  struct Unpacked;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> (file index, info); file index kUnpacked for a presented 4-bit weight.
  std::map<std::string, std::pair<size_t, const TensorInfo*>, std::less<>> map_;
  std::map<std::string, std::unique_ptr<Unpacked>, std::less<>> unpacked_;
};

/// Write weights into directory `dir` (which must exist): a single `model.safetensors`, or,
/// when max_shard_bytes > 0 and the total exceeds it, `model-0000i-of-0000n.safetensors` plus
/// `model.safetensors.index.json`, as Hugging Face names them.
Status checkpoint_write(const std::string& dir, const std::vector<TensorView>& tensors,
                        const std::map<std::string, std::string>& metadata = {},
                        uint64_t max_shard_bytes = 0);

/// HF's default shard size when saving (transformers' max_shard_size "5GB").
constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ULL;

/// Writes a checkpoint tensor by tensor, so that a stage holds only the tensors it is working
/// on. The layout (shards, headers, offsets) is fixed up front from the tensors' names, dtypes
/// and shapes (TensorView::data is ignored there); each tensor's bytes are then written when they
/// exist, in any order and from any thread, with pwrite at its offset. The files are byte for
/// byte those checkpoint_write makes from the same list. Shards are written as
/// "<dir>/.<file>.tmp-<pid>" and renamed by finish(), the index last; an unfinished writer
/// removes its temporary files. Tested in tests/core/test_safetensors.cpp.
class CheckpointWriter {
 public:
  static Result<std::unique_ptr<CheckpointWriter>> create(
      const std::string& dir, std::vector<TensorView> plan,
      const std::map<std::string, std::string>& metadata = {}, uint64_t max_shard_bytes = 0);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  /// `nbytes` bytes of the planned tensor `name`, from byte `offset` of its data: all of it at
  /// once, or in disjoint parts (a large embedding row block by row block). Thread-safe.
  Status write(const std::string& name, const void* data, uint64_t nbytes, uint64_t offset = 0);
  /// Every planned tensor written: close, rename the shards into place, write (or remove a stale)
  /// index.
  Status finish();
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  struct Shard;
  struct Slot {
    size_t shard = 0;
    uint64_t offset = 0;  // in the shard file
    uint64_t nbytes = 0;
    uint64_t done = 0;  // bytes written so far
  };
  CheckpointWriter() = default;
  void abandon();

  std::string dir_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::map<std::string, Slot> slots_;
  std::mutex mu_;
  std::atomic<uint64_t> bytes_written_{0};
  uint64_t total_ = 0;
  bool finished_ = false;
};

}  // namespace shrink::core
