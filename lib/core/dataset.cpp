// Text readers, the document split, token shards, dataset preparation, packing and eval windows.
//
// Readers stream: .txt files are read in raw chunks and handed out as ~1 MiB blocks cut after a
// newline (a single line longer than a block is cut at a UTF-8 boundary); .jsonl and fortune files
// are read line by line. A directory is listed recursively, sorted, and files are deduplicated by
// their canonical path, so fortune's "NAME.u8 -> NAME" symlinks are not read twice.
//
// Shards are streamed to "<path>.tmp" behind a header sized for the largest possible n_tokens,
// the header is rewritten with the real count when the shard closes, then the file is renamed,
// so a writer never holds more than a small buffer and a crash never leaves a complete-looking
// shard. JSON goes through nlohmann::json's non-throwing parse; nothing here throws.
// Tested in tests/core/test_dataset.cpp.
#include "core/dataset.h"
#include "core/json_util.h"

#include <cmath>
#include <algorithm>
#include <cmath>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/fs.h"

namespace shrink::core {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Target size of one .txt block and the flush unit of documents in the other formats: big
// enough that per-block overhead (a tokenizer call) is negligible, small enough to stay cheap.
constexpr size_t kBlockBytes = 1 << 20;
constexpr size_t kReadChunk = 64 << 10;

constexpr char kShardMagic[8] = {'S', 'H', 'R', 'K', 'T', 'O', 'K', '1'};
constexpr uint64_t kShardPrefix = 16;          // magic + uint64 header length
constexpr uint64_t kShardAlign = 64;           // tokens start at a multiple of this offset
constexpr uint64_t kMaxShardHeader = 1 << 20;  // sanity bound when reading a header

enum class FileKind { kTxt, kJsonl, kFortune };

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Is `p` a fortune(6) file: a strfile index "<p>.dat" next to it, or a ".fortune(s)" name.
bool looks_like_fortune(const fs::path& p) {
  std::error_code ec;
  fs::path dat = p;
  dat += ".dat";
  if (fs::is_regular_file(dat, ec)) return true;
  std::string ext = lower(p.extension().string());
  return ext == ".fortune" || ext == ".fortunes";
}

// Kind of a file found in a directory; false for files to skip.
bool kind_in_directory(const fs::path& p, FileKind& kind) {
  std::string ext = lower(p.extension().string());
  if (ext == ".txt") {
    kind = FileKind::kTxt;
    return true;
  }
  if (ext == ".jsonl") {
    kind = FileKind::kJsonl;
    return true;
  }
  if (ext == ".dat") return false;
  if (looks_like_fortune(p)) {
    kind = FileKind::kFortune;
    return true;
  }
  return false;
}

// Kind of a file named directly: .txt unless it is .jsonl or a fortune file.
FileKind kind_of_file(const fs::path& p) {
  if (lower(p.extension().string()) == ".jsonl") return FileKind::kJsonl;
  if (looks_like_fortune(p)) return FileKind::kFortune;
  return FileKind::kTxt;
}

bool all_space(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
}

class FileTextReader : public TextReader {
 public:
  struct Input {
    std::string path;
    FileKind kind;
    uint64_t size;
  };

  explicit FileTextReader(std::vector<Input> inputs) : inputs_(std::move(inputs)) {
    for (const Input& in : inputs_) {
      names_.push_back(in.path);
      total_ += in.size;
    }
  }

  Result<bool> next(TextBlock& block) override {
    while (true) {
      if (!in_.is_open()) {
        if (file_ >= inputs_.size()) return false;
        SHRINK_RETURN_IF_ERROR(open_current());
      }
      bool got = false;
      Status st;
      switch (inputs_[file_].kind) {
        case FileKind::kTxt:
          got = next_txt(block);
          break;
        case FileKind::kJsonl:
          st = next_jsonl(block, got);
          break;
        case FileKind::kFortune:
          got = next_fortune(block);
          break;
      }
      SHRINK_RETURN_IF_ERROR(st);
      if (in_.bad()) return io_error(strfmt("%s: read failed", inputs_[file_].path.c_str()));
      if (got) {
        block.doc_index = doc_index_;
        if (block.ends_document) ++doc_index_;
        return true;
      }
      close_current();
    }
  }

  const std::vector<std::string>& files() const override { return names_; }
  uint64_t bytes_total() const override { return total_; }
  uint64_t bytes_read() const override { return done_before_ + std::min(file_read_, cur_size()); }

 private:
  uint64_t cur_size() const { return file_ < inputs_.size() ? inputs_[file_].size : 0; }

  Status open_current() {
    const Input& f = inputs_[file_];
    in_.open(f.path, std::ios::binary);
    if (!in_) return io_error(strfmt("%s: cannot open for reading", f.path.c_str()));
    file_read_ = 0;
    line_no_ = 0;
    pending_.clear();
    return Status::ok();
  }

