// libFuzzer harness: text sources (TextReader over .txt, .jsonl and fortune files) and
// tokenize_stream, as `shrink data prepare` and `shrink tokenizer train` read them.
//
// The input is written as data.txt, data.jsonl and data.fortunes and each is streamed to the
// end. Invariants: the blocks of a .txt file concatenate to the file exactly; tokenize_stream
// yields ids inside the vocabulary of the harness's byte-level tokenizer; errors name the file.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/dataset.h"
#include "fuzz_util.h"

using namespace shrink;

namespace {

// Stream every block; returns the concatenated text, or nullopt on an error.
std::optional<std::string> read_all(const std::string& path) {
  auto r = core::TextReader::open(path);
  if (!r.is_ok()) return std::nullopt;
  std::string all;
  core::TextBlock b;
  for (int guard = 0; guard < 100000; ++guard) {
    Result<bool> more = r.value()->next(b);
    if (!more.is_ok()) {
      FUZZ_CHECK(more.status().message().find(path) != std::string::npos,
                 "error does not name the file: %s", more.status().message().c_str());
      return std::nullopt;
    }
    if (!more.value()) return all;
    all += b.text;
  }
  FUZZ_CHECK(false, "more than 100000 blocks from a fuzz input");
  return std::nullopt;
}

void tokenize(const std::string& path, const core::Tokenizer& tok) {
  auto r = core::TextReader::open(path);
  if (!r.is_ok()) return;
  core::TokenizeOptions o;
  o.val_fraction = 0.5;
  (void)core::tokenize_stream(*r.value(), tok, o, [&](const std::vector<int32_t>& ids) {
    for (int32_t id : ids) FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "id %d", id);
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string txt = fuzz::write_temp("data.txt", in);
  auto all = read_all(txt);
  FUZZ_CHECK(all.has_value(), "a .txt file is refused");
  FUZZ_CHECK(*all == in, "the .txt blocks do not add up to the file (%zu of %zu bytes)",
             all->size(), size);
  const core::Tokenizer tok = fuzz::make_byte_level_tokenizer();
  tokenize(txt, tok);
  for (const char* name : {"data.jsonl", "data.fortunes"}) {
    const std::string p = fuzz::write_temp(name, in);
    (void)read_all(p);
    tokenize(p, tok);
  }
  return 0;
}
