// Byte-level BPE tokenizer: tokenizer.json parsing and writing, the GPT-2 pre-tokenizer, encode
// and decode (see core/tokenizer.h for what is supported).
//
// Design: text is first cut at added tokens (leftmost, longest match), each remaining segment is
// split by a hand-written matcher of the GPT-2 regex over code points classified with generated
// tables (core/unicode_tables.h), and each pre-token's bytes go through the byte-to-unicode map
// to base ids that are merged lowest rank first (a min-heap keyed by (rank, position) over a
// linked list of symbols, the order Hugging Face applies merges in, so ids agree with it). Merge
// results are cached per pre-token word behind a shared_mutex, so a const Tokenizer can encode
// from many threads. JSON goes through nlohmann's non-throwing entry points and explicit type
// checks, because core must not throw.
// Tested in tests/core/test_tokenizer.cpp.
#include "core/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include "core/json_util.h"
#include "core/token_pair.h"
#include "core/unicode_nfc.h"
#include "core/utf8.h"
#include "core/unicode_tables.h"

namespace shrink::core {

namespace {

using Json = nlohmann::ordered_json;

// Ids above this are refused at load: id_to_token is a dense vector, and no real vocabulary comes
// near 16M entries (the largest in use are ~256k).
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;
// Words longer than this are merged but not cached (long runs of one character would fill the
// cache with entries that never repeat).
constexpr size_t kMaxCachedWordBytes = 256;
// The cache is cleared when it reaches this many words; bounds memory on endless streams.
constexpr size_t kMaxCacheEntries = 1 << 18;

// ---------------------------------------------------------------------------------------------
// The GPT-2 byte map

/// GPT-2's bytes_to_unicode: bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves;
/// the other 68 bytes, in byte order, become U+0100, U+0101, ... so every byte is printable.
struct ByteMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 512> cp_to_byte{};  // all mapped code points are below U+0144