  void close_current() {
    in_.close();
    in_.clear();
    done_before_ += inputs_[file_].size;
    file_read_ = 0;
    ++file_;
  }

  // Raw chunks, cut after the last newline of a full block; the file's last block ends the doc.
  bool next_txt(TextBlock& block) {
    std::string chunk(kReadChunk, '\0');
    while (pending_.size() <= kBlockBytes && in_) {
      in_.read(chunk.data(), std::streamsize(chunk.size()));
      pending_.append(chunk.data(), size_t(in_.gcount()));
      file_read_ += uint64_t(in_.gcount());
    }
    bool at_end = !in_ || in_.peek() == std::char_traits<char>::eof();
    if (at_end) {
      if (pending_.empty()) return false;
      block.text.swap(pending_);
      pending_.clear();
      block.ends_document = true;
      return true;
    }
    size_t cut = pending_.rfind('\n', kBlockBytes - 1);
    if (cut == std::string::npos) {
      // One line longer than a block: cut before a UTF-8 continuation byte run.
      cut = kBlockBytes;
      while (cut > 0 && (static_cast<unsigned char>(pending_[cut]) & 0xC0) == 0x80) --cut;
      if (cut == 0) cut = kBlockBytes;
    } else {
      ++cut;
    }
    block.text.assign(pending_, 0, cut);
    pending_.erase(0, cut);
    block.ends_document = false;
    return true;
  }

  bool getline(std::string& line) {
    if (!std::getline(in_, line)) return false;
    ++line_no_;
    file_read_ += line.size() + 1;
    return true;
  }

