// `shrink data prepare --data PATH --tokenizer T --out DIR`: stream-tokenize a corpus into
// train/val token shards (deterministic document-level split). `shrink data make-task`: a
// multiple-choice task from a corpus (core/choice_task.h); `data convert-task`: one from a standard
// benchmark's published records. `shrink data stats`: token counts.
#include <cstdio>

#include "core/choice_task.h"
#include "core/dataset.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "pipeline/task_convert.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

struct PrepareArgs {
  std::string data = core::kDefaultCorpus, tokenizer, out;
  core::PrepareOptions p;
};

int run_data_prepare(const PrepareArgs& a, const Globals& g) {
  if (!(a.p.val_fraction >= 0 && a.p.val_fraction < 1)) {
    throw Error(StatusCode::kInvalidInput, "--val-fraction must be in [0, 1)");
  }
  core::Tokenizer tk = core::Tokenizer::load(a.tokenizer).take_or_throw();
  core::Progress prog("prepare", 0, "B", g.progress());
  core::PrepareOptions p = a.p;
  p.progress = [&](uint64_t done, uint64_t total, uint64_t tokens) {
    prog.update(done, core::human_count(double(tokens)) + " tokens");
  };
  core::PrepareStats s = core::dataset_prepare(a.data, tk, a.out, p).take_or_throw();
  prog.finish();
  if (g.json) {
    print_json({{"out", a.out}, {"train_tokens", s.train_tokens}, {"val_tokens", s.val_tokens},
                {"documents", s.documents}, {"bytes", s.bytes}, {"shards", s.shards}});
  } else {
    std::printf("wrote %s: %llu train + %llu val tokens from %llu documents (%s)\n", a.out.c_str(),
                (unsigned long long)s.train_tokens, (unsigned long long)s.val_tokens,
                (unsigned long long)s.documents, core::human_bytes(double(s.bytes)).c_str());
  }
  return 0;
}