  ByteMap() {
    cp_to_byte.fill(-1);
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = keep ? uint32_t(b) : 256 + n++;
      cp_to_byte[byte_to_cp[b]] = int16_t(b);
      utf8_append(byte_to_utf8[b], byte_to_cp[b]);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap kMap;
  return kMap;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 pre-tokenizer

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

struct CodePoint {
  uint32_t cp;   // kInvalidCp for a byte that is not valid UTF-8
  uint32_t off;  // byte offset in the text
  CharClass cls;
};
constexpr uint32_t kInvalidCp = 0xFFFFFFFF;

CharClass classify(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (cp == kInvalidCp) return CharClass::kOther;
  if (unicode_is_letter(cp)) return CharClass::kLetter;
  if (unicode_is_number(cp)) return CharClass::kNumber;
  if (unicode_is_space(cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

/// Length (in code points) of the GPT-2 regex match starting at cps[i]; always >= 1.
size_t gpt2_match(const std::vector<CodePoint>& cps, size_t i) {
  const size_t n = cps.size();
  auto cp_at = [&](size_t k) { return k < n ? cps[k].cp : kInvalidCp; };
  auto run = [&](size_t k, CharClass c) {  // end of the run of class c starting at k
    while (k < n && cps[k].cls == c) ++k;
    return k;
  };
  // 's|'t|'re|'ve|'m|'ll|'d
  if (cps[i].cp == '\'') {
    const uint32_t c1 = cp_at(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    const uint32_t c2 = cp_at(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  }
  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class.
  // ' ' is itself \s, so without the space the run must start at i.
  const size_t start =
      (cps[i].cp == ' ' && i + 1 < n && cps[i + 1].cls != CharClass::kSpace) ? i + 1 : i;
  if (cps[start].cls != CharClass::kSpace) return run(start, cps[start].cls) - i;
  // \s+(?!\S): the whitespace run, less its last character when a non-space follows (a run of
  // one followed by a non-space cannot satisfy the lookahead and falls through to \s+).
  const size_t end = run(i, CharClass::kSpace);
  if (end == n || end - i == 1) return end - i;
  return end - i - 1;
}

/// Length of the match at cps[i] of the split regex of Llama 3 (max_digits 3) and Qwen2
/// (max_digits 1), Hugging Face `Split` pre-tokenizers with Isolated behaviour:
///   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
///   \s*[\r\n]+|\s+(?!\S)|\s+
/// Every code point is matched by one alternative, so the pieces cover the text. Always >= 1.
size_t llama3_match(const std::vector<CodePoint>& cps, size_t i, size_t max_digits) {
  const size_t n = cps.size();
  auto run = [&](size_t k, CharClass c) {
    while (k < n && cps[k].cls == c) ++k;
    return k;
  };
  auto newline = [&](size_t k) { return cps[k].cp == '\r' || cps[k].cp == '\n'; };
  // (?i:'s|'t|'re|'ve|'m|'ll|'d): simple case folding, so U+017F (long s) is an 's'.
  if (cps[i].cp == '\'') {
    auto fold = [&](size_t k) -> uint32_t {
      uint32_t c = k < n ? cps[k].cp : 0;
      if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
      return c == 0x17F ? uint32_t('s') : c;
    };
    const uint32_t c1 = fold(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    const uint32_t c2 = fold(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  }
  const CharClass c0 = cps[i].cls;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0 == CharClass::kLetter) return run(i, CharClass::kLetter) - i;
  if (c0 != CharClass::kNumber && !newline(i) && i + 1 < n && cps[i + 1].cls == CharClass::kLetter) {
    return run(i + 1, CharClass::kLetter) - i;
  }
  // \p{N}{1,max_digits}
  if (c0 == CharClass::kNumber) return std::min(run(i, CharClass::kNumber) - i, max_digits);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t s = (cps[i].cp == ' ' && i + 1 < n && cps[i + 1].cls == CharClass::kOther) ? i + 1 : i;
  if (cps[s].cls == CharClass::kOther) {
    size_t e = run(s, CharClass::kOther);
    while (e < n && newline(e)) ++e;
    return e - i;
  }
  // Whitespace. \s*[\r\n]+ ends after the run's last newline, if it has one.
  const size_t e = run(i, CharClass::kSpace);
  for (size_t k = e; k > i; --k) {
    if (newline(k - 1)) return k - i;
  }
  // \s+(?!\S), else \s+ (as in gpt2_match)
  if (e == n || e - i == 1) return e - i;
  return e - i - 1;
}

bool is_ascii_space(char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}
bool is_ascii_word(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// ---------------------------------------------------------------------------------------------
// Small helpers

std::string squote(const std::string& s) {
  return "'" + s + "'";
}

Status field_error(const std::string& origin, const std::string& field, const std::string& msg) {
  return invalid_input(origin + ": " + field + ": " + msg);
}

const char* json_kind(const Json& j) {
  return j.type_name();
}

/// Reads an optional bool field; a missing or null field keeps `*out`.
Status read_bool(const Json& obj, const char* key, const std::string& origin,
                 const std::string& path, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::ok();
  if (!it->is_boolean()) {
    return field_error(origin, path + "." + key,
                       std::string(json_kind(*it)) + " is not a boolean");
  }
  *out = it->get<bool>();
  return Status::ok();
}

/// The "type" string of a JSON component (pre_tokenizer, decoder...), or "" if absent.
std::string type_of(const Json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public free functions

namespace {

std::vector<CodePoint> code_points(std::string_view text) {
  std::vector<CodePoint> cps;
  cps.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = 0;
    size_t len = utf8_decode(text, i, &cp);
    if (len == 0) cp = kInvalidCp, len = 1;
    cps.push_back({cp, uint32_t(i), classify(cp)});
    i += len;
  }
  return cps;
}

/// Cuts `text` at the matches of `match` (a function of (cps, i) returning a length >= 1).
template <typename Match>
void split_matches(std::string_view text, Match match, std::vector<std::string_view>& pieces) {
  const std::vector<CodePoint> cps = code_points(text);
  for (size_t i = 0; i < cps.size();) {
    const size_t j = i + match(cps, i);
    const size_t b0 = cps[i].off;
    const size_t b1 = j < cps.size() ? cps[j].off : text.size();
    pieces.push_back(text.substr(b0, b1 - b0));
    i = j;
  }
}

}  // namespace

std::vector<std::string_view> pretokenize_gpt2(std::string_view text) {
  std::vector<std::string_view> pieces;
  split_matches(text, gpt2_match, pieces);
  return pieces;
}

std::vector<std::string_view> pretokenize_llama3(std::string_view text, size_t max_digits) {
  std::vector<std::string_view> pieces;
  split_matches(
      text, [&](const std::vector<CodePoint>& c, size_t i) { return llama3_match(c, i, max_digits); },
      pieces);
  return pieces;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += m.byte_to_utf8[uint8_t(c)];
  return out;
}

bool byte_level_decode(std::string_view text, std::string& bytes) {
  const ByteMap& m = byte_map();
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = 0;
    const size_t len = utf8_decode(text, i, &cp);
    if (len == 0 || cp >= m.cp_to_byte.size() || m.cp_to_byte[cp] < 0) return false;
    bytes += char(m.cp_to_byte[cp]);
    i += len;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer::Impl

namespace {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

struct MergeInfo {
  int32_t rank;
  int32_t id;
};

/// One element of a TemplateProcessing "single" template: the input sequence or fixed ids.
struct TemplateItem {
  bool is_sequence = false;
  std::vector<int32_t> ids;
};

/// One normalizer of the pipeline (applied in order to each text segment between added tokens).
struct NormStep {
  enum class Kind { kNfc, kPrepend, kReplace };
  Kind kind = Kind::kNfc;
  std::string from, to;  // kPrepend: to; kReplace: from -> to
};

enum class SplitRegex { kGpt2, kLlama3, kQwen2 };

/// One pre-tokenizer of the pipeline (each splits every piece the previous ones produced).
struct PreStep {
  enum class Kind { kSplit, kDigits, kByteLevel, kMetaspace };
  Kind kind = Kind::kByteLevel;
  SplitRegex regex = SplitRegex::kGpt2;  // kSplit
  bool individual_digits = false;        // kDigits
  bool add_prefix_space = false;         // kByteLevel
  bool use_regex = true;                 // kByteLevel
  std::string replacement;               // kMetaspace
  enum class Prepend { kNever, kFirst, kAlways } prepend = Prepend::kAlways;  // kMetaspace
  bool split = true;                                                          // kMetaspace
};

/// One decoder of the pipeline (over the list of token strings).
struct DecStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind = Kind::kByteLevel;
  std::string from, to;        // kReplace; kStrip: from = the character; kMetaspace: from
  int start = 0, stop = 0;     // kStrip
  bool drop_first = false;     // kMetaspace: prepend_scheme is not "never"
};

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) {
    out.append(s, i, j - i);
    out += to;
  }
  out.append(s, i, std::string::npos);
  s = std::move(out);
}

}  // namespace

struct Tokenizer::Impl {
  // model
  std::unordered_map<std::string, int32_t> vocab;           // token string -> id
  std::vector<std::string> id_to_vocab;                     // id -> token string ("" where unused)
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  std::unordered_map<uint64_t, MergeInfo, PairHash> merge_map;
  std::array<int32_t, 256> byte_ids{};      // id of each byte's byte-level symbol, or -1
  std::array<int32_t, 256> fallback_ids{};  // id of each byte's <0xNN> token, or -1
  std::unordered_map<uint32_t, int32_t> char_ids;  // one-code-point tokens (SentencePiece form)
  std::optional<std::string> unk_token;
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;
  bool byte_fallback = false;

  // added tokens
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::array<std::vector<size_t>, 256> added_by_first_byte;  // longest first

  // pipeline
  bool byte_level = true;  // a ByteLevel pre-tokenizer: BPE runs over GPT-2 byte symbols
  std::vector<NormStep> norm;
  std::vector<PreStep> pre;
  std::vector<DecStep> dec;
  // The components as loaded (or GPT-2's, for the trainer), written back verbatim by to_json.
  Json normalizer_json, pre_tokenizer_json, decoder_json;
  std::vector<TemplateItem> single_template;
  bool has_template = false;
  Json post_processor;  // written back verbatim when it holds a template

  // per-word merge cache
  mutable std::shared_mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  int32_t max_id() const {
    int32_t m = int32_t(id_to_vocab.size()) - 1;
    for (const auto& a : added) m = std::max(m, a.id);
    return m;
  }
  /// The GPT-2 pipeline: ByteLevel pre-tokenizer (no prefix space, GPT-2 regex) and decoder.
  void set_gpt2_pipeline() {
    byte_level = true;
    norm.clear();
    pre.assign(1, PreStep());
    dec.assign(1, DecStep());
    normalizer_json = nullptr;
    pre_tokenizer_json = Json{{"type", "ByteLevel"},
                              {"add_prefix_space", false},
                              {"trim_offsets", true},
                              {"use_regex", true}};
    decoder_json = Json{{"type", "ByteLevel"},
                        {"add_prefix_space", true},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  }

  Status set_vocab(std::vector<std::string> by_id, const std::string& origin);
  Status set_merges(std::vector<std::pair<std::string, std::string>> list,
                    const std::string& origin);
  Status add_token(AddedToken tok, const std::string& origin, const std::string& field);
  void index_added();

  void initial_symbols(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view seg, bool at_origin, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
};

Status Tokenizer::Impl::set_vocab(std::vector<std::string> by_id, const std::string& origin) {
  vocab.clear();
  vocab.reserve(by_id.size());
  char_ids.clear();
  for (size_t id = 0; id < by_id.size(); ++id) {
    if (by_id[id].empty()) continue;
    auto [it, fresh] = vocab.emplace(by_id[id], int32_t(id));
    if (!fresh) {
      return field_error(
          origin, "model.vocab",
          strfmt("token %s has two ids, %d and %zu", squote(by_id[id]).c_str(), it->second, id));
    }
    uint32_t cp = 0;
    if (utf8_decode(by_id[id], 0, &cp) == by_id[id].size()) char_ids.emplace(cp, int32_t(id));
  }
  id_to_vocab = std::move(by_id);
  const ByteMap& m = byte_map();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(m.byte_to_utf8[b]);
    byte_ids[b] = it == vocab.end() ? -1 : it->second;
    auto fb = vocab.find(strfmt("<0x%02X>", b));
    fallback_ids[b] = fb == vocab.end() ? -1 : fb->second;
  }
  return Status::ok();
}

Status Tokenizer::Impl::set_merges(std::vector<std::pair<std::string, std::string>> list,
                                   const std::string& origin) {
  merge_map.clear();
  merge_map.reserve(list.size());
  for (size_t r = 0; r < list.size(); ++r) {
    const auto& [a, b] = list[r];
    const std::string field = strfmt("model.merges[%zu]", r);
    auto ia = vocab.find(a);
    if (ia == vocab.end()) {
      return field_error(origin, field, squote(a) + " is not in model.vocab");
    }
    auto ib = vocab.find(b);
    if (ib == vocab.end()) {
      return field_error(origin, field, squote(b) + " is not in model.vocab");
    }
    auto im = vocab.find(a + b);
    if (im == vocab.end()) {
      return field_error(origin, field,
                         "the merged token " + squote(a + b) + " is not in model.vocab");
    }
    // Like Hugging Face, a repeated pair takes the rank of its last occurrence.
    merge_map[pair_key(ia->second, ib->second)] = MergeInfo{int32_t(r), im->second};
  }
  merges = std::move(list);
  return Status::ok();
}

Status Tokenizer::Impl::add_token(AddedToken tok, const std::string& origin,
                                  const std::string& field) {
  if (tok.id < 0 || tok.id > kMaxTokenId) {
    return field_error(origin, field + ".id",
                       strfmt("%d is out of range; expected 0..%lld", tok.id,
                              static_cast<long long>(kMaxTokenId)));
  }
  if (added_by_id.count(tok.id)) {
    return field_error(origin, field + ".id", strfmt("id %d is used by two added tokens", tok.id));
  }
  added_by_id[tok.id] = added.size();
  added.push_back(std::move(tok));
  return Status::ok();
}

void Tokenizer::Impl::index_added() {
  for (auto& v : added_by_first_byte) v.clear();
  for (size_t k = 0; k < added.size(); ++k) {
    if (added[k].content.empty()) continue;
    added_by_first_byte[uint8_t(added[k].content[0])].push_back(k);
  }
  for (auto& v : added_by_first_byte) {
    std::stable_sort(v.begin(), v.end(), [&](size_t x, size_t y) {
      return added[x].content.size() > added[y].content.size();
    });
  }
}

void Tokenizer::Impl::initial_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  // A symbol the vocabulary lacks becomes the unknown token if there is one (fused with a
  // preceding unknown when fuse_unk), else it is dropped, as Hugging Face does.
  auto unknown = [&]() {
    if (!unk_id) return;
    if (fuse_unk && !ids.empty() && ids.back() == *unk_id) return;
    ids.push_back(*unk_id);
  };
  if (byte_level) {
    for (char c : word) {
      const int32_t id = byte_ids[uint8_t(c)];
      id >= 0 ? ids.push_back(id) : unknown();
    }
    return;
  }
  // SentencePiece form: one symbol per code point; with byte_fallback, a character the
  // vocabulary lacks becomes its UTF-8 bytes' <0xNN> tokens when all of them exist.
  for (size_t i = 0; i < word.size();) {
    uint32_t cp = 0;
    size_t len = utf8_decode(word, i, &cp);
    if (len == 0) cp = kInvalidCp, len = 1;
    auto it = cp == kInvalidCp ? char_ids.end() : char_ids.find(cp);
    if (it != char_ids.end()) {
      ids.push_back(it->second);
    } else {
      bool all = byte_fallback;
      for (size_t k = 0; all && k < len; ++k) all = fallback_ids[uint8_t(word[i + k])] >= 0;
      if (all) {
        for (size_t k = 0; k < len; ++k) ids.push_back(fallback_ids[uint8_t(word[i + k])]);
      } else {
        unknown();
      }
    }
    i += len;
  }
}

void Tokenizer::Impl::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = vocab.find(byte_level ? byte_level_encode(word) : std::string(word));
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  initial_symbols(word, ids);
  struct Node {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  std::vector<Node> nodes(ids.size());
  for (size_t k = 0; k < ids.size(); ++k) {
    nodes[k] = {ids[k], int32_t(k) - 1, k + 1 < ids.size() ? int32_t(k + 1) : -1};
  }
  if (nodes.size() > 1 && !merge_map.empty()) {
    struct Cand {
      int32_t rank;
      int32_t pos;
      int32_t left;
      int32_t right;
      int32_t merged;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto consider = [&](int32_t pos) {
      const int32_t nx = nodes[pos].next;
      if (nx < 0) return;
      auto it = merge_map.find(pair_key(nodes[pos].id, nodes[nx].id));
      if (it != merge_map.end()) {
        heap.push({it->second.rank, pos, nodes[pos].id, nodes[nx].id, it->second.id});
      }
    };
    for (int32_t k = 0; k + 1 < int32_t(nodes.size()); ++k) consider(k);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Node& left = nodes[c.pos];
      // Stale if either symbol changed since the candidate was pushed (merged nodes are dead).
      if (left.id != c.left || left.next < 0 || nodes[left.next].id != c.right) continue;
      Node& right = nodes[left.next];
      left.id = c.merged;
      left.next = right.next;
      if (right.next >= 0) nodes[right.next].prev = c.pos;
      right.id = -1;
      if (left.prev >= 0) consider(left.prev);
      consider(c.pos);
    }
  }
  for (int32_t k = nodes.empty() ? -1 : 0; k >= 0; k = nodes[k].next) out.push_back(nodes[k].id);
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() > kMaxCachedWordBytes) {
    merge_word(word, out);
    return;
  }
  std::string key(word);
  {
    std::shared_lock<std::shared_mutex> lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  std::unique_lock<std::shared_mutex> lock(cache_mu);
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(std::move(key), std::move(ids));
}

void Tokenizer::Impl::encode_segment(std::string_view seg, bool at_origin,
                                     std::vector<int32_t>& out) const {
  if (seg.empty()) return;
  // Fast path: the GPT-2 pipeline (one ByteLevel pre-tokenizer) needs no copies.
  if (norm.empty() && pre.size() == 1 && pre[0].kind == PreStep::Kind::kByteLevel) {
    std::string prefixed;
    if (pre[0].add_prefix_space && seg[0] != ' ') {
      prefixed.reserve(seg.size() + 1);
      prefixed += ' ';
      prefixed += seg;
      seg = prefixed;
    }
    if (!pre[0].use_regex) {
      encode_word(seg, out);
      return;
    }
    for (std::string_view w : pretokenize_gpt2(seg)) encode_word(w, out);
    return;
  }
  std::string text(seg);
  for (const NormStep& n : norm) {
    switch (n.kind) {
      case NormStep::Kind::kNfc: text = nfc(text); break;
      case NormStep::Kind::kPrepend:
        if (!text.empty()) text.insert(0, n.to);
        break;
      case NormStep::Kind::kReplace: replace_all(text, n.from, n.to); break;
    }
  }
  // Pieces are strings here because Metaspace and ByteLevel's prefix space rewrite them.
  std::vector<std::string> pieces{std::move(text)};
  std::vector<std::string> next;
  std::vector<std::string_view> cut;
  for (const PreStep& p : pre) {
    next.clear();
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::string& piece = pieces[k];
      cut.clear();
      switch (p.kind) {
        case PreStep::Kind::kSplit:
          if (p.regex == SplitRegex::kGpt2) {
            split_matches(piece, gpt2_match, cut);
          } else {
            const size_t digits = p.regex == SplitRegex::kLlama3 ? 3 : 1;
            split_matches(
                piece,
                [&](const std::vector<CodePoint>& c, size_t i) { return llama3_match(c, i, digits); },
                cut);
          }
          break;
        case PreStep::Kind::kDigits:
          // Hugging Face's char::is_numeric is \p{N}: each digit alone (Isolated), or runs of
          // them (Contiguous).
          split_matches(
              piece,
              [&](const std::vector<CodePoint>& c, size_t i) {
                const bool num = c[i].cls == CharClass::kNumber;
                if (num && p.individual_digits) return size_t(1);
                size_t j = i + 1;
                while (j < c.size() && (c[j].cls == CharClass::kNumber) == num) ++j;
                return j - i;
              },
              cut);
          break;
        case PreStep::Kind::kByteLevel:
          if (p.add_prefix_space && !piece.empty() && piece[0] != ' ') piece.insert(0, " ");
          if (p.use_regex) {
            split_matches(piece, gpt2_match, cut);
          } else {
            cut.push_back(piece);
          }
          break;
        case PreStep::Kind::kMetaspace: {
          replace_all(piece, " ", p.replacement);
          const bool starts = piece.compare(0, p.replacement.size(), p.replacement) == 0;
          if (!starts && (p.prepend == PreStep::Prepend::kAlways ||
                          (p.prepend == PreStep::Prepend::kFirst && at_origin && k == 0))) {
            piece.insert(0, p.replacement);
          }
          if (!p.split) {
            cut.push_back(piece);
            break;
          }
          // MergedWithNext: each replacement starts a new piece.
          std::string_view v(piece);
          size_t from = 0;
          for (size_t j = v.find(p.replacement, 1); j != std::string_view::npos;
               j = v.find(p.replacement, j + 1)) {
            cut.push_back(v.substr(from, j - from));
            from = j;
          }
          cut.push_back(v.substr(from));
          break;
        }
      }
      for (std::string_view c : cut) {
        if (!c.empty()) next.emplace_back(c);
      }
    }
    pieces.swap(next);
  }
  for (const std::string& w : pieces) encode_word(w, out);
}

void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  const size_t n = text.size();
  size_t seg_start = 0;
  size_t i = 0;
  while (i < n) {
    const AddedToken* hit = nullptr;
    for (size_t k : added_by_first_byte[uint8_t(text[i])]) {
      const AddedToken& t = added[k];
      if (t.content.size() > n - i || text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const size_t e = i + t.content.size();
        if ((i > 0 && is_ascii_word(text[i - 1])) || (e < n && is_ascii_word(text[e]))) continue;
      }
      hit = &t;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t s = i;
    size_t e = i + hit->content.size();
    // lstrip / rstrip swallow neighbouring (ASCII) whitespace into the token.
    if (hit->lstrip) {
      while (s > seg_start && is_ascii_space(text[s - 1])) --s;
    }
    if (hit->rstrip) {
      while (e < n && is_ascii_space(text[e])) ++e;
    }
    encode_segment(text.substr(seg_start, s - seg_start), seg_start == 0, out);
    out.push_back(hit->id);
    seg_start = i = e;
  }
  encode_segment(text.substr(seg_start), seg_start == 0, out);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {
  impl_->byte_ids.fill(-1);
  impl_->fallback_ids.fill(-1);
  impl_->set_gpt2_pipeline();
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Result<Tokenizer> Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return not_found(path + ": cannot open tokenizer file");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return io_error(path + ": read failed");
  return from_json(ss.str(), path);
}

namespace {

Status parse_model(const Json& model, const std::string& origin, int64_t n_added,
                   Tokenizer::Impl& impl) {
  if (!model.is_object()) {
    return field_error(origin, "model", std::string(json_kind(model)) + " is not an object");
  }
  auto type_it = model.find("type");
  if (type_it != model.end()) {
    if (!type_it->is_string() || type_it->get<std::string>() != "BPE") {
      return field_error(
          origin, "model.type",
          squote(type_it->is_string() ? type_it->get<std::string>() : json_brief(*type_it)) +
              " is not supported; expected 'BPE'");
    }
  }
  // vocab
  auto vit = model.find("vocab");
  if (vit == model.end() || !vit->is_object()) {
    return field_error(origin, "model.vocab", "missing or not an object of token -> id");
  }
  const int64_t id_bound = int64_t(vit->size()) + n_added;
  std::vector<std::string> by_id;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    const std::string& tok = it.key();
    if (!it->is_number_integer()) {
      return field_error(origin, "model.vocab[" + squote(tok) + "]",
                         std::string(json_kind(*it)) + " is not an integer id");
    }
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id > kMaxTokenId) {
      return field_error(origin, "model.vocab[" + squote(tok) + "]",
                         strfmt("%lld is out of range; expected 0..%lld",
                                static_cast<long long>(id), static_cast<long long>(kMaxTokenId)));
    }
    if (tok.empty()) {
      return field_error(origin, "model.vocab", "the empty string is not a valid token");
    }
    // Ids are dense in real tokenizers; the gaps may hold only added tokens. A sparse id such
    // as 16777215 in a small vocabulary would otherwise size by_id by the id, not the input.
    if (id >= id_bound) {
      return field_error(origin, "model.vocab[" + squote(tok) + "]",
                         strfmt("id %lld is beyond the vocabulary; expected ids below %lld (%zu "
                                "model.vocab entries plus the added tokens)",
                                static_cast<long long>(id), static_cast<long long>(id_bound),
                                vit->size()));
    }
    if (size_t(id) >= by_id.size()) by_id.resize(size_t(id) + 1);
    if (!by_id[size_t(id)].empty()) {
      return field_error(origin, "model.vocab[" + squote(tok) + "]",
                         strfmt("id %lld is already used by ", static_cast<long long>(id)) +
                             squote(by_id[size_t(id)]));
    }
    by_id[size_t(id)] = tok;
  }
  SHRINK_RETURN_IF_ERROR(impl.set_vocab(std::move(by_id), origin));

  // merges
  auto mit = model.find("merges");
  if (mit == model.end() || !mit->is_array()) {
    return field_error(origin, "model.merges", "missing or not an array");
  }
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(mit->size());
  for (size_t r = 0; r < mit->size(); ++r) {
    const Json& m = (*mit)[r];
    const std::string field = strfmt("model.merges[%zu]", r);
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() ||
          s.find(' ', sp + 1) != std::string::npos) {
        return field_error(origin, field,
                           squote(s) + " is not a pair; expected \"left right\" (one space)");
      }
      merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return field_error(
          origin, field,
          json_brief(m) + " is not a pair; expected \"left right\" or [\"left\", \"right\"]");
    }
  }
  SHRINK_RETURN_IF_ERROR(impl.set_merges(std::move(merges), origin));

  // options that change the algorithm
  auto dit = model.find("dropout");
  if (dit != model.end() && !dit->is_null()) {
    if (!dit->is_number() || dit->get<double>() != 0.0) {
      return field_error(origin, "model.dropout",
                         json_brief(*dit) + " is not supported; expected null (deterministic BPE)");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() &&
        !(it->is_string() && it->get<std::string>().empty())) {
      return field_error(origin, std::string("model.") + key,
                         json_brief(*it) + " is not supported; expected null");
    }
  }
  SHRINK_RETURN_IF_ERROR(read_bool(model, "byte_fallback", origin, "model", &impl.byte_fallback));
  SHRINK_RETURN_IF_ERROR(read_bool(model, "fuse_unk", origin, "model", &impl.fuse_unk));
  SHRINK_RETURN_IF_ERROR(read_bool(model, "ignore_merges", origin, "model", &impl.ignore_merges));
  auto uit = model.find("unk_token");
  if (uit != model.end() && !uit->is_null()) {
    if (!uit->is_string()) {
      return field_error(origin, "model.unk_token",
                         std::string(json_kind(*uit)) + " is not a string");
    }
    impl.unk_token = uit->get<std::string>();
    auto it = impl.vocab.find(*impl.unk_token);
    if (it != impl.vocab.end()) impl.unk_id = it->second;
  }
  return Status::ok();
}

Status parse_added_tokens(const Json& root, const std::string& origin, Tokenizer::Impl& impl) {
  auto ait = root.find("added_tokens");
  if (ait == root.end() || ait->is_null()) return Status::ok();
  if (!ait->is_array()) {
    return field_error(origin, "added_tokens",
                       std::string(json_kind(*ait)) + " is not an array");
  }
  for (size_t k = 0; k < ait->size(); ++k) {
    const Json& t = (*ait)[k];
    const std::string field = strfmt("added_tokens[%zu]", k);
    if (!t.is_object()) {
      return field_error(origin, field, std::string(json_kind(t)) + " is not an object");
    }
    AddedToken tok;
    auto id = t.find("id");
    if (id == t.end() || !id->is_number_integer()) {
      return field_error(origin, field + ".id", "missing or not an integer");
    }
    const int64_t id64 = id->get<int64_t>();
    tok.id = (id64 < 0 || id64 > kMaxTokenId) ? -1 : int32_t(id64);
    auto content = t.find("content");
    if (content == t.end() || !content->is_string() || content->get<std::string>().empty()) {
      return field_error(origin, field + ".content", "missing, empty or not a string");
    }
    tok.content = content->get<std::string>();
    SHRINK_RETURN_IF_ERROR(read_bool(t, "special", origin, field, &tok.special));
    SHRINK_RETURN_IF_ERROR(read_bool(t, "single_word", origin, field, &tok.single_word));
    SHRINK_RETURN_IF_ERROR(read_bool(t, "lstrip", origin, field, &tok.lstrip));
    SHRINK_RETURN_IF_ERROR(read_bool(t, "rstrip", origin, field, &tok.rstrip));
    SHRINK_RETURN_IF_ERROR(read_bool(t, "normalized", origin, field, &tok.normalized));
    SHRINK_RETURN_IF_ERROR(impl.add_token(std::move(tok), origin, field));
  }
  impl.index_added();
  return Status::ok();
}

/// Reads an optional string field; a missing or null field keeps `*out`.
Status read_string(const Json& obj, const char* key, const std::string& origin,
                   const std::string& path, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::ok();
  if (!it->is_string()) {
    return field_error(origin, path + "." + key,
                       std::string(json_kind(*it)) + " is not a string");
  }
  *out = it->get<std::string>();
  return Status::ok();
}

/// Whether `s` is exactly one UTF-8 character (Metaspace's replacement, Strip's content).
bool one_char(const std::string& s) {
  uint32_t cp = 0;
  return !s.empty() && utf8_decode(s, 0, &cp) == s.size();
}

/// The items of a "Sequence" component (`key` names its array), or the component itself.
Status sequence_items(const Json& j, const char* key, const std::string& origin,
                      const std::string& path, std::vector<std::pair<const Json*, std::string>>* out) {
  if (type_of(j) != "Sequence") {
    out->emplace_back(&j, path);
    return Status::ok();
  }
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) {
    return field_error(origin, path + "." + key, "missing or not an array");
  }
  for (size_t k = 0; k < it->size(); ++k) {
    out->emplace_back(&(*it)[k], strfmt("%s.%s[%zu]", path.c_str(), key, k));
  }
  return Status::ok();
}

/// A {"String": s} pattern (Replace); Regex patterns are refused.
Status string_pattern(const Json& j, const std::string& origin, const std::string& path,
                      std::string* out) {
  auto it = j.find("pattern");
  if (it == j.end() || !it->is_object() || !it->contains("String") || !(*it)["String"].is_string()) {
    return field_error(origin, path + ".pattern",
                       (it == j.end() ? std::string("missing") : json_brief(*it)) +
                           " is not supported; expected {\"String\": ...}");
  }
  *out = (*it)["String"].get<std::string>();
  if (out->empty()) return field_error(origin, path + ".pattern", "the empty string");
  return Status::ok();
}

Status parse_normalizer(const Json& root, const std::string& origin, Tokenizer::Impl& impl) {
  impl.norm.clear();
  auto it = root.find("normalizer");
  impl.normalizer_json = it == root.end() ? Json(nullptr) : *it;
  if (it == root.end() || it->is_null()) return Status::ok();
  std::vector<std::pair<const Json*, std::string>> items;
  SHRINK_RETURN_IF_ERROR(sequence_items(*it, "normalizers", origin, "normalizer", &items));
  for (const auto& [j, path] : items) {
    const std::string t = type_of(*j);
    NormStep n;
    if (t == "NFC") {
      n.kind = NormStep::Kind::kNfc;
    } else if (t == "Prepend") {
      n.kind = NormStep::Kind::kPrepend;
      SHRINK_RETURN_IF_ERROR(read_string(*j, "prepend", origin, path, &n.to));
    } else if (t == "Replace") {
      n.kind = NormStep::Kind::kReplace;
      SHRINK_RETURN_IF_ERROR(string_pattern(*j, origin, path, &n.from));
      SHRINK_RETURN_IF_ERROR(read_string(*j, "content", origin, path, &n.to));
    } else {
      return field_error(origin, path + ".type",
                         squote(t.empty() ? json_brief(*j) : t) +
                             " is not supported; expected null, 'NFC', 'Prepend', 'Replace' or a "
                             "'Sequence' of those");
    }
    impl.norm.push_back(std::move(n));
  }
  return Status::ok();
}

// The split regexes recognised by their text, as tokenizer.json spells them.
constexpr const char* kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

Status parse_pre_tokenizer(const Json& root, const std::string& origin, Tokenizer::Impl& impl) {
  impl.pre.clear();
  auto it = root.find("pre_tokenizer");
  impl.pre_tokenizer_json = it == root.end() ? Json(nullptr) : *it;
  if (it == root.end() || it->is_null()) {
    impl.byte_level = false;
    return Status::ok();
  }
  std::vector<std::pair<const Json*, std::string>> items;
  SHRINK_RETURN_IF_ERROR(sequence_items(*it, "pretokenizers", origin, "pre_tokenizer", &items));
  impl.byte_level = false;
  for (const auto& [j, path] : items) {
    const std::string t = type_of(*j);
    PreStep p;
    if (t == "ByteLevel") {
      // Defaults are those of Hugging Face's ByteLevel constructor.
      p.add_prefix_space = true;
      bool trim_offsets = true;
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "add_prefix_space", origin, path, &p.add_prefix_space));
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "trim_offsets", origin, path, &trim_offsets));
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "use_regex", origin, path, &p.use_regex));
      impl.byte_level = true;
    } else if (t == "Split") {
      p.kind = PreStep::Kind::kSplit;
      auto pat = j->find("pattern");
      const Json* rx = (pat != j->end() && pat->is_object()) ? &(*pat) : nullptr;
      const std::string text = (rx && rx->contains("Regex") && (*rx)["Regex"].is_string())
                                   ? (*rx)["Regex"].get<std::string>()
                                   : std::string();
      if (text == kGpt2Regex) {
        p.regex = SplitRegex::kGpt2;
      } else if (text == kLlama3Regex) {
        p.regex = SplitRegex::kLlama3;
      } else if (text == kQwen2Regex) {
        p.regex = SplitRegex::kQwen2;
      } else {
        return field_error(origin, path + ".pattern",
                           (pat == j->end() ? std::string("missing") : json_brief(*pat)) +
                               " is not supported; expected the {\"Regex\": ...} of GPT-2, "
                               "Llama 3 or Qwen2");
      }
      std::string behavior = "Isolated";
      bool invert = false;
      SHRINK_RETURN_IF_ERROR(read_string(*j, "behavior", origin, path, &behavior));
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "invert", origin, path, &invert));
      if (behavior != "Isolated" || invert) {
        return field_error(origin, path + ".behavior",
                           squote(behavior) + (invert ? " inverted" : "") +
                               " is not supported; expected 'Isolated', not inverted");
      }
    } else if (t == "Digits") {
      p.kind = PreStep::Kind::kDigits;
      SHRINK_RETURN_IF_ERROR(
          read_bool(*j, "individual_digits", origin, path, &p.individual_digits));
    } else if (t == "Metaspace") {
      p.kind = PreStep::Kind::kMetaspace;
      p.replacement = "\u2581";
      SHRINK_RETURN_IF_ERROR(read_string(*j, "replacement", origin, path, &p.replacement));
      if (!one_char(p.replacement)) {
        return field_error(origin, path + ".replacement", "expected one character");
      }
      // Older files say add_prefix_space; newer ones prepend_scheme.
      bool add_prefix_space = true;
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "add_prefix_space", origin, path, &add_prefix_space));
      p.prepend = add_prefix_space ? PreStep::Prepend::kAlways : PreStep::Prepend::kNever;
      std::string scheme;
      SHRINK_RETURN_IF_ERROR(read_string(*j, "prepend_scheme", origin, path, &scheme));
      if (scheme == "always") {
        p.prepend = PreStep::Prepend::kAlways;
      } else if (scheme == "first") {
        p.prepend = PreStep::Prepend::kFirst;
      } else if (scheme == "never") {
        p.prepend = PreStep::Prepend::kNever;
      } else if (!scheme.empty()) {
        return field_error(origin, path + ".prepend_scheme",
                           squote(scheme) + " is not one of 'always', 'first', 'never'");
      }
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "split", origin, path, &p.split));
    } else {
      return field_error(origin, path + ".type",
                         squote(t.empty() ? json_brief(*j) : t) +
                             " is not supported; expected null, 'ByteLevel', 'Split', 'Digits', "
                             "'Metaspace' or a 'Sequence' of those");
    }
    impl.pre.push_back(std::move(p));
  }
  return Status::ok();
}

