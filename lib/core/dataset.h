// Text sources, token shards, the train/validation split and fixed-length packing.
//
// Inputs: a .txt file, a .jsonl file (a "text" field per line), a fortune(6) file (documents
// separated by lines holding only "%", recognised by its strfile ".dat" sibling or by name), or a
// directory of these (recursively; other files are skipped, and the listing is sorted so the
// order is deterministic). Everything streams: no input is ever held whole in memory.
//
// Token shards: "<dir>/<split>-NNNNN.tok", each a 64-byte-aligned JSON header followed by raw
// little-endian uint16 or uint32 tokens (uint16 when the vocabulary fits), memory-mapped for
// reading. A document ends with the tokenizer's EOS token when it has one.
//
// Split: each document goes to validation when hash(seed, document index) falls under
// val_fraction, so the split is deterministic and independent of thread count.
// Tested in tests/core/test_dataset.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/status.h"
#include "core/tokenizer.h"

namespace shrink::core {

/// The built-in default corpus (Debian's fortunes package).
inline constexpr const char* kDefaultCorpus = "/usr/share/games/fortunes";

/// A piece of text. `ends_document` is false for the leading blocks of a long .txt file that
/// is streamed in pieces (cut at line boundaries), so no EOS goes between them.
struct TextBlock {
  std::string text;
  bool ends_document = true;
  uint64_t doc_index = 0;  // counts documents across all files, from 0
};

/// Streams TextBlocks from a file or directory.
class TextReader {
 public:
  /// Errors: kNotFound if the path does not exist, kInvalidInput if it holds no usable file.
  static Result<std::unique_ptr<TextReader>> open(const std::string& path);
  virtual ~TextReader() = default;
  /// Next block; false at the end. Errors name the file and line (e.g. bad JSON in .jsonl).
  virtual Result<bool> next(TextBlock& block) = 0;
  /// Input files, in reading order.
  virtual const std::vector<std::string>& files() const = 0;
  virtual uint64_t bytes_total() const = 0;
  virtual uint64_t bytes_read() const = 0;
};

/// Which documents a consumer wants.
enum class Split { kTrain, kVal, kAll };
const char* split_name(Split s);
Result<Split> split_from_name(const std::string& s);

/// Deterministic document-level split.
bool split_is_val(uint64_t doc_index, double val_fraction, uint64_t seed);

struct TokenizeOptions {
  Split split = Split::kAll;
  double val_fraction = 0.05;
  uint64_t seed = 0;
  uint64_t max_tokens = 0;  // 0 = no limit
};

/// Stream-tokenize a text source: calls `sink` with each block's tokens (EOS appended at the
/// end of each document when the tokenizer has one). Returns the number of tokens produced.
Result<uint64_t> tokenize_stream(TextReader& reader, const Tokenizer& tok,
                                 const TokenizeOptions& opts,
                                 const std::function<void(const std::vector<int32_t>&)>& sink);

/// Header of a token shard.
struct ShardHeader {
  int32_t token_bytes = 2;  // 2 (uint16) or 4 (uint32)
  uint64_t n_tokens = 0;
  int32_t vocab_size = 0;
  std::string split;                  // "train", "val" or "all"
  std::string tokenizer_fingerprint;  // Tokenizer::fingerprint()
};

/// Writes "<dir>/<split>-NNNNN.tok" shards of at most shard_tokens tokens each, atomically.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, int32_t vocab_size, std::string fingerprint,
              uint64_t shard_tokens = 1ull << 27);
  ~ShardWriter();
  Status append(const int32_t* tokens, uint64_t n);
  /// Flush the last shard. Must be called; returns the shard paths written.
  Result<std::vector<std::string>> finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Read-only, memory-mapped view over one shard file or all shards of a split in a directory.
class TokenDataset {
 public:
  /// `path` is a .tok file, or a directory holding "<split>-*.tok" shards.
  static Result<TokenDataset> open(const std::string& path, Split split = Split::kTrain);
  uint64_t size() const { return total_; }
  int32_t vocab_size() const { return vocab_size_; }
  const std::string& tokenizer_fingerprint() const { return fingerprint_; }
  /// Copy tokens [pos, pos+n) into out (may span shards). pos+n must be <= size().
  void read(uint64_t pos, uint64_t n, int32_t* out) const;