  Status next_jsonl(TextBlock& block, bool& got) {
    std::string line;
    while (getline(line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (all_space(line)) continue;
      const std::string& path = inputs_[file_].path;
      json j = json_parse_line(line);
      if (j.is_discarded())
        return invalid_input(
            strfmt("%s:%llu: not valid JSON; expected one object per line "
                   "with a string \"text\" field",
                   path.c_str(), (unsigned long long)line_no_));
      if (!j.is_object())
        return invalid_input(
            strfmt("%s:%llu: line is a JSON %s; expected an object with a "
                   "string \"text\" field",
                   path.c_str(), (unsigned long long)line_no_, j.type_name()));
      auto it = j.find("text");
      if (it == j.end() || !it->is_string())
        return invalid_input(
            strfmt("%s:%llu: %s; expected a string \"text\" field", path.c_str(),
                   (unsigned long long)line_no_,
                   it == j.end() ? "no \"text\" field" : "\"text\" is not a string"));
      block.text = it->get<std::string>();
      if (block.text.empty()) continue;
      block.ends_document = true;
      got = true;
      return Status::ok();
    }
    return Status::ok();
  }

  // Documents are the text between lines holding exactly "%"; whitespace-only ones are skipped.
  // A document longer than a block is handed out in pieces (ends_document=false but the last).
  bool next_fortune(TextBlock& block) {
    std::string line;
    while (getline(line)) {
      std::string_view l = line;
      if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
      if (l == "%") {
        if (all_space(pending_)) {
          pending_.clear();
          if (partial_) {
            partial_ = false;
            block.text.clear();
            block.ends_document = true;
            return true;
          }
          continue;
        }
        block.text.swap(pending_);
        pending_.clear();
        block.ends_document = true;
        partial_ = false;
        return true;
      }
      pending_ += line;
      pending_ += '\n';
      if (pending_.size() >= kBlockBytes) {
        block.text.swap(pending_);
        pending_.clear();
        block.ends_document = false;
        partial_ = true;
        return true;
      }
    }
    if (!all_space(pending_) || partial_) {  // last document without a trailing "%"
      block.text.swap(pending_);
      pending_.clear();
      block.ends_document = true;
      partial_ = false;
      return true;
    }
    pending_.clear();
    return false;
  }

  std::vector<Input> inputs_;
  std::vector<std::string> names_;
  uint64_t total_ = 0, done_before_ = 0, file_read_ = 0, line_no_ = 0, doc_index_ = 0;
  size_t file_ = 0;
  std::ifstream in_;
  std::string pending_;
  bool partial_ = false;  // a fortune document has been handed out in part
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void put_u64_le(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = char((v >> (8 * i)) & 0xFF);
}

uint64_t get_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string shard_header_json(const ShardHeader& h) {
  json j = {{"format", "shrink.tokens"},           {"version", 1},
            {"token_bytes", h.token_bytes},        {"n_tokens", h.n_tokens},
            {"vocab_size", h.vocab_size},          {"split", h.split},
            {"tokenizer", h.tokenizer_fingerprint}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Validate a shard header given its JSON bytes, the length field and the file size.
Result<ShardHeader> shard_parse_header(const std::string& path, const std::string& text,
                                       uint64_t header_len, uint64_t file_size) {
  uint64_t data_offset = kShardPrefix + header_len;
  SHRINK_CHECK(data_offset % kShardAlign == 0, StatusCode::kInvalidInput,
               "%s: token data offset %llu is not a multiple of %llu", path.c_str(),
               (unsigned long long)data_offset, (unsigned long long)kShardAlign);
  auto parsed = json_parse_untrusted(text, path + ": shard header");
  if (!parsed.is_ok()) {
    return invalid_input(parsed.status().message() + " (the shard header is not a JSON object)");
  }
  const json j = std::move(parsed.value());
  SHRINK_CHECK(j.is_object(), StatusCode::kInvalidInput,
               "%s: shard header is not a JSON object", path.c_str());
  auto get = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  };
  const json* v = get("format");
  SHRINK_CHECK(v && v->is_string() && v->get<std::string>() == "shrink.tokens",
               StatusCode::kInvalidInput, "%s: header \"format\" must be \"shrink.tokens\"",
               path.c_str());
  v = get("version");
  SHRINK_CHECK(v && v->is_number_integer() && v->get<int64_t>() == 1, StatusCode::kInvalidInput,
               "%s: header \"version\" must be 1 (the only version this build reads)",
               path.c_str());
  ShardHeader h;
  v = get("token_bytes");
  SHRINK_CHECK(v && v->is_number_integer() && (v->get<int64_t>() == 2 || v->get<int64_t>() == 4),
               StatusCode::kInvalidInput, "%s: header \"token_bytes\" must be 2 or 4",
               path.c_str());
  h.token_bytes = int32_t(v->get<int64_t>());
  v = get("n_tokens");
  SHRINK_CHECK(v && v->is_number_unsigned(), StatusCode::kInvalidInput,
               "%s: header \"n_tokens\" must be a non-negative integer", path.c_str());
  h.n_tokens = v->get<uint64_t>();
  v = get("vocab_size");
  SHRINK_CHECK(v && v->is_number_integer() && v->get<int64_t>() > 0 &&
                   v->get<int64_t>() <= int64_t(INT32_MAX),
               StatusCode::kInvalidInput, "%s: header \"vocab_size\" must be a positive int32",
               path.c_str());
  h.vocab_size = int32_t(v->get<int64_t>());
  SHRINK_CHECK(h.token_bytes == 4 || h.vocab_size <= 65536, StatusCode::kInvalidInput,
               "%s: vocab_size %d does not fit token_bytes 2", path.c_str(), h.vocab_size);
  v = get("split");
  SHRINK_CHECK(v && v->is_string(), StatusCode::kInvalidInput,
               "%s: header \"split\" must be a string", path.c_str());
  h.split = v->get<std::string>();
  v = get("tokenizer");
  SHRINK_CHECK(v && v->is_string(), StatusCode::kInvalidInput,
               "%s: header \"tokenizer\" must be a string (the tokenizer fingerprint)",
               path.c_str());
  h.tokenizer_fingerprint = v->get<std::string>();
  SHRINK_CHECK(h.n_tokens <= (UINT64_MAX - data_offset) / uint64_t(h.token_bytes) &&
                   file_size == data_offset + h.n_tokens * uint64_t(h.token_bytes),
               StatusCode::kInvalidInput,
               "%s: file is %llu bytes; expected %llu (data offset %llu + %llu tokens x %d bytes); "
               "the shard is truncated or corrupt",
               path.c_str(), (unsigned long long)file_size,
               (unsigned long long)(data_offset + h.n_tokens * uint64_t(h.token_bytes)),
               (unsigned long long)data_offset, (unsigned long long)h.n_tokens, h.token_bytes);
  return h;
}

// Validate the fixed prefix; returns the header length.
Result<uint64_t> shard_check_prefix(const std::string& path, const uint8_t* p, uint64_t file_size) {
  SHRINK_CHECK(file_size >= kShardPrefix, StatusCode::kInvalidInput,
               "%s: %llu bytes is too short for a token shard", path.c_str(),
               (unsigned long long)file_size);
  SHRINK_CHECK(std::memcmp(p, kShardMagic, 8) == 0, StatusCode::kInvalidInput,
               "%s: not a token shard (magic is not \"SHRKTOK1\")", path.c_str());
  uint64_t len = get_u64_le(p + 8);
  SHRINK_CHECK(len <= kMaxShardHeader && len <= file_size - kShardPrefix, StatusCode::kInvalidInput,
               "%s: header length %llu is out of range (file is %llu bytes)", path.c_str(),
               (unsigned long long)len, (unsigned long long)file_size);
  return len;
}

}  // namespace

// ---- TextReader ---------------------------------------------------------------------------------

Result<std::unique_ptr<TextReader>> TextReader::open(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    return not_found(strfmt("%s: no such file or directory", path.c_str()));
  std::vector<FileTextReader::Input> inputs;
  if (fs::is_directory(st)) {
    std::vector<fs::path> listing;
    fs::recursive_directory_iterator it(path, ec), end;
    if (ec) return io_error(strfmt("%s: cannot list: %s", path.c_str(), ec.message().c_str()));
    for (; it != end; it.increment(ec)) {
      if (ec) return io_error(strfmt("%s: cannot list: %s", path.c_str(), ec.message().c_str()));
      listing.push_back(it->path());
    }
    std::sort(listing.begin(), listing.end());
    std::set<std::string> seen;  // canonical paths: symlinks to a file already read are skipped
    for (const fs::path& p : listing) {
      if (!fs::is_regular_file(p, ec)) continue;  // follows symlinks
      fs::path real = fs::canonical(p, ec);
      if (ec) continue;
      FileKind kind;
      if (!kind_in_directory(real, kind)) continue;
      if (!seen.insert(real.string()).second) continue;
      uint64_t size = fs::file_size(real, ec);
      if (ec) continue;
      inputs.push_back({p.string(), kind, size});
    }
    if (inputs.empty())
      return invalid_input(
          strfmt("%s: no usable input file in the directory; expected .txt, "
                 ".jsonl or fortune files (with a strfile .dat sibling)",
                 path.c_str()));
  } else {
    uint64_t size = fs::file_size(path, ec);
    if (ec) return io_error(strfmt("%s: cannot stat: %s", path.c_str(), ec.message().c_str()));
    inputs.push_back({path, kind_of_file(fs::path(path)), size});
  }
  return std::unique_ptr<TextReader>(new FileTextReader(std::move(inputs)));
}

// ---- Split --------------------------------------------------------------------------------------

const char* split_name(Split s) {
  switch (s) {
    case Split::kTrain:
      return "train";
    case Split::kVal:
      return "val";
    case Split::kAll:
      return "all";
  }
  return "?";
}

Result<Split> split_from_name(const std::string& s) {
  if (s == "train") return Split::kTrain;
  if (s == "val") return Split::kVal;
  if (s == "all") return Split::kAll;
  return invalid_input(
      strfmt("split \"%s\" is not known; expected one of train, val, all", s.c_str()));
}

bool split_is_val(uint64_t doc_index, double val_fraction, uint64_t seed) {
  if (!(val_fraction > 0.0)) return false;
  if (val_fraction >= 1.0) return true;
  // The golden-ratio multiplier spreads consecutive indices before the splitmix64 finalizer.
  uint64_t h = splitmix64(seed ^ (doc_index * 0x9E3779B97F4A7C15ull));
  double u = double(h >> 11) * (1.0 / 9007199254740992.0);  // top 53 bits -> [0, 1)
  return u < val_fraction;
}

// ---- Tokenizing ---------------------------------------------------------------------------------

namespace {

/// Text blocks to ids: the template's prefix (e.g. Llama's BOS) where a document starts, the
/// text, the EOS where it ends. Every block goes through, in order; skipped ones via skip().
class BlockEncoder {
 public:
  explicit BlockEncoder(const Tokenizer& tok)
      : tok_(tok), prefix_(tok.document_prefix()), eos_(tok.eos_id()) {}
  std::vector<int32_t> encode(const TextBlock& b) {
    std::vector<int32_t> ids;
    if (starts_) ids = prefix_;
    const std::vector<int32_t> text = tok_.encode(b.text, /*add_special_tokens=*/false);
    ids.insert(ids.end(), text.begin(), text.end());
    if (b.ends_document && eos_) ids.push_back(*eos_);
    skip(b);
    return ids;
  }
  void skip(const TextBlock& b) { starts_ = b.ends_document; }

 private:
  const Tokenizer& tok_;
  const std::vector<int32_t> prefix_;
  const std::optional<int32_t> eos_;
  bool starts_ = true;
};

}  // namespace

Result<uint64_t> tokenize_stream(TextReader& reader, const Tokenizer& tok,
                                 const TokenizeOptions& opts,
                                 const std::function<void(const std::vector<int32_t>&)>& sink) {
  BlockEncoder enc(tok);
  uint64_t total = 0;
  TextBlock block;
  while (opts.max_tokens == 0 || total < opts.max_tokens) {
    SHRINK_ASSIGN_OR_RETURN(bool got, reader.next(block));
    if (!got) break;
    if (opts.split != Split::kAll &&
        split_is_val(block.doc_index, opts.val_fraction, opts.seed) != (opts.split == Split::kVal)) {
      enc.skip(block);
      continue;
    }
    std::vector<int32_t> ids = enc.encode(block);
    if (opts.max_tokens != 0 && total + ids.size() > opts.max_tokens)
      ids.resize(size_t(opts.max_tokens - total));
    if (ids.empty()) continue;
    total += ids.size();
    sink(ids);
  }
  return total;
}

// ---- ShardWriter --------------------------------------------------------------------------------

struct ShardWriter::Impl {
  std::string dir, split, fingerprint;
  int32_t vocab_size = 0;
  int32_t token_bytes = 2;
  uint64_t shard_tokens = 0;
  uint64_t header_len = 0;  // fixed per writer: sized for the largest n_tokens
  std::vector<std::string> written;
  // The shard being written.
  std::ofstream out;
  std::string path, tmp_path;
  uint64_t n = 0;
  std::vector<char> buf;
  Status error;  // sticky: once failed, every later call fails the same way
  bool finished = false;

  std::string header_bytes(uint64_t n_tokens) const {
    ShardHeader h{token_bytes, n_tokens, vocab_size, split, fingerprint};
    std::string js = shard_header_json(h);
    js.resize(size_t(header_len), ' ');
    std::string out(kShardPrefix, '\0');
    std::memcpy(out.data(), kShardMagic, 8);
    put_u64_le(out.data() + 8, header_len);
    return out + js;
  }

  Status open_shard() {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
      return io_error(strfmt("%s: cannot create directory: %s", dir.c_str(), ec.message().c_str()));
    path = strfmt("%s/%s-%05zu.tok", dir.c_str(), split.c_str(), written.size());
    tmp_path = path + ".tmp";
    out.open(tmp_path, std::ios::binary | std::ios::trunc);
    if (!out) return io_error(strfmt("%s: cannot open for writing", tmp_path.c_str()));
    std::string hb = header_bytes(0);
    out.write(hb.data(), std::streamsize(hb.size()));
    n = 0;
    return Status::ok();
  }

  Status flush_buf() {
    if (!buf.empty()) out.write(buf.data(), std::streamsize(buf.size()));
    buf.clear();
    if (!out) return io_error(strfmt("%s: write failed (disk full?)", tmp_path.c_str()));
    return Status::ok();
  }

  Status close_shard() {
    SHRINK_RETURN_IF_ERROR(flush_buf());
    std::string hb = header_bytes(n);
    out.seekp(0);
    out.write(hb.data(), std::streamsize(hb.size()));
    out.close();
    if (!out) return io_error(strfmt("%s: write failed (disk full?)", tmp_path.c_str()));
    std::error_code ec;
    fs::rename(tmp_path, path, ec);
    if (ec)
      return io_error(strfmt("%s: cannot rename to %s: %s", tmp_path.c_str(), path.c_str(),
                             ec.message().c_str()));
    written.push_back(path);
    tmp_path.clear();
    return Status::ok();
  }

  Status append(const int32_t* tokens, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) {
      int32_t t = tokens[i];
      SHRINK_CHECK(t >= 0 && t < vocab_size, StatusCode::kInvalidInput,
                   "token %d at position %llu is outside the vocabulary [0, %d) of split %s", t,
                   (unsigned long long)i, vocab_size, split.c_str());
      if (!out.is_open()) SHRINK_RETURN_IF_ERROR(open_shard());
      uint32_t u = uint32_t(t);
      for (int b = 0; b < token_bytes; ++b) buf.push_back(char((u >> (8 * b)) & 0xFF));
      ++n;
      if (buf.size() >= kBlockBytes) SHRINK_RETURN_IF_ERROR(flush_buf());
      if (n == shard_tokens) SHRINK_RETURN_IF_ERROR(close_shard());
    }
    return Status::ok();
  }
};

ShardWriter::ShardWriter(std::string dir, std::string split, int32_t vocab_size,
                         std::string fingerprint, uint64_t shard_tokens)
    : impl_(new Impl) {
  impl_->dir = std::move(dir);
  impl_->split = std::move(split);
  impl_->fingerprint = std::move(fingerprint);
  impl_->vocab_size = vocab_size;
  impl_->token_bytes = vocab_size <= 65536 ? 2 : 4;
  impl_->shard_tokens = shard_tokens == 0 ? 1 : shard_tokens;
  // Size the header for a 20-digit n_tokens so it can be rewritten in place at close.
  ShardHeader h{impl_->token_bytes, UINT64_MAX, vocab_size, impl_->split, impl_->fingerprint};
  uint64_t len = shard_header_json(h).size();
  impl_->header_len =
      (kShardPrefix + len + kShardAlign - 1) / kShardAlign * kShardAlign - kShardPrefix;
  if (vocab_size <= 0)
    impl_->error = invalid_input(strfmt("vocab_size %d must be positive", vocab_size));
}

ShardWriter::~ShardWriter() {
  if (impl_->out.is_open()) impl_->out.close();
  if (!impl_->tmp_path.empty()) {
    std::error_code ec;
    fs::remove(impl_->tmp_path, ec);
  }
}

Status ShardWriter::append(const int32_t* tokens, uint64_t n) {
  if (!impl_->error.is_ok()) return impl_->error;
  if (impl_->finished) return internal_error("ShardWriter::append after finish()");
  Status st = impl_->append(tokens, n);
  if (!st.is_ok()) impl_->error = st;
  return st;
}

Result<std::vector<std::string>> ShardWriter::finish() {
  if (!impl_->error.is_ok()) return impl_->error;
  if (impl_->finished) return impl_->written;
  // An empty split still gets one (empty) shard so that the split exists on disk.
  if (!impl_->out.is_open() && impl_->written.empty()) {
    Status st = impl_->open_shard();
    if (!st.is_ok()) return impl_->error = st;
  }
  if (impl_->out.is_open()) {
    Status st = impl_->close_shard();
    if (!st.is_ok()) return impl_->error = st;
  }
  impl_->finished = true;
  return impl_->written;
}

// ---- Reading shards -----------------------------------------------------------------------------

Result<ShardHeader> shard_read_header(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return not_found(strfmt("%s: no such file", path.c_str()));
  uint64_t size = fs::file_size(path, ec);
  if (ec) return io_error(strfmt("%s: cannot stat: %s", path.c_str(), ec.message().c_str()));
  std::ifstream in(path, std::ios::binary);
  if (!in) return io_error(strfmt("%s: cannot open for reading", path.c_str()));
  uint8_t prefix[kShardPrefix] = {};
  in.read(reinterpret_cast<char*>(prefix), std::streamsize(std::min(size, kShardPrefix)));
  SHRINK_ASSIGN_OR_RETURN(uint64_t len, shard_check_prefix(path, prefix, size));
  std::string text(size_t(len), '\0');
  in.read(text.data(), std::streamsize(len));
  if (!in) return io_error(strfmt("%s: read failed", path.c_str()));
  return shard_parse_header(path, text, len, size);
}

Result<TokenDataset> TokenDataset::open(const std::string& path, Split split) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    return not_found(strfmt("%s: no such file or directory", path.c_str()));
  std::vector<std::string> files;
  if (fs::is_directory(path, ec)) {
    std::string prefix = split == Split::kAll ? "" : std::string(split_name(split)) + "-";
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      std::string name = it->path().filename().string();
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tok") == 0 &&
          name.compare(0, prefix.size(), prefix) == 0 && it->is_regular_file(ec))
        files.push_back(it->path().string());
    }
    if (ec) return io_error(strfmt("%s: cannot list: %s", path.c_str(), ec.message().c_str()));
    std::sort(files.begin(), files.end());
    if (files.empty())
      return not_found(
          strfmt("%s: no %s*.tok shards in the directory; run `shrink data "
                 "prepare` to create them",
                 path.c_str(), prefix.c_str()));
  } else {
    files.push_back(path);
  }
  TokenDataset ds;
  for (const std::string& f : files) {
    SHRINK_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mf, MappedFile::open(f));
    SHRINK_ASSIGN_OR_RETURN(uint64_t len, shard_check_prefix(f, mf->data(), mf->size()));
    std::string text(reinterpret_cast<const char*>(mf->data()) + kShardPrefix, size_t(len));
    SHRINK_ASSIGN_OR_RETURN(ShardHeader h, shard_parse_header(f, text, len, mf->size()));
    if (ds.shards_.empty()) {
      ds.vocab_size_ = h.vocab_size;
      ds.fingerprint_ = h.tokenizer_fingerprint;
    } else {
      SHRINK_CHECK(h.vocab_size == ds.vocab_size_, StatusCode::kInvalidInput,
                   "%s: vocab_size %d differs from %d in %s; shards of one dataset must come "
                   "from one tokenizer",
                   f.c_str(), h.vocab_size, ds.vocab_size_, files.front().c_str());
      SHRINK_CHECK(h.tokenizer_fingerprint == ds.fingerprint_, StatusCode::kInvalidInput,
                   "%s: tokenizer fingerprint %s differs from %s in %s; shards of one dataset "
                   "must come from one tokenizer",
                   f.c_str(), h.tokenizer_fingerprint.c_str(), ds.fingerprint_.c_str(),
                   files.front().c_str());
    }
    Shard s;
    s.tokens = mf->data() + kShardPrefix + len;
    s.file = std::move(mf);
    s.token_bytes = h.token_bytes;
    s.begin = ds.total_;
    s.n = h.n_tokens;
    ds.total_ += h.n_tokens;
    ds.shards_.push_back(std::move(s));
  }
  return Result<TokenDataset>(std::move(ds));
}