Status parse_decoder(const Json& root, const std::string& origin, Tokenizer::Impl& impl) {
  impl.dec.clear();
  auto it = root.find("decoder");
  impl.decoder_json = it == root.end() ? Json(nullptr) : *it;
  if (it == root.end() || it->is_null()) {
    // No decoder: a byte-level vocabulary still needs its bytes back.
    if (impl.byte_level) impl.dec.push_back(DecStep());
    return Status::ok();
  }
  std::vector<std::pair<const Json*, std::string>> items;
  SHRINK_RETURN_IF_ERROR(sequence_items(*it, "decoders", origin, "decoder", &items));
  for (const auto& [j, path] : items) {
    const std::string t = type_of(*j);
    DecStep d;
    if (t == "ByteLevel") {
    } else if (t == "Replace") {
      d.kind = DecStep::Kind::kReplace;
      SHRINK_RETURN_IF_ERROR(string_pattern(*j, origin, path, &d.from));
      SHRINK_RETURN_IF_ERROR(read_string(*j, "content", origin, path, &d.to));
    } else if (t == "ByteFallback") {
      d.kind = DecStep::Kind::kByteFallback;
    } else if (t == "Fuse") {
      d.kind = DecStep::Kind::kFuse;
    } else if (t == "Strip") {
      d.kind = DecStep::Kind::kStrip;
      SHRINK_RETURN_IF_ERROR(read_string(*j, "content", origin, path, &d.from));
      if (!one_char(d.from)) {
        return field_error(origin, path + ".content", "expected one character");
      }
      for (const char* key : {"start", "stop"}) {
        auto v = j->find(key);
        if (v == j->end() || !v->is_number_unsigned()) {
          return field_error(origin, path + "." + key, "missing or not a count");
        }
        (std::string(key) == "start" ? d.start : d.stop) = int(std::min<uint64_t>(v->get<uint64_t>(), 1u << 20));
      }
    } else if (t == "Metaspace") {
      d.kind = DecStep::Kind::kMetaspace;
      d.from = "\u2581";
      SHRINK_RETURN_IF_ERROR(read_string(*j, "replacement", origin, path, &d.from));
      bool add_prefix_space = true;
      SHRINK_RETURN_IF_ERROR(read_bool(*j, "add_prefix_space", origin, path, &add_prefix_space));
      std::string scheme = add_prefix_space ? "always" : "never";
      SHRINK_RETURN_IF_ERROR(read_string(*j, "prepend_scheme", origin, path, &scheme));
      d.drop_first = scheme != "never";
    } else {
      return field_error(origin, path + ".type",
                         squote(t.empty() ? json_brief(*j) : t) +
                             " is not supported; expected null, 'ByteLevel', 'Metaspace', "
                             "'Replace', 'ByteFallback', 'Fuse', 'Strip' or a 'Sequence' of those");
    }
    impl.dec.push_back(std::move(d));
  }
  return Status::ok();
}

