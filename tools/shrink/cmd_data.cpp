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

void register_data(CLI::App& app, Globals& g) {
  CLI::App* data = app.add_subcommand("data", "Prepare token datasets");
  data->require_subcommand(1);
  struct Opts {
    std::string data = core::kDefaultCorpus, tokenizer, out;
    core::PrepareOptions p;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* prep = data->add_subcommand(
      "prepare", "Tokenize text into train/val shards (uint16/uint32 + JSON header)");
  prep->add_option("--data", o->data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  prep->add_option("--tokenizer", o->tokenizer, "tokenizer.json")->required();
  prep->add_option("--out", o->out, "Output directory")->required();
  prep->add_option("--val-fraction", o->p.val_fraction, "Fraction of documents held out")
      ->capture_default_str();
  prep->add_option("--seed", o->p.seed, "Split seed")->capture_default_str();
  prep->add_option("--shard-tokens", o->p.shard_tokens, "Tokens per shard file")
      ->capture_default_str();
  prep->add_option("--max-tokens", o->p.max_tokens, "Stop after this many tokens (0: all)")
      ->capture_default_str();
  prep->callback([o, &g] {
    g.exit_code = run_guarded("data prepare", g, false, [&] {
      if (!(o->p.val_fraction >= 0 && o->p.val_fraction < 1)) {
        throw Error(StatusCode::kInvalidInput, "--val-fraction must be in [0, 1)");
      }
      core::Tokenizer tk = core::Tokenizer::load(o->tokenizer).take_or_throw();
      core::Progress prog("prepare", 0, "B", g.progress());
      o->p.progress = [&](uint64_t done, uint64_t total, uint64_t tokens) {
        prog.update(done, core::human_count(double(tokens)) + " tokens");
      };
      core::PrepareStats s = core::dataset_prepare(o->data, tk, o->out, o->p).take_or_throw();
      prog.finish();
      if (g.json) {
        print_json({{"out", o->out},
                    {"train_tokens", s.train_tokens},
                    {"val_tokens", s.val_tokens},
                    {"documents", s.documents},
                    {"bytes", s.bytes},
                    {"shards", s.shards}});
      } else {
        std::printf("wrote %s: %llu train + %llu val tokens from %llu documents (%s)\n",
                    o->out.c_str(), (unsigned long long)s.train_tokens,
                    (unsigned long long)s.val_tokens, (unsigned long long)s.documents,
                    core::human_bytes(double(s.bytes)).c_str());
      }
      return 0;
    });
  });

  struct TaskOpts {
    std::string out;
    core::ChoiceTaskBuildOptions b;
  };
  auto to = std::make_shared<TaskOpts>();
  to->b.data = core::kDefaultCorpus;
  CLI::App* task = data->add_subcommand(
      "make-task",
      "Build a multiple-choice task (JSONL) from a corpus, HellaSwag-style: each held-out "
      "document of --min-words..--max-words words is cut near its middle, and the choices are "
      "its true ending and endings of other documents of similar length");
  task->add_option("--data", to->b.data, "Text file, directory, .jsonl or fortune files")
      ->capture_default_str();
  task->add_option("--out", to->out, "Output .jsonl")->required();
  task->add_option("--split", to->b.split, "Documents to use: val, train or all")
      ->capture_default_str();
  task->add_option("--val-fraction", to->b.val_fraction,
                   "Held-out fraction of the document-level split (as `data prepare`)")
      ->capture_default_str();
  task->add_option("--split-seed", to->b.split_seed, "Seed of the split (as `data prepare --seed`)")
      ->capture_default_str();
  task->add_option("--seed", to->b.seed, "Seed of the distractors and label order")
      ->capture_default_str();
  task->add_option("--choices", to->b.choices, "Choices per item (2..16)")->capture_default_str();
  task->add_option("--max-items", to->b.max_items, "At most this many items (0: all)")
      ->capture_default_str();
  task->add_option("--min-words", to->b.min_words, "Shortest document used, in words")
      ->capture_default_str();
  task->add_option("--max-words", to->b.max_words, "Longest document used, in words")
      ->capture_default_str();
  task->callback([to, &g] {
    g.exit_code = run_guarded("data make-task", g, false, [&] {
      core::ChoiceTaskBuildResult r = core::choice_task_build(to->b, to->out).take_or_throw();
      if (g.json) {
        print_json({{"out", to->out},
                    {"items", r.items},
                    {"documents", r.documents},
                    {"choices", to->b.choices},
                    {"split", to->b.split}});
      } else {
        std::printf(
            "wrote %s: %lld items with %lld choices each, from %lld %s documents of "
            "%lld..%lld words\n",
            to->out.c_str(), (long long)r.items, (long long)to->b.choices, (long long)r.documents,
            to->b.split.c_str(), (long long)to->b.min_words, (long long)to->b.max_words);
      }
      return 0;
    });
  });

  struct ConvOpts {
    std::string out;
    pipeline::ChoiceTaskConvertOptions c;
  };
  auto co = std::make_shared<ConvOpts>();
  CLI::App* conv = data->add_subcommand(
      "convert-task",
      "Convert a standard benchmark (hellaswag, arc, openbookqa, piqa, winogrande, mmlu) from its "
      "published JSONL layout into a task file with lm-eval's zero-shot prompts");
  conv->add_option("in", co->c.in, "The benchmark's JSONL (one record per line)")->required();
  conv->add_option("--format", co->c.format, "hellaswag, arc, openbookqa, piqa, winogrande or mmlu")
      ->required();
  conv->add_option("--out", co->out, "Output .jsonl")->required();
  conv->add_option("--labels", co->c.labels,
                   "piqa: a labels file (one 0/1 per line, as valid-labels.lst)");
  conv->add_option("--max-items", co->c.max_items, "At most this many items (0: all)")
      ->capture_default_str();
  conv->add_option("--fewshot", co->c.fewshot,
                   "Examples before each query: the first K records of --fewshot-from (of the "
                   "same subject for mmlu, as lm-eval's first_n sampler over MMLU's dev split)")
      ->capture_default_str();
  conv->add_option("--fewshot-from", co->c.fewshot_from,
                   "Records (same format) the few-shot examples come from, e.g. MMLU's dev split");
  conv->callback([co, &g] {
    g.exit_code = run_guarded("data convert-task", g, false, [&] {
      pipeline::ChoiceTaskConvertResult r = pipeline::choice_task_convert(co->c, co->out).take_or_throw();
      if (g.json) {
        print_json({{"out", co->out}, {"items", r.items}, {"format", co->c.format}});
      } else {
        std::printf("wrote %s: %lld %s items\n", co->out.c_str(), (long long)r.items,
                    co->c.format.c_str());
      }
      return 0;
    });
  });

  struct StatsOpts {
    std::string dir;
    int64_t seq_len = 256;
  };
  auto so = std::make_shared<StatsOpts>();
  CLI::App* stats = data->add_subcommand(
      "stats", "Token counts and the unigram-baseline perplexity of the validation split");
  stats->add_option("dir", so->dir, "A `shrink data prepare` directory")->required();
  stats->add_option("--seq-len", so->seq_len, "Window length (as in `shrink eval`)")
      ->capture_default_str();
  stats->callback([so, &g] {
    g.exit_code = run_guarded("data stats", g, false, [&] {
      if (so->seq_len < 2) throw Error(StatusCode::kInvalidInput, "--seq-len must be >= 2");
      auto tr = core::TokenDataset::open(so->dir, core::Split::kTrain).take_or_throw();
      auto va = core::TokenDataset::open(so->dir, core::Split::kVal).take_or_throw();
      core::UnigramBaseline u = core::unigram_baseline(tr, va, so->seq_len, tr.vocab_size());
      if (g.json) {
        print_json({{"train_tokens", tr.size()},
                    {"val_tokens", va.size()},
                    {"vocab_size", tr.vocab_size()},
                    {"distinct_train_tokens", u.distinct_train_tokens},
                    {"unigram_val_perplexity", u.perplexity},
                    {"unigram_val_nll", u.mean_nll},
                    {"tokens_scored", u.tokens_scored},
                    {"seq_len", so->seq_len}});
      } else {
        std::printf(
            "%s: %llu train + %llu val tokens, vocab %d (%d used in train); unigram "
            "baseline on val: perplexity %.2f (%llu tokens scored, seq-len %lld)\n",
            so->dir.c_str(), (unsigned long long)tr.size(), (unsigned long long)va.size(),
            tr.vocab_size(), u.distinct_train_tokens, u.perplexity,
            (unsigned long long)u.tokens_scored, (long long)so->seq_len);
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
