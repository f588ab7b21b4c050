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

void register_tokenizer(CLI::App& app, Globals& g) {
  CLI::App* tok = app.add_subcommand("tokenizer", "Train a byte-level BPE tokenizer, or apply a BPE tokenizer.json");
  tok->require_subcommand(1);

  struct TrainOpts {
    std::string data = core::kDefaultCorpus, out;
    pipeline::BpeTrainOptions bpe;
    uint64_t max_bytes = 0;
  };
  auto t = std::make_shared<TrainOpts>();
  CLI::App* train = tok->add_subcommand(
      "train", "Train a byte-level BPE and write a Hugging Face tokenizer.json");
  train->add_option("--data", t->data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  train->add_option("--vocab-size", t->bpe.vocab_size,
                    "Vocabulary size, including 256 byte tokens and special tokens")
      ->capture_default_str();
  train->add_option("--min-frequency", t->bpe.min_frequency, "Stop when the best pair is rarer")
      ->capture_default_str();
  train->add_option("--special", t->bpe.special_tokens, "Special tokens (ids 0..)")
      ->capture_default_str();
  train->add_option("--max-bytes", t->max_bytes, "Read at most this many bytes (0: all)")
      ->capture_default_str();
  train->add_option("--out", t->out, "Output tokenizer.json")->required();
  train->callback([t, &g] {
    g.exit_code = run_guarded("tokenizer train", g, false, [&] {
      if (t->bpe.vocab_size < 256 + int32_t(t->bpe.special_tokens.size())) {
        throw Error(StatusCode::kInvalidInput,
                    "--vocab-size " + std::to_string(t->bpe.vocab_size) + ": expected >= " +
                        std::to_string(256 + t->bpe.special_tokens.size()) +
                        " (256 byte tokens + special tokens)");
      }
      auto reader = core::TextReader::open(t->data).take_or_throw();
      core::Progress read_prog("read", reader->bytes_total(), "B", g.progress());
      uint64_t bytes = 0, docs = 0;
      auto next = [&](std::string& doc) -> bool {
        core::TextBlock b;
        if (t->max_bytes && bytes >= t->max_bytes) return false;
        if (!reader->next(b).take_or_throw()) return false;
        bytes += b.text.size();
        docs += b.ends_document;
        read_prog.update(reader->bytes_read());
        doc = std::move(b.text);
        return true;
      };
      core::Progress merge_prog("merges", 0, "merges", g.progress());
      t->bpe.progress = [&](int64_t done, int64_t want) { merge_prog.update(uint64_t(done)); };
      auto t0 = std::chrono::steady_clock::now();
      core::Tokenizer tk = pipeline::bpe_train(next, t->bpe).take_or_throw();
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      merge_prog.finish();
      throw_if_error(tk.save(t->out));
      if (g.json) {
        print_json({{"out", t->out}, {"vocab_size", tk.vocab_size()}, {"bytes", bytes},
                    {"documents", docs}, {"seconds", secs}, {"fingerprint", tk.fingerprint()}});
      } else {
        std::printf("wrote %s: vocab %d, trained on %s in %llu documents in %.1f s\n",
                    t->out.c_str(), tk.vocab_size(), core::human_bytes(double(bytes)).c_str(),
                    (unsigned long long)docs, secs);
      }
      return 0;
    });
  });

  struct CodecOpts {
    std::string tokenizer, text, ids, jsonl;
    bool special = false;
  };
  auto c = std::make_shared<CodecOpts>();
  CLI::App* enc = tok->add_subcommand("encode", "Encode text to ids (comma-separated)");
  enc->add_option("--tokenizer", c->tokenizer, "tokenizer.json")->required();
  auto* text_opt = enc->add_option("--text", c->text, "Text to encode");
  auto* jsonl_opt = enc->add_option(
      "--jsonl", c->jsonl, "Encode the \"text\" of each line of a .jsonl file; prints JSON lines "
                           "{\"text\", \"ids\", \"decoded\"}");
  text_opt->excludes(jsonl_opt);
  enc->add_flag("--add-special-tokens", c->special, "Apply the post-processor (e.g. BOS)");
  enc->callback([c, &g, text_opt] {
    g.exit_code = run_guarded("tokenizer encode", g, false, [&] {
      core::Tokenizer tk = core::Tokenizer::load(c->tokenizer).take_or_throw();
      if (!c->jsonl.empty()) {
        std::ifstream in(c->jsonl);
        if (!in) throw Error(StatusCode::kNotFound, c->jsonl + ": cannot open");
        std::string line;
        for (int64_t n = 1; std::getline(in, line); ++n) {
          if (line.empty()) continue;
          nlohmann::json j = core::json_check_depth(line, c->jsonl).is_ok()
                                 ? nlohmann::json::parse(line, nullptr, false)
                                 : nlohmann::json(nlohmann::json::value_t::discarded);
          if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
            throw Error(StatusCode::kInvalidInput, c->jsonl + ":" + std::to_string(n) +
                                                       ": expected a JSON object with a string "
                                                       "\"text\" field");
          }
          std::string t = j["text"].get<std::string>();
          const std::vector<int32_t> ids = tk.encode(t, c->special);
          std::cout << nlohmann::json({{"text", t}, {"ids", ids}, {"decoded", tk.decode(ids)}})
                           .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                    << "\n";
        }
        return 0;
      }
      if (text_opt->count() == 0) {
        throw Error(StatusCode::kInvalidInput, "give --text TEXT or --jsonl FILE");
      }
      std::vector<int32_t> ids = tk.encode(c->text, c->special);
      if (g.json) {
        print_json({{"ids", ids}});
      } else {
        for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? "," : "", ids[i]);
        std::printf("\n");
      }
      return 0;
    });
  });
  CLI::App* dec = tok->add_subcommand("decode", "Decode comma-separated ids to text");
  dec->add_option("--tokenizer", c->tokenizer, "tokenizer.json")->required();
  dec->add_option("--ids", c->ids, "Ids, e.g. 1,2,3")->required();
  dec->callback([c, &g] {
    g.exit_code = run_guarded("tokenizer decode", g, false, [&] {
      core::Tokenizer tk = core::Tokenizer::load(c->tokenizer).take_or_throw();
      std::vector<int32_t> ids;
      std::stringstream ss(c->ids);
      std::string item;
      while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        long v = std::strtol(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 0 || v >= tk.vocab_size()) {
          throw Error(StatusCode::kInvalidInput,
                      "--ids: '" + item + "' is not a token id in [0, " +
                          std::to_string(tk.vocab_size()) + ")");
        }
        ids.push_back(int32_t(v));
      }
      std::string text = tk.decode(ids);
      if (g.json) print_json({{"text", text}});
      else std::printf("%s\n", text.c_str());
      return 0;
    });
  });
}

}  // namespace shrink::cli