Status parse_template(const Json& pp, const std::string& origin, const std::string& path,
                      Tokenizer::Impl& impl) {
  auto sit = pp.find("single");
  if (sit == pp.end() || !sit->is_array()) {
    return field_error(origin, path + ".single", "missing or not an array");
  }
  auto spit = pp.find("special_tokens");
  const Json empty = Json::object();
  const Json& specials = (spit != pp.end() && spit->is_object()) ? *spit : empty;
  std::vector<TemplateItem> items;
  for (size_t k = 0; k < sit->size(); ++k) {
    const Json& item = (*sit)[k];
    const std::string field = strfmt("%s.single[%zu]", path.c_str(), k);
    if (item.is_object() && item.contains("Sequence")) {
      items.push_back({true, {}});
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken")) {
      return field_error(origin, field,
                         json_brief(item) +
                             " is not a template piece; expected "
                             "{\"SpecialToken\": {...}} or {\"Sequence\": {...}}");
    }
    const Json& st = item["SpecialToken"];
    auto idit = st.is_object() ? st.find("id") : st.end();
    if (!st.is_object() || idit == st.end() || !idit->is_string()) {
      return field_error(origin, field + ".SpecialToken.id", "missing or not a string");
    }
    const std::string name = idit->get<std::string>();
    auto def = specials.find(name);
    if (def == specials.end() || !def->is_object() || !def->contains("ids") ||
        !(*def)["ids"].is_array()) {
      return field_error(origin, field,
                         "special token " + squote(name) + " has no entry with \"ids\" in " + path +
                             ".special_tokens");
    }
    TemplateItem ti;
    for (const Json& v : (*def)["ids"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTokenId) {
        return field_error(origin, path + ".special_tokens[" + squote(name) + "].ids",
                           json_brief(v) + " is not a valid token id");
      }
      // The template's ids are emitted as they are: each must be a token of this tokenizer (the
      // fuzzer found ids past the vocabulary here, which encode() then handed to the model).
      const int32_t id = int32_t(v.get<int64_t>());
      const bool in_vocab = size_t(id) < impl.id_to_vocab.size() && !impl.id_to_vocab[id].empty();
      if (!in_vocab && !impl.added_by_id.count(id)) {
        return field_error(origin, path + ".special_tokens[" + squote(name) + "].ids",
                           strfmt("%d is not a token of this tokenizer; expected an id in "
                                  "model.vocab or added_tokens",
                                  id));
      }
      ti.ids.push_back(id);
    }
    items.push_back(std::move(ti));
  }
  impl.single_template = std::move(items);
  impl.has_template = true;
  return Status::ok();
}

