// libFuzzer harness: tokenizer.json through Tokenizer::from_json, then encode/decode of fuzzed
// text with it, and the text-only parts of the tokenizer.
//
// Input: tokenizer.json text, a NUL byte, then the text to encode (JSON holds no raw NUL, so the
// split is unambiguous; without a NUL a fixed sample is encoded). Invariants checked on
// every input:
//   - an accepted tokenizer encodes any bytes to ids in [0, vocab_size), decodes any ids
//     (out-of-range and negative ones included) without failing, writes itself with to_json,
//     and the written form loads again and encodes the text to the same ids;
//   - the split regexes (pretokenize_gpt2, pretokenize_llama3) cover the text exactly, in order;
//   - byte_level_decode(byte_level_encode(x)) == x;
//   - a byte-level BPE built in the harness (from_vocab_merges) round-trips the text exactly:
//     decode(encode(x)) == x, as tokenizer.h promises for byte-level tokenizers.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/tokenizer.h"
#include "fuzz_util.h"

using namespace shrink;

namespace {

void check_cover(const std::vector<std::string_view>& pieces, std::string_view text,
                 const char* which) {
  size_t pos = 0;
  for (std::string_view p : pieces) {
    FUZZ_CHECK(p.data() == text.data() + pos && !p.empty(), "%s: piece at byte %zu is not next",
               which, pos);
    pos += p.size();
  }
  FUZZ_CHECK(pos == text.size(), "%s: pieces cover %zu of %zu bytes", which, pos, text.size());
}

void check_text_only(std::string_view text) {
  check_cover(core::pretokenize_gpt2(text), text, "pretokenize_gpt2");
  check_cover(core::pretokenize_llama3(text, 3), text, "pretokenize_llama3(3)");
  check_cover(core::pretokenize_llama3(text, 1), text, "pretokenize_llama3(1)");
  std::string bytes;
  FUZZ_CHECK(core::byte_level_decode(core::byte_level_encode(text), bytes) && bytes == text,
             "byte_level_decode(byte_level_encode(x)) != x");
  const core::Tokenizer b = fuzz::make_byte_level_tokenizer();
  for (bool special : {false, true}) {
    const std::vector<int32_t> ids = b.encode(text, special);
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < b.vocab_size(), "built-in: id %d", id);
    FUZZ_CHECK(b.decode(ids) == text, "built-in byte-level BPE: decode(encode(x)) != x");
  }
}

// The text encoded when the input has none.
constexpr std::string_view kSample =
    "Hello world's  123 4567 foo!!\n\n  bar\ttabs \xc3\xa9t\xc3\xa9 <|endoftext|> <s>x</s> \xff";

// Ids made from the text's bytes: arbitrary, often out of range or negative.
std::vector<int32_t> ids_from_bytes(std::string_view text) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 4 <= text.size() && ids.size() < 256; i += 4) {
    int32_t v;
    std::memcpy(&v, text.data() + i, 4);
    ids.push_back(v);
  }
  for (size_t i = 0; i < text.size() && i < 64; ++i) ids.push_back(int32_t(uint8_t(text[i])));
  return ids;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  bool has_text = false;
  auto [json_text, text] = fuzz::split_once(in, std::string_view("\0", 1), &has_text);
  if (!has_text) text = kSample;
  // The tokenizer-independent checks see the first KiB only: past that, longer text finds
  // nothing new there and would take most of each run from the tokenizer.json parser.
  check_text_only(text.substr(0, 1024));

  auto r = core::Tokenizer::from_json(std::string(json_text), "tokenizer.json");
  if (!r.is_ok()) {
    fuzz::note_rejected("tokenizer.json", r.status().message());
    FUZZ_CHECK(!r.status().message().empty(), "an error without a message");
    return 0;
  }
  const core::Tokenizer& tok = r.value();
  const int32_t vocab = tok.vocab_size();
  std::vector<int32_t> ids;
  for (bool special : {false, true}) {
    ids = tok.encode(text, special);
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < vocab, "id %d outside [0, %d)", id, vocab);
    (void)tok.decode(ids, false);
    (void)tok.decode(ids, true);
  }
  (void)tok.decode(ids_from_bytes(text), false);
  (void)tok.decode(ids_from_bytes(text), true);
  (void)tok.document_prefix();
  (void)tok.bos_id();
  (void)tok.eos_id();
  (void)tok.fingerprint();
  for (int32_t id : {-1, 0, 1, vocab - 1, vocab, INT32_MAX}) {
    const std::string s = tok.id_to_token(id);
    if (!s.empty()) (void)tok.token_to_id(s);
  }

  // What we accept, we can write, and what we write reads back with the same behaviour.
  const std::string written = tok.to_json();
  auto again = core::Tokenizer::from_json(written, "tokenizer.json (written)");
  FUZZ_CHECK(again.is_ok(), "to_json output does not load: %s", again.status().message().c_str());
  FUZZ_CHECK(again.value().encode(text, true) == ids, "the written tokenizer encodes differently");
  return 0;
}