void TokenDataset::read(uint64_t pos, uint64_t n, int32_t* out) const {
  if (n == 0) return;
  // Last shard whose begin <= pos.
  auto it = std::upper_bound(shards_.begin(), shards_.end(), pos,
                             [](uint64_t p, const Shard& s) { return p < s.begin; });
  size_t si = size_t(it - shards_.begin()) - 1;
  while (n > 0 && si < shards_.size()) {
    const Shard& s = shards_[si];
    uint64_t off = pos - s.begin;
    uint64_t take = std::min(n, s.n - off);
    const uint8_t* p = s.tokens + off * uint64_t(s.token_bytes);
    if (s.token_bytes == 2) {
      for (uint64_t i = 0; i < take; ++i, p += 2) out[i] = int32_t(p[0] | (uint32_t(p[1]) << 8));
    } else {
      for (uint64_t i = 0; i < take; ++i, p += 4)
        out[i] =
            int32_t(p[0] | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24));
    }
    out += take;
    pos += take;
    n -= take;
    ++si;
  }
}

// ---- Preparation --------------------------------------------------------------------------------

Result<PrepareStats> dataset_prepare(const std::string& data_path, const Tokenizer& tok,
                                     const std::string& out_dir, const PrepareOptions& opts) {
  SHRINK_ASSIGN_OR_RETURN(std::unique_ptr<TextReader> reader, TextReader::open(data_path));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec)
    return io_error(
        strfmt("%s: cannot create directory: %s", out_dir.c_str(), ec.message().c_str()));
  const int32_t vocab = tok.vocab_size();
  const std::string fingerprint = tok.fingerprint();
  BlockEncoder enc(tok);
  ShardWriter train(out_dir, "train", vocab, fingerprint, opts.shard_tokens);
  ShardWriter val(out_dir, "val", vocab, fingerprint, opts.shard_tokens);

  PrepareStats stats;
  uint64_t total = 0, next_progress = kBlockBytes;
  TextBlock block;
  while (opts.max_tokens == 0 || total < opts.max_tokens) {
    SHRINK_ASSIGN_OR_RETURN(bool got, reader->next(block));
    if (!got) break;
    bool is_val = split_is_val(block.doc_index, opts.val_fraction, opts.seed);
    std::vector<int32_t> ids = enc.encode(block);
    if (opts.max_tokens != 0 && total + ids.size() > opts.max_tokens)
      ids.resize(size_t(opts.max_tokens - total));
    if (block.ends_document) ++stats.documents;
    total += ids.size();
    if (is_val) {
      SHRINK_RETURN_IF_ERROR(val.append(ids.data(), ids.size()).with_context(data_path));
      stats.val_tokens += ids.size();
    } else {
      SHRINK_RETURN_IF_ERROR(train.append(ids.data(), ids.size()).with_context(data_path));
      stats.train_tokens += ids.size();
    }
    if (opts.progress && reader->bytes_read() >= next_progress) {
      opts.progress(reader->bytes_read(), reader->bytes_total(), total);
      next_progress = reader->bytes_read() + kBlockBytes;
    }
  }
  stats.bytes = reader->bytes_read();
  if (opts.progress) opts.progress(stats.bytes, reader->bytes_total(), total);

  SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> train_shards, train.finish());
  SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> val_shards, val.finish());
  stats.shards = train_shards;
  stats.shards.insert(stats.shards.end(), val_shards.begin(), val_shards.end());

  // Remove shards left by an earlier, larger run, or TokenDataset would read them too.
  std::set<std::string> keep;
  for (const std::string& s : stats.shards) keep.insert(fs::path(s).filename().string());
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    bool ours = (name.rfind("train-", 0) == 0 || name.rfind("val-", 0) == 0) && name.size() > 4 &&
                name.compare(name.size() - 4, 4, ".tok") == 0;
    if (ours && !keep.count(name)) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }

  json summary = {{"format", "shrink.dataset"},
                  {"version", 1},
                  {"source", data_path},
                  {"files", reader->files().size()},
                  {"bytes", stats.bytes},
                  {"documents", stats.documents},
                  {"tokens", {{"train", stats.train_tokens}, {"val", stats.val_tokens}}},
                  {"vocab_size", vocab},
                  {"tokenizer", fingerprint},
                  {"val_fraction", opts.val_fraction},
                  {"seed", opts.seed},
                  {"max_tokens", opts.max_tokens},
                  {"shard_tokens", opts.shard_tokens}};
  SHRINK_RETURN_IF_ERROR(
      write_file_atomic(out_dir + "/dataset.json",
                        summary.dump(2, ' ', false, json::error_handler_t::replace) + "\n"));
  return Result<PrepareStats>(std::move(stats));
}