Status parse_post_processor(const Json& root, const std::string& origin, Tokenizer::Impl& impl) {
  auto it = root.find("post_processor");
  if (it == root.end() || it->is_null()) return Status::ok();
  const std::string type = type_of(*it);
  if (type == "ByteLevel") return Status::ok();  // offsets only; adds no tokens
  auto refuse = [&](const std::string& field, const std::string& t, const Json& j) {
    return field_error(origin, field,
                       squote(t.empty() ? json_brief(j) : t) +
                           " is not supported; expected null, 'ByteLevel', 'TemplateProcessing' "
                           "or a 'Sequence' of those");
  };
  if (type == "TemplateProcessing") {
    SHRINK_RETURN_IF_ERROR(parse_template(*it, origin, "post_processor", impl));
  } else if (type == "Sequence") {
    auto pit = it->find("processors");
    if (pit == it->end() || !pit->is_array()) {
      return field_error(origin, "post_processor.processors", "missing or not an array");
    }
    for (size_t k = 0; k < pit->size(); ++k) {
      const std::string path = strfmt("post_processor.processors[%zu]", k);
      const std::string t = type_of((*pit)[k]);
      if (t == "ByteLevel") continue;
      if (t != "TemplateProcessing") return refuse(path + ".type", t, (*pit)[k]);
      if (impl.has_template) return field_error(origin, path, "a second TemplateProcessing");
      SHRINK_RETURN_IF_ERROR(parse_template((*pit)[k], origin, path, impl));
    }
  } else {
    return refuse("post_processor.type", type, *it);
  }
  if (impl.has_template) impl.post_processor = *it;
  return Status::ok();
}

}  // namespace

