// libFuzzer harness: token-shard files (shard_read_header, TokenDataset::open and read).
//
// The input is one "<split>-00000.tok" file. Both readers must agree: when the header is
// accepted, the memory-mapped dataset opens (from the file and from its directory), holds
// n_tokens tokens of the header's vocabulary size, and reading any token range stays inside
// the file (the first and last tokens are read, so ASan and the mapping see any escape).
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/dataset.h"
#include "fuzz_util.h"

using namespace shrink;

namespace {

void read_ends(const core::TokenDataset& ds) {
  const uint64_t n = ds.size();
  const uint64_t k = std::min<uint64_t>(n, 1024);
  std::vector<int32_t> buf(size_t(k) + 1);
  ds.read(0, k, buf.data());
  ds.read(n - k, k, buf.data());
  if (n > 2) ds.read(n / 2, 1, buf.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string path = fuzz::write_temp("train-00000.tok", in);
  auto h = core::shard_read_header(path);
  auto ds = core::TokenDataset::open(path, core::Split::kAll);
  FUZZ_CHECK(h.is_ok() == ds.is_ok(), "shard_read_header says %s, TokenDataset::open says %s",
             h.is_ok() ? "ok" : h.status().message().c_str(),
             ds.is_ok() ? "ok" : ds.status().message().c_str());
  if (!h.is_ok()) {
    fuzz::note_rejected("shard", h.status().message());
    FUZZ_CHECK(!h.status().message().empty(), "an error without a message");
    return 0;
  }
  const core::ShardHeader& hd = h.value();
  FUZZ_CHECK(hd.token_bytes == 2 || hd.token_bytes == 4, "token_bytes %d", hd.token_bytes);
  FUZZ_CHECK(hd.n_tokens <= size / uint64_t(hd.token_bytes), "%llu tokens in %zu bytes",
             (unsigned long long)hd.n_tokens, size);
  FUZZ_CHECK(ds.value().size() == hd.n_tokens && ds.value().vocab_size() == hd.vocab_size &&
                 ds.value().tokenizer_fingerprint() == hd.tokenizer_fingerprint,
             "the dataset disagrees with its header");
  read_ends(ds.value());
  FUZZ_CHECK(core::dataset_is_tokens(path), "an accepted shard is not recognised as tokens");

  auto dir = core::TokenDataset::open(fuzz::temp_dir(), core::Split::kTrain);
  FUZZ_CHECK(dir.is_ok(), "the shard opens as a file but not from its directory: %s",
             dir.status().message().c_str());
  FUZZ_CHECK(dir.value().size() == hd.n_tokens, "directory dataset has %llu tokens",
             (unsigned long long)dir.value().size());
  read_ends(dir.value());
  return 0;
}