// ---- Packing ------------------------------------------------------------------------------------

SequencePacker::SequencePacker(const TokenDataset* data, int64_t seq_len, uint64_t seed,
                               bool shuffle)
    : data_(data), seq_len_(seq_len), seed_(seed), shuffle_(shuffle) {
  if (data_ && seq_len_ > 0 && data_->size() >= 2) n_windows_ = (data_->size() - 1) / seq_len_;
  if (shuffle_) shuffle_epoch();
}

void SequencePacker::shuffle_epoch() {
  order_.resize(n_windows_);
  for (uint64_t i = 0; i < n_windows_; ++i) order_[i] = i;
  // Fisher-Yates written out: std::shuffle's algorithm differs between standard libraries, while
  // mt19937_64's output is fixed by the standard. The modulo bias is below n / 2^64: negligible.
  std::mt19937_64 rng(seed_ + cursor_.epoch);
  for (uint64_t i = n_windows_; i > 1; --i) {
    uint64_t j = rng() % i;
    std::swap(order_[i - 1], order_[j]);
  }
}

void SequencePacker::set_cursor(Cursor c) {
  cursor_ = c;
  if (shuffle_) shuffle_epoch();
}

void SequencePacker::next_batch(int64_t batch, int32_t* out, uint64_t* windows) {
  next_batch_slice(batch, 0, batch, out, windows);
}