Result<Tokenizer> Tokenizer::from_json(const std::string& json_text, const std::string& origin) {
  SHRINK_ASSIGN_OR_RETURN(Json root, json_parse_untrusted(json_text, origin));
  if (!root.is_object()) {
    return invalid_input(origin + ": " + json_kind(root) +
                         " at the top level; expected a tokenizer.json object");
  }
  Tokenizer tok;
  Impl& impl = *tok.impl_;

  auto model = root.find("model");
  if (model == root.end()) return field_error(origin, "model", "missing");
  auto added = root.find("added_tokens");
  const int64_t n_added = added != root.end() && added->is_array() ? int64_t(added->size()) : 0;
  SHRINK_RETURN_IF_ERROR(parse_model(*model, origin, n_added, impl));
  SHRINK_RETURN_IF_ERROR(parse_added_tokens(root, origin, impl));

  SHRINK_RETURN_IF_ERROR(parse_normalizer(root, origin, impl));
  SHRINK_RETURN_IF_ERROR(parse_pre_tokenizer(root, origin, impl));
  SHRINK_RETURN_IF_ERROR(parse_post_processor(root, origin, impl));
  SHRINK_RETURN_IF_ERROR(parse_decoder(root, origin, impl));
  return tok;
}

Result<Tokenizer> Tokenizer::from_vocab_merges(
    std::vector<std::string> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    const std::vector<int32_t>& special_ids) {
  const std::string origin = "bpe vocabulary";
  if (int64_t(vocab.size()) > kMaxTokenId + 1) {
    return invalid_input(origin + strfmt(": %zu tokens is too many", vocab.size()));
  }
  Tokenizer tok;
  Impl& impl = *tok.impl_;
  SHRINK_RETURN_IF_ERROR(impl.set_vocab(std::move(vocab), origin));
  SHRINK_RETURN_IF_ERROR(impl.set_merges(merges, origin));
  for (size_t k = 0; k < special_ids.size(); ++k) {
    const int32_t id = special_ids[k];
    if (id < 0 || size_t(id) >= impl.id_to_vocab.size() || impl.id_to_vocab[id].empty()) {
      return invalid_input(origin + strfmt(": special id %d is not in the vocabulary", id));
    }
    AddedToken t;
    t.id = id;
    t.content = impl.id_to_vocab[id];
    t.special = true;
    SHRINK_RETURN_IF_ERROR(impl.add_token(std::move(t), origin, strfmt("special_ids[%zu]", k)));
  }
  impl.index_added();
  impl.set_gpt2_pipeline();
  return tok;
}