 private:
  struct Shard {
    std::unique_ptr<MappedFile> file;
    const uint8_t* tokens = nullptr;
    int32_t token_bytes = 2;
    uint64_t begin = 0, n = 0;  // global position and count
  };
  std::vector<Shard> shards_;
  uint64_t total_ = 0;
  int32_t vocab_size_ = 0;
  std::string fingerprint_;
};

/// True when `path` is pre-tokenized data: a .tok file, or a directory holding dataset.json or
/// .tok shards (as `shrink data prepare` writes). Otherwise it is treated as text.
bool dataset_is_tokens(const std::string& path);

/// Read a shard header (validated: magic, JSON, sizes match the file).
Result<ShardHeader> shard_read_header(const std::string& path);

struct PrepareOptions {
  double val_fraction = 0.05;
  uint64_t seed = 0;
  uint64_t shard_tokens = 1ull << 27;
  uint64_t max_tokens = 0;  // 0 = everything
  std::function<void(uint64_t bytes_done, uint64_t bytes_total, uint64_t tokens)> progress;
};
struct PrepareStats {
  uint64_t train_tokens = 0, val_tokens = 0, documents = 0, bytes = 0;
  std::vector<std::string> shards;
};
/// Tokenize `data_path` into train and val shards under out_dir (created if needed).
Result<PrepareStats> dataset_prepare(const std::string& data_path, const Tokenizer& tok,
                                     const std::string& out_dir, const PrepareOptions& opts);

/// Fixed-length packing of a token stream into training windows of seq_len+1 tokens (inputs
/// and shifted targets), stride seq_len, optionally shuffled per epoch with a seeded
/// permutation. The cursor (epoch, index) is the data state a checkpoint saves for --resume.
class SequencePacker {
 public:
  SequencePacker(const TokenDataset* data, int64_t seq_len, uint64_t seed, bool shuffle);
  /// Number of full windows per epoch.
  uint64_t windows_per_epoch() const { return n_windows_; }
  /// Fill `out` (batch * (seq_len+1) int32) with the next `batch` windows; `windows`, when
  /// given, receives each window's index (window w starts at token w * seq_len), which keys
  /// per-window caches such as the teacher's top-k logits.
  void next_batch(int64_t batch, int32_t* out, uint64_t* windows = nullptr);
  /// Data-parallel form: advance past the next `batch` windows exactly as next_batch does, but
  /// read only windows [first, first + count) of them into `out` (count * (seq_len+1) int32).
  /// Rank r of N takes first = r * batch / N, so the ranks read disjoint shards of one global
  /// batch and N ranks see exactly the windows of one process at N times the batch.
  void next_batch_slice(int64_t batch, int64_t first, int64_t count, int32_t* out,
                        uint64_t* windows = nullptr);
  struct Cursor {
    uint64_t epoch = 0, index = 0;
  };
  Cursor cursor() const { return cursor_; }
  void set_cursor(Cursor c);

 private:
  void shuffle_epoch();
  const TokenDataset* data_;
  int64_t seq_len_;
  uint64_t seed_;
  bool shuffle_;
  uint64_t n_windows_ = 0;
  std::vector<uint64_t> order_;
  Cursor cursor_;
};

/// Non-overlapping evaluation windows over n tokens: [start, start+len) with len = seq_len
/// except a shorter final window (kept if it has at least 2 tokens). A window of len tokens
/// scores len-1 predictions. This is THE perplexity definition shared by `shrink eval` and
/// `shrink-rt eval`.
struct EvalWindow {
  uint64_t start = 0;
  int64_t len = 0;
};
std::vector<EvalWindow> eval_windows(uint64_t n_tokens, int64_t seq_len);

/// The unigram baseline: token frequencies counted on `train` with add-one smoothing over
/// `vocab_size` ids, scored on exactly the positions that perplexity scores in `eval`
/// (eval_windows of seq_len). A language model worth the name must be far below it.
struct UnigramBaseline {
  double perplexity = 0, mean_nll = 0;
  uint64_t tokens_scored = 0;
  int32_t distinct_train_tokens = 0;
};
UnigramBaseline unigram_baseline(const TokenDataset& train, const TokenDataset& eval,
                                 int64_t seq_len, int32_t vocab_size);

}  // namespace shrink::core
