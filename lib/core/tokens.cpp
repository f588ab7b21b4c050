// Token loading from shards or text (see tokens.h).
#include "core/tokens.h"

#include <algorithm>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/tokenizer.h"

namespace shrink::core {

namespace {

// A .tok file or a shard directory, read as stored (split auto: val for a directory).
Result<LoadedTokens> tokens_from_shards(const TokenSource& src) {
  LoadedTokens out;
  out.split = src.split == "auto" ? (is_directory(src.data) ? "val" : "all") : src.split;
  SHRINK_ASSIGN_OR_RETURN(Split s, split_from_name(out.split));
  SHRINK_ASSIGN_OR_RETURN(TokenDataset ds, TokenDataset::open(src.data, s));
  uint64_t n = ds.size();
  if (src.max_tokens) n = std::min<uint64_t>(n, src.max_tokens);
  out.tokens.resize(n);
  if (n) ds.read(0, n, out.tokens.data());
  out.description = src.data + " (token shards, split " + out.split + ")";
  return out;
}

// Text tokenized with the model's tokenizer (or src.tokenizer), split auto = all.
Result<LoadedTokens> tokens_from_text(const std::string& model_dir, const TokenSource& src,
                                      bool progress) {
  LoadedTokens out;
  out.split = src.split == "auto" ? "all" : src.split;
  TokenizeOptions to;
  SHRINK_ASSIGN_OR_RETURN(to.split, split_from_name(out.split));
  to.val_fraction = src.val_fraction;
  to.seed = src.seed;
  to.max_tokens = src.max_tokens;
  const std::string tok_path =
      src.tokenizer.empty() ? model_dir + "/tokenizer.json" : src.tokenizer;
  SHRINK_CHECK(path_exists(tok_path), StatusCode::kInvalidInput,
               "%s: not found; text data needs a tokenizer. Pass --tokenizer PATH, or give "
               "token shards from `shrink data prepare`",
               tok_path.c_str());
  SHRINK_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load(tok_path));
  SHRINK_ASSIGN_OR_RETURN(auto reader, TextReader::open(src.data));
  Progress prog("tokenize", reader->bytes_total(), "B", progress);
  auto append = [&](const std::vector<int32_t>& t) {
    out.tokens.insert(out.tokens.end(), t.begin(), t.end());
    prog.update(reader->bytes_read());
  };
  SHRINK_RETURN_IF_ERROR(tokenize_stream(*reader, tok, to, append).status());
  prog.finish();
  out.description =
      src.data + " (text, split " + out.split + ", tokenizer " + tok.fingerprint() +
      (tok.document_prefix().empty() ? "" : ", its template's BOS at each document start") + ")";
  return out;
}

Status check_ids_in_vocabulary(const std::vector<int32_t>& tokens, int64_t vocab_size,
                               const std::string& data) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    SHRINK_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, StatusCode::kInvalidInput,
                 "%s: token %d at position %zu is outside the model's vocabulary (vocab_size %lld)",
                 data.c_str(), tokens[i], i, (long long)vocab_size);
  }
  return Status::ok();
}

}  // namespace

Result<LoadedTokens> tokens_load(const std::string& model_dir, int64_t vocab_size,
                                 const TokenSource& src, bool progress) {
  SHRINK_CHECK(path_exists(src.data), StatusCode::kNotFound, "%s: no such file or directory",
               src.data.c_str());
  SHRINK_ASSIGN_OR_RETURN(LoadedTokens out, dataset_is_tokens(src.data)
                                                ? tokens_from_shards(src)
                                                : tokens_from_text(model_dir, src, progress));
  SHRINK_RETURN_IF_ERROR(check_ids_in_vocabulary(out.tokens, vocab_size, src.data));
  return out;
}

}  // namespace shrink::core