std::string Tokenizer::to_json() const {
  const Impl& impl = *impl_;
  Json root = Json::object();
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  Json added = Json::array();
  for (const AddedToken& t : impl.added) {
    Json a = Json::object();
    a["id"] = t.id;
    a["content"] = t.content;
    a["single_word"] = t.single_word;
    a["lstrip"] = t.lstrip;
    a["rstrip"] = t.rstrip;
    a["normalized"] = t.normalized;
    a["special"] = t.special;
    added.push_back(std::move(a));
  }
  root["added_tokens"] = std::move(added);
  root["normalizer"] = impl.normalizer_json;
  root["pre_tokenizer"] = impl.pre_tokenizer_json;
  if (impl.has_template) {
    root["post_processor"] = impl.post_processor;
  } else if (impl.byte_level) {
    root["post_processor"] = Json{{"type", "ByteLevel"},
                                  {"add_prefix_space", true},
                                  {"trim_offsets", false},
                                  {"use_regex", true}};
  } else {
    root["post_processor"] = nullptr;
  }
  root["decoder"] = impl.decoder_json;
  Json model = Json::object();
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = impl.unk_token ? Json(*impl.unk_token) : Json(nullptr);
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = impl.fuse_unk;
  model["byte_fallback"] = impl.byte_fallback;
  model["ignore_merges"] = impl.ignore_merges;
  Json vocab = Json::object();
  for (size_t id = 0; id < impl.id_to_vocab.size(); ++id) {
    if (!impl.id_to_vocab[id].empty()) vocab[impl.id_to_vocab[id]] = int32_t(id);
  }
  model["vocab"] = std::move(vocab);
  // "a b" strings, the classic form, unless some token holds a space (then ["a", "b"] pairs,
  // which the `tokenizers` library has read since 0.20).
  bool spaced = false;
  for (const auto& [a, b] : impl.merges) {
    spaced = spaced || a.find(' ') != std::string::npos || b.find(' ') != std::string::npos;
  }
  Json merges = Json::array();
  for (const auto& [a, b] : impl.merges) {
    merges.push_back(spaced ? Json::array({a, b}) : Json(a + " " + b));
  }
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);
  return root.dump(2, ' ', false, Json::error_handler_t::replace);
}