void SequencePacker::next_batch_slice(int64_t batch, int64_t first, int64_t count, int32_t* out,
                                      uint64_t* windows) {
  const uint64_t w = uint64_t(seq_len_) + 1;
  if (n_windows_ == 0) {  // too little data for one window; callers check windows_per_epoch()
    std::fill(out, out + uint64_t(count) * w, 0);
    return;
  }
  for (int64_t b = 0; b < batch; ++b) {
    if (cursor_.index >= n_windows_) {
      ++cursor_.epoch;
      cursor_.index = 0;
      if (shuffle_) shuffle_epoch();
    }
    uint64_t win = shuffle_ ? order_[cursor_.index] : cursor_.index;
    if (b >= first && b < first + count) {
      data_->read(win * uint64_t(seq_len_), w, out + uint64_t(b - first) * w);
      if (windows) windows[b - first] = win;
    }
    ++cursor_.index;
  }
}

// ---- Evaluation windows -------------------------------------------------------------------------

std::vector<EvalWindow> eval_windows(uint64_t n_tokens, int64_t seq_len) {
  std::vector<EvalWindow> out;
  if (seq_len < 2) return out;  // a window must score at least one prediction
  for (uint64_t start = 0; start < n_tokens; start += uint64_t(seq_len)) {
    int64_t len = int64_t(std::min<uint64_t>(uint64_t(seq_len), n_tokens - start));
    if (len >= 2) out.push_back({start, len});
  }
  return out;
}