void register_data_prepare(CLI::App* data, Globals& g) {
  auto a = std::make_shared<PrepareArgs>();
  CLI::App* sub = data->add_subcommand(
      "prepare", "Tokenize text into train/val shards (uint16/uint32 + JSON header)");
  sub->add_option("--data", a->data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer.json")->required();
  sub->add_option("--out", a->out, "Output directory")->required();
  sub->add_option("--val-fraction", a->p.val_fraction, "Fraction of documents held out")
      ->capture_default_str();
  sub->add_option("--seed", a->p.seed, "Split seed")->capture_default_str();
  sub->add_option("--shard-tokens", a->p.shard_tokens, "Tokens per shard file")
      ->capture_default_str();
  sub->add_option("--max-tokens", a->p.max_tokens, "Stop after this many tokens (0: all)")
      ->capture_default_str();
  sub->callback([a, &g] {
    g.exit_code = run_guarded("data prepare", g, false, [&] { return run_data_prepare(*a, g); });
  });
}

struct MakeTaskArgs {
  std::string out;
  core::ChoiceTaskBuildOptions b;
  MakeTaskArgs() { b.data = core::kDefaultCorpus; }
};

int run_data_make_task(const MakeTaskArgs& a, const Globals& g) {
  core::ChoiceTaskBuildResult r = core::choice_task_build(a.b, a.out).take_or_throw();
  if (g.json) {
    print_json({{"out", a.out},
                {"items", r.items},
                {"documents", r.documents},
                {"choices", a.b.choices},
                {"split", a.b.split}});
  } else {
    std::printf(
        "wrote %s: %lld items with %lld choices each, from %lld %s documents of %lld..%lld words\n",
        a.out.c_str(), (long long)r.items, (long long)a.b.choices, (long long)r.documents,
        a.b.split.c_str(), (long long)a.b.min_words, (long long)a.b.max_words);
  }
  return 0;
}

void register_data_make_task(CLI::App* data, Globals& g) {
  auto a = std::make_shared<MakeTaskArgs>();
  CLI::App* sub = data->add_subcommand(
      "make-task",
      "Build a multiple-choice task (JSONL) from a corpus, HellaSwag-style: each held-out "
      "document of --min-words..--max-words words is cut near its middle, and the choices are "
      "its true ending and endings of other documents of similar length");
  sub->add_option("--data", a->b.data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  sub->add_option("--out", a->out, "Output .jsonl")->required();
  sub->add_option("--split", a->b.split, "Documents to use: val, train or all")
      ->capture_default_str();
  sub->add_option("--val-fraction", a->b.val_fraction,
                  "Held-out fraction of the document-level split (as `data prepare`)")
      ->capture_default_str();
  sub->add_option("--split-seed", a->b.split_seed, "Seed of the split (as `data prepare --seed`)")
      ->capture_default_str();
  sub->add_option("--seed", a->b.seed, "Seed of the distractors and label order")
      ->capture_default_str();
  sub->add_option("--choices", a->b.choices, "Choices per item (2..16)")->capture_default_str();
  sub->add_option("--max-items", a->b.max_items, "At most this many items (0: all)")
      ->capture_default_str();
  sub->add_option("--min-words", a->b.min_words, "Shortest document used, in words")
      ->capture_default_str();
  sub->add_option("--max-words", a->b.max_words, "Longest document used, in words")
      ->capture_default_str();
  sub->callback([a, &g] {
    g.exit_code =
        run_guarded("data make-task", g, false, [&] { return run_data_make_task(*a, g); });
  });
}

struct ConvertTaskArgs {
  std::string out;
  pipeline::ChoiceTaskConvertOptions c;
};

int run_data_convert_task(const ConvertTaskArgs& a, const Globals& g) {
  pipeline::ChoiceTaskConvertResult r = pipeline::choice_task_convert(a.c, a.out).take_or_throw();
  if (g.json) {
    print_json({{"out", a.out}, {"items", r.items}, {"format", a.c.format}});
  } else {
    std::printf("wrote %s: %lld %s items\n", a.out.c_str(), (long long)r.items, a.c.format.c_str());
  }
  return 0;
}

void register_data_convert_task(CLI::App* data, Globals& g) {
  auto a = std::make_shared<ConvertTaskArgs>();
  CLI::App* sub = data->add_subcommand(
      "convert-task",
      "Convert a standard benchmark (hellaswag, arc, openbookqa, piqa, winogrande, mmlu) from its "
      "published JSONL layout into a task file with lm-eval's zero-shot prompts");
  sub->add_option("in", a->c.in, "The benchmark's JSONL (one record per line)")->required();
  sub->add_option("--format", a->c.format, "hellaswag, arc, openbookqa, piqa, winogrande or mmlu")
      ->required();
  sub->add_option("--out", a->out, "Output .jsonl")->required();
  sub->add_option("--labels", a->c.labels,
                  "piqa: a labels file (one 0/1 per line, as valid-labels.lst)");
  sub->add_option("--max-items", a->c.max_items, "At most this many items (0: all)")
      ->capture_default_str();
  sub->add_option("--fewshot", a->c.fewshot,
                  "Examples before each query: the first K records of --fewshot-from (of the "
                  "same subject for mmlu, as lm-eval's first_n sampler over MMLU's dev split)")
      ->capture_default_str();
  sub->add_option("--fewshot-from", a->c.fewshot_from,
                  "Records (same format) the few-shot examples come from, e.g. MMLU's dev split");
  sub->callback([a, &g] {
    g.exit_code =
        run_guarded("data convert-task", g, false, [&] { return run_data_convert_task(*a, g); });
  });
}

struct StatsArgs {
  std::string dir;
  int64_t seq_len = 256;
};

int run_data_stats(const StatsArgs& a, const Globals& g) {
  if (a.seq_len < 2) throw Error(StatusCode::kInvalidInput, "--seq-len must be >= 2");
  auto tr = core::TokenDataset::open(a.dir, core::Split::kTrain).take_or_throw();
  auto va = core::TokenDataset::open(a.dir, core::Split::kVal).take_or_throw();
  core::UnigramBaseline u = core::unigram_baseline(tr, va, a.seq_len, tr.vocab_size());
  if (g.json) {
    print_json({{"train_tokens", tr.size()}, {"val_tokens", va.size()},
                {"vocab_size", tr.vocab_size()}, {"distinct_train_tokens", u.distinct_train_tokens},
                {"unigram_val_perplexity", u.perplexity}, {"unigram_val_nll", u.mean_nll},
                {"tokens_scored", u.tokens_scored}, {"seq_len", a.seq_len}});
  } else {
    std::printf(
        "%s: %llu train + %llu val tokens, vocab %d (%d used in train); unigram "
        "baseline on val: perplexity %.2f (%llu tokens scored, seq-len %lld)\n",
        a.dir.c_str(), (unsigned long long)tr.size(), (unsigned long long)va.size(),
        tr.vocab_size(), u.distinct_train_tokens, u.perplexity,
        (unsigned long long)u.tokens_scored, (long long)a.seq_len);
  }
  return 0;
}

void register_data_stats(CLI::App* data, Globals& g) {
  auto a = std::make_shared<StatsArgs>();
  CLI::App* sub = data->add_subcommand(
      "stats", "Token counts and the unigram-baseline perplexity of the validation split");
  sub->add_option("dir", a->dir, "A `shrink data prepare` directory")->required();
  sub->add_option("--seq-len", a->seq_len, "Window length (as in `shrink eval`)")
      ->capture_default_str();
  sub->callback([a, &g] {
    g.exit_code = run_guarded("data stats", g, false, [&] { return run_data_stats(*a, g); });
  });
}

}  // namespace

void register_data(CLI::App& app, Globals& g) {
  CLI::App* data = app.add_subcommand("data", "Prepare token datasets");
  data->require_subcommand(1);
  register_data_prepare(data, g);
  register_data_make_task(data, g);
  register_data_convert_task(data, g);
  register_data_stats(data, g);
}

}  // namespace shrink::cli