Status Tokenizer::save(const std::string& path) const {
  const std::string text = to_json();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return io_error(path + ": cannot open for writing");
  f.write(text.data(), std::streamsize(text.size()));
  f.close();
  if (!f) return io_error(path + ": write failed");
  return Status::ok();
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> body;
  body.reserve(text.size() / 3 + 4);
  impl_->encode_text(text, body);
  if (!add_special_tokens || !impl_->has_template) return body;
  std::vector<int32_t> out;
  out.reserve(body.size() + 4);
  for (const TemplateItem& item : impl_->single_template) {
    if (item.is_sequence) {
      out.insert(out.end(), body.begin(), body.end());
    } else {
      out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) {
    auto at = impl.added_by_id.find(id);
    if (at != impl.added_by_id.end()) {
      const AddedToken& t = impl.added[at->second];
      if (!(t.special && skip_special_tokens)) toks.push_back(t.content);
      continue;
    }
    if (id < 0 || size_t(id) >= impl.id_to_vocab.size() || impl.id_to_vocab[size_t(id)].empty()) {
      continue;
    }
    toks.push_back(impl.id_to_vocab[size_t(id)]);
  }
  for (const DecStep& d : impl.dec) {
    switch (d.kind) {
      case DecStep::Kind::kByteLevel:
        // A token outside the byte map is kept as its raw text, as Hugging Face's decoder does.
        for (std::string& t : toks) {
          std::string bytes;
          if (byte_level_decode(t, bytes)) t = std::move(bytes);
        }
        break;
      case DecStep::Kind::kReplace:
        for (std::string& t : toks) replace_all(t, d.from, d.to);
        break;
      case DecStep::Kind::kByteFallback: {
        // Runs of <0xNN> tokens become their bytes. (Hugging Face writes U+FFFD for each byte of
        // a run that is not valid UTF-8; the raw bytes are kept here, so that text decoded
        // piece by piece still joins into the right characters.)
        std::vector<std::string> out;
        out.reserve(toks.size());
        bool in_run = false;
        for (std::string& t : toks) {
          auto hex = [](char c) {
            return (c >= '0' && c <= '9') ? c - '0'
                   : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                   : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                            : -1;
          };
          const bool is_byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                               hex(t[3]) >= 0 && hex(t[4]) >= 0;
          if (!is_byte) {
            out.push_back(std::move(t));
            in_run = false;
            continue;
          }
          const char b = char(hex(t[3]) * 16 + hex(t[4]));
          if (!in_run) out.emplace_back();
          out.back() += b;
          in_run = true;
        }
        toks.swap(out);
        break;
      }
      case DecStep::Kind::kFuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecStep::Kind::kStrip:
        for (std::string& t : toks) {
          size_t b = 0, e = t.size();
          for (int k = 0; k < d.start && t.compare(b, d.from.size(), d.from) == 0; ++k) {
            b += d.from.size();
          }
          for (int k = 0; k < d.stop && e >= b + d.from.size() &&
                          t.compare(e - d.from.size(), d.from.size(), d.from) == 0;
               ++k) {
            e -= d.from.size();
          }
          t = t.substr(b, e - b);
        }
        break;
      case DecStep::Kind::kMetaspace:
        // Hugging Face drops every replacement character of the first token (when it prepends
        // one) and turns the others into spaces.
        for (size_t k = 0; k < toks.size(); ++k) {
          replace_all(toks[k], d.from, k == 0 && d.drop_first ? std::string() : std::string(" "));
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : toks) out += t;
  return out;
}

std::vector<int32_t> Tokenizer::document_prefix() const {
  std::vector<int32_t> out;
  if (!impl_->has_template) return out;
  for (const TemplateItem& item : impl_->single_template) {
    if (item.is_sequence) break;
    out.insert(out.end(), item.ids.begin(), item.ids.end());
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return impl_->max_id() + 1;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& t : impl_->added) {
    if (t.content == token) return t.id;
  }
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto at = impl_->added_by_id.find(id);
  if (at != impl_->added_by_id.end()) return impl_->added[at->second].content;
  if (id < 0 || size_t(id) >= impl_->id_to_vocab.size()) return "";
  return impl_->id_to_vocab[size_t(id)];
}

namespace {
std::optional<int32_t> find_special(const std::vector<AddedToken>& added,
                                    std::initializer_list<const char*> names) {
  for (const char* name : names) {
    for (const AddedToken& t : added) {
      if (t.special && t.content == name) return t.id;
    }
  }
  return std::nullopt;
}
}  // namespace

std::optional<int32_t> Tokenizer::bos_id() const {
  return find_special(impl_->added, {"<s>", "<|begin_of_text|>"});
}

std::optional<int32_t> Tokenizer::eos_id() const {
  return find_special(impl_->added, {"<|endoftext|>", "</s>", "<|im_end|>", "<|end_of_text|>"});
}

std::string Tokenizer::fingerprint() const {
  // FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over a canonical byte
  // stream; fields are NUL-terminated so no two different inputs concatenate the same way.
  uint64_t h = 0xcbf29ce484222325ULL;
  auto feed = [&](std::string_view s) {
    for (char c : s) {
      h ^= uint8_t(c);
      h *= 0x100000001b3ULL;
    }
    h *= 0x100000001b3ULL;  // a NUL terminator: h ^= 0, then multiply
  };
  feed("vocab");
  for (size_t id = 0; id < impl_->id_to_vocab.size(); ++id) {
    if (impl_->id_to_vocab[id].empty()) continue;
    feed(std::to_string(id));
    feed(impl_->id_to_vocab[id]);
  }
  feed("merges");
  for (const auto& [a, b] : impl_->merges) {
    feed(a);
    feed(b);
  }
  feed("added");
  for (const AddedToken& t : impl_->added) {
    feed(std::to_string(t.id));
    feed(t.content);
    feed(t.special ? "1" : "0");
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace shrink::core