bool dataset_is_tokens(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return fs::path(path).extension() == ".tok";
  if (!fs::is_directory(path, ec)) return false;
  if (fs::exists(fs::path(path) / "dataset.json", ec)) return true;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    if (e.path().extension() == ".tok") return true;
  }
  return false;
}

}  // namespace shrink::core

namespace shrink::core {

UnigramBaseline unigram_baseline(const TokenDataset& train, const TokenDataset& eval,
                                 int64_t seq_len, int32_t vocab_size) {
  std::vector<uint64_t> count(size_t(std::max(vocab_size, 1)), 0);
  std::vector<int32_t> buf(1 << 16);
  for (uint64_t pos = 0; pos < train.size(); pos += buf.size()) {
    uint64_t n = std::min<uint64_t>(buf.size(), train.size() - pos);
    train.read(pos, n, buf.data());
    for (uint64_t i = 0; i < n; ++i) {
      if (buf[i] >= 0 && buf[i] < vocab_size) count[size_t(buf[i])]++;
    }
  }
  UnigramBaseline r;
  for (uint64_t c : count) r.distinct_train_tokens += c > 0;
  const double denom = double(train.size()) + double(vocab_size);
  double nll = 0;
  for (const EvalWindow& w : eval_windows(eval.size(), seq_len)) {
    buf.resize(size_t(w.len));
    eval.read(w.start, uint64_t(w.len), buf.data());
    for (int64_t i = 1; i < w.len; ++i) {  // position 0 of a window is context, not scored
      int32_t t = buf[size_t(i)];
      double c = (t >= 0 && t < vocab_size) ? double(count[size_t(t)]) : 0.0;
      nll -= std::log((c + 1.0) / denom);
      r.tokens_scored++;
    }
  }
  r.mean_nll = r.tokens_scored ? nll / double(r.tokens_scored) : 0.0;
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace shrink::core
