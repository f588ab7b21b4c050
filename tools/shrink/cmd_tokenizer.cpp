// `shrink tokenizer train|encode|decode`: train a byte-level BPE (HF tokenizer.json) on a
// corpus, and encode/decode with any supported tokenizer.json, for checks against other tools.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/dataset.h"
#include "core/json_util.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "pipeline/tokenizer_train.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

struct TrainArgs {
  std::string data = core::kDefaultCorpus, out;
  pipeline::BpeTrainOptions bpe;
  uint64_t max_bytes = 0;
};

int run_tokenizer_train(const TrainArgs& a, const Globals& g) {
  if (a.bpe.vocab_size < 256 + int32_t(a.bpe.special_tokens.size())) {
    throw Error(StatusCode::kInvalidInput,
                "--vocab-size " + std::to_string(a.bpe.vocab_size) + ": expected >= " +
                    std::to_string(256 + a.bpe.special_tokens.size()) +
                    " (256 byte tokens + special tokens)");
  }
  auto reader = core::TextReader::open(a.data).take_or_throw();
  core::Progress read_prog("read", reader->bytes_total(), "B", g.progress());
  uint64_t bytes = 0, docs = 0;
  // The corpus block by block, up to --max-bytes.
  auto next = [&](std::string& doc) -> bool {
    core::TextBlock b;
    if (a.max_bytes && bytes >= a.max_bytes) return false;
    if (!reader->next(b).take_or_throw()) return false;
    bytes += b.text.size();
    docs += b.ends_document;
    read_prog.update(reader->bytes_read());
    doc = std::move(b.text);
    return true;
  };
  core::Progress merge_prog("merges", 0, "merges", g.progress());
  pipeline::BpeTrainOptions bpe = a.bpe;
  bpe.progress = [&](int64_t done, int64_t want) { merge_prog.update(uint64_t(done)); };
  auto t0 = std::chrono::steady_clock::now();
  core::Tokenizer tk = pipeline::bpe_train(next, bpe).take_or_throw();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  merge_prog.finish();
  throw_if_error(tk.save(a.out));
  if (g.json) {
    print_json({{"out", a.out}, {"vocab_size", tk.vocab_size()}, {"bytes", bytes},
                {"documents", docs}, {"seconds", secs}, {"fingerprint", tk.fingerprint()}});
  } else {
    std::printf("wrote %s: vocab %d, trained on %s in %llu documents in %.1f s\n", a.out.c_str(),
                tk.vocab_size(), core::human_bytes(double(bytes)).c_str(),
                (unsigned long long)docs, secs);
  }
  return 0;
}

void register_tokenizer_train(CLI::App* tok, Globals& g) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* sub = tok->add_subcommand(
      "train", "Train a byte-level BPE and write a Hugging Face tokenizer.json");
  sub->add_option("--data", a->data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  sub->add_option("--vocab-size", a->bpe.vocab_size,
                  "Vocabulary size, including 256 byte tokens and special tokens")
      ->capture_default_str();
  sub->add_option("--min-frequency", a->bpe.min_frequency, "Stop when the best pair is rarer")
      ->capture_default_str();
  sub->add_option("--special", a->bpe.special_tokens, "Special tokens (ids 0..)")
      ->capture_default_str();
  sub->add_option("--max-bytes", a->max_bytes, "Read at most this many bytes (0: all)")
      ->capture_default_str();
  sub->add_option("--out", a->out, "Output tokenizer.json")->required();
  sub->callback([a, &g] {
    g.exit_code =
        run_guarded("tokenizer train", g, false, [&] { return run_tokenizer_train(*a, g); });
  });
}

struct CodecArgs {
  std::string tokenizer, text, ids, jsonl;
  bool special = false;
};

