// BPE tokenizer compatible with Hugging Face `tokenizer.json`, for the tokenizers of the Llama
// family.
//
// Supports model.type "BPE" in its two forms:
//   - byte-level (GPT-2, Llama 3, Qwen2, SmolLM): a ByteLevel pre-tokenizer maps each byte to a
//     printable code point (the GPT-2 byte-to-unicode map) and BPE merges those;
//   - SentencePiece-style (Llama 2, Mistral, TinyLlama): BPE over code points, with '▁' for
//     spaces (a Prepend + Replace normalizer or a Metaspace pre-tokenizer) and byte_fallback to
//     <0xNN> tokens for characters the vocabulary lacks.
// Merges as "a b" strings or ["a","b"] pairs, an empty merges list (pure byte level),
// ignore_merges, unk_token and fuse_unk. Components:
//   - normalizer: null, NFC, Prepend, Replace (String pattern), or a Sequence of those;
//   - pre_tokenizer: ByteLevel (with or without the GPT-2 regex), Split with the regex of GPT-2,
//     Llama 3 or Qwen2 (recognised by its text, behaviour Isolated), Digits, Metaspace, null, or
//     a Sequence of those;
//   - post_processor: null, ByteLevel, TemplateProcessing or a Sequence of those (a BOS is added
//     only when the post-processor says so);
//   - decoder: ByteLevel, Metaspace, Replace (String), ByteFallback, Fuse, Strip, null, or a
//     Sequence of those.
// Added tokens are matched before normalization. Anything else is refused by name, with the
// JSON path of the field.
//
// Why hand-written: the runtime must tokenize prompts without Python, ICU or a regex library;
// the split regexes are hand-written matchers over generated Unicode tables. Encoding caches
// the merge result per pre-token word. decode(encode(x)) == x for any UTF-8 x (byte-level).
// Tested in tests/core/test_tokenizer.cpp (round trips, fixed expected encodings, the trainer)
// and against Hugging Face's tokenizers.js by the ctest `tokenizer_peer_check`
// (scripts/tokenizer_check.mjs).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace shrink::core {

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  /// Load a tokenizer.json file. Errors name the file and the offending field.
  static Result<Tokenizer> load(const std::string& path);
  /// Parse tokenizer.json text; `origin` is used in error messages.
  static Result<Tokenizer> from_json(const std::string& json_text, const std::string& origin);
  /// Build a GPT-2 style byte-level BPE (ByteLevel pre-tokenizer without prefix space, ByteLevel
  /// post-processor and decoder) from `vocab` (byte-level token strings, index = id), `merges`
  /// (pairs of vocab strings, in rank order) and `special_ids` (ids whose vocab string is the
  /// content of a special added token). Used by bpe_train; errors as for from_json.
  static Result<Tokenizer> from_vocab_merges(
      std::vector<std::string> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges,
      const std::vector<int32_t>& special_ids);
  /// Serialize as HF tokenizer.json (loads in the `tokenizers` library).
  std::string to_json() const;
  Status save(const std::string& path) const;

  /// Encode UTF-8 text (invalid UTF-8 bytes are still encoded byte-wise). With
  /// add_special_tokens, the post-processor's template (e.g. a BOS) is applied.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  /// The ids the post-processor's template puts before the text (e.g. Llama's BOS); empty when
  /// it adds none. The dataset pipeline starts each document with them.
  std::vector<int32_t> document_prefix() const;
  /// Decode ids to bytes; special tokens are emitted as their content unless skipped.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  /// Largest id + 1 over the vocabulary and added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  /// The token string (byte-level form) for an id; empty if unknown.
  std::string id_to_token(int32_t id) const;
  /// BOS/EOS guessed from added special tokens: "<|endoftext|>", "</s>", "<|im_end|>",
  /// "<|end_of_text|>" for EOS; "<s>", "<|begin_of_text|>" for BOS.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  /// A stable hash of the vocabulary, merges and special tokens (hex), for data provenance.
  std::string fingerprint() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Split `text` into pre-tokens with the GPT-2 regex
///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// over code points (core/unicode_tables.h). Each invalid UTF-8 byte counts as one code point
/// of the "other" class. The pieces are views into `text` and cover it exactly, in order.
std::vector<std::string_view> pretokenize_gpt2(std::string_view text);
/// Split `text` with the regex of Llama 3's tokenizer (max_digits 3) or Qwen2's (max_digits 1):
///   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
///   \s*[\r\n]+|\s+(?!\S)|\s+
/// The pieces are views into `text` and cover it exactly, in order.
std::vector<std::string_view> pretokenize_llama3(std::string_view text, size_t max_digits);

/// Raw bytes -> their GPT-2 byte-level form (each byte one code point, printable bytes as
/// themselves, the rest as U+0100 + n), as UTF-8.
std::string byte_level_encode(std::string_view bytes);
/// Inverse of byte_level_encode. Returns false (and leaves `bytes` partly written) if `text` is
/// not valid UTF-8 or holds a code point outside the byte map.
bool byte_level_decode(std::string_view text, std::string& bytes);

}  // namespace shrink::core