// `encode --jsonl`: one JSON line {"text", "ids", "decoded"} per line of the file.
void encode_jsonl(const core::Tokenizer& tk, const std::string& path, bool special) {
  std::ifstream in(path);
  if (!in) throw Error(StatusCode::kNotFound, path + ": cannot open");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const nlohmann::json j = core::json_parse_line(line);
    if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      throw Error(StatusCode::kInvalidInput, path + ":" + std::to_string(n) +
                                                 ": expected a JSON object with a string "
                                                 "\"text\" field");
    }
    std::string t = j["text"].get<std::string>();
    const std::vector<int32_t> ids = tk.encode(t, special);
    std::cout << nlohmann::json({{"text", t}, {"ids", ids}, {"decoded", tk.decode(ids)}})
                     .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  }
}

// `has_text`: --text was given (it may be empty).
int run_tokenizer_encode(const CodecArgs& a, bool has_text, const Globals& g) {
  core::Tokenizer tk = core::Tokenizer::load(a.tokenizer).take_or_throw();
  if (!a.jsonl.empty()) {
    encode_jsonl(tk, a.jsonl, a.special);
    return 0;
  }
  if (!has_text) throw Error(StatusCode::kInvalidInput, "give --text TEXT or --jsonl FILE");
  std::vector<int32_t> ids = tk.encode(a.text, a.special);
  if (g.json) {
    print_json({{"ids", ids}});
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? "," : "", ids[i]);
    std::printf("\n");
  }
  return 0;
}

void register_tokenizer_encode(CLI::App* tok, Globals& g) {
  auto a = std::make_shared<CodecArgs>();
  CLI::App* sub = tok->add_subcommand("encode", "Encode text to ids (comma-separated)");
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer.json")->required();
  auto* text_opt = sub->add_option("--text", a->text, "Text to encode");
  auto* jsonl_opt = sub->add_option(
      "--jsonl", a->jsonl, "Encode the \"text\" of each line of a .jsonl file; prints JSON lines "
                           "{\"text\", \"ids\", \"decoded\"}");
  text_opt->excludes(jsonl_opt);
  sub->add_flag("--add-special-tokens", a->special, "Apply the post-processor (e.g. BOS)");
  sub->callback([a, &g, text_opt] {
    g.exit_code = run_guarded("tokenizer encode", g, false, [&] {
      return run_tokenizer_encode(*a, text_opt->count() != 0, g);
    });
  });
}

// Comma-separated ids, each a token of `tk`.
std::vector<int32_t> token_ids_parse(const std::string& s, const core::Tokenizer& tk) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0 || v >= tk.vocab_size()) {
      throw Error(StatusCode::kInvalidInput, "--ids: '" + item + "' is not a token id in [0, " +
                                                 std::to_string(tk.vocab_size()) + ")");
    }
    ids.push_back(int32_t(v));
  }
  return ids;
}

int run_tokenizer_decode(const CodecArgs& a, const Globals& g) {
  core::Tokenizer tk = core::Tokenizer::load(a.tokenizer).take_or_throw();
  std::string text = tk.decode(token_ids_parse(a.ids, tk));
  if (g.json) print_json({{"text", text}});
  else std::printf("%s\n", text.c_str());
  return 0;
}

void register_tokenizer_decode(CLI::App* tok, Globals& g) {
  auto a = std::make_shared<CodecArgs>();
  CLI::App* sub = tok->add_subcommand("decode", "Decode comma-separated ids to text");
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer.json")->required();
  sub->add_option("--ids", a->ids, "Ids, e.g. 1,2,3")->required();
  sub->callback([a, &g] {
    g.exit_code =
        run_guarded("tokenizer decode", g, false, [&] { return run_tokenizer_decode(*a, g); });
  });
}

}  // namespace

void register_tokenizer(CLI::App& app, Globals& g) {
  CLI::App* tok = app.add_subcommand(
      "tokenizer", "Train a byte-level BPE tokenizer, or apply a BPE tokenizer.json");
  tok->require_subcommand(1);
  register_tokenizer_train(tok, g);
  register_tokenizer_encode(tok, g);
  register_tokenizer_decode(tok, g);
}

}  // namespace shrink::cli
