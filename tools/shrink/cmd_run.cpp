// `shrink run RECIPE.yaml [--set PATH=VALUE]... [--dry-run] [--out DIR] [--from N]`: the recipe
// runner. It validates the whole recipe first (every problem, each with file:line:col), then
// runs the stages in order, each one's model feeding the next, and writes OUT/report.json,
// report.md and report.svg.
//
// Why this way:
// - A stage's keys are its command's options: the runner checks each key by asking that
//   command to parse it (unknown keys get the closest valid key; type and range errors come
//   from the command's own validation, run in validate-only mode), and it runs a stage by
//   running the command. One definition, so the CLI and recipes cannot drift apart.
// - Each stage runs in a child process (fork before any LibTorch use in the parent): its peak
//   memory is measured exactly (wait4), and a crash or kill of one stage cannot corrupt the
//   runner's state.
// - Stage directories OUT/NN-type hold the model, the stage's own report and stage.json, written
//   last and atomically with the stage's hash (type, keys, data, and the previous stage's hash).
//   A rerun skips stages whose hash is unchanged; train/distill stages resume from their
//   checkpoint after an interruption.
// Tested by tests/cli/test_run.sh (validation of a ten-mistake recipe, dry run, a tiny recipe
// end to end, kill and rerun).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "core/dataset.h"
#include "core/json_util.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/recipe.h"
#include "core/report.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Keys the runner sets itself, per stage type.
const std::map<std::string, std::vector<std::string>> kRunnerKeys = {
    {"train", {"model", "out", "resume"}},
    {"distill", {"teacher", "out", "resume"}},
    {"prune", {"model", "out"}},
    {"quantize", {"model", "out"}},
    {"eval", {"model"}},
    {"export", {"model", "out"}},
    {"verify", {"compact", "reference"}},
    {"report", {}}};

bool produces_model(const std::string& t) {
  return t == "train" || t == "distill" || t == "prune" || t == "quantize";
}

struct Inputs {
  std::string model;    // the model this stage reads
  std::string teacher;  // the recipe's teacher
  std::string train, calib, eval, tokenizer;
  std::string task;  // data.task: a multiple-choice task for every stage's accuracy and verify
};

// Values that are flags ("true"/"false") become present/absent.
bool is_flag(const CLI::Option* o) { return o->get_expected_max() == 0; }

std::string opt_key(const CLI::Option* o) {
  if (!o->get_lnames().empty()) return o->get_lnames()[0];
  return o->get_name();
}

// The subcommand's option keys (long names without dashes), and which are flags.
std::map<std::string, bool> stage_keys(const std::string& type) {
  std::map<std::string, bool> keys;
  if (type == "report") return keys;
  CLI::App app{"shrink"};
  Globals g;
  build_app(app, g);
  CLI::App* sub = nullptr;
  try {
    sub = app.get_subcommand(type);
  } catch (const CLI::Error&) {
    throw Error(StatusCode::kInvalidInput, "stage type '" + type + "' is not available in this build");
  }
  for (const CLI::Option* o : sub->get_options()) {
    if (o->get_lnames().empty()) continue;  // positionals and -h
    const std::string k = opt_key(o);
    if (k == "help") continue;
    keys[k] = is_flag(o);
  }
  return keys;
}

// argv for a stage (after the global options): the command, the runner's inputs, then the keys.
std::vector<std::string> stage_args(const core::RecipeStage& s, const Inputs& in,
                                    const std::string& dir, const std::map<std::string, bool>& flags) {
  std::vector<std::string> a = {s.type};
  auto has = [&](const char* k) { return s.find(k) != nullptr; };
  const std::string model_out = dir + "/model";
  if (s.type == "train") {  // from `config` (a fresh model), else continuing the input model
    if (!has("config")) a.insert(a.end(), {"--model", in.model});
    a.insert(a.end(), {"--out", dir, "--resume"});
    if (!has("data")) a.insert(a.end(), {"--data", in.train});
  } else if (s.type == "distill") {
    a.insert(a.end(), {"--teacher", in.teacher, "--out", dir, "--resume"});
    if (!has("student") && !has("student-layers") && !has("student-config")) {
      a.insert(a.end(), {"--student", in.model});
    }
    if (!has("data")) a.insert(a.end(), {"--data", in.train});
  } else if (s.type == "prune" || s.type == "quantize") {
    a.insert(a.end(), {in.model, "--out", model_out});
    if (!has("data")) a.insert(a.end(), {"--data", in.calib});
  } else if (s.type == "eval") {
    a.push_back(in.model);
    if (!has("data")) a.insert(a.end(), {"--data", in.eval});
    if (!has("split")) a.insert(a.end(), {"--split", "val"});
  } else if (s.type == "export") {
    a.insert(a.end(), {in.model, "--out", dir + "/export"});
  } else if (s.type == "verify") {
    a.insert(a.end(), {in.model, "--reference", in.teacher});
    if (!has("data")) a.insert(a.end(), {"--data", in.eval});
    if (!has("split")) a.insert(a.end(), {"--split", "val"});  // held-out documents
    if (!has("task") && !in.task.empty()) a.insert(a.end(), {"--task", in.task});
  }
  if (!in.tokenizer.empty() && !has("tokenizer") && (s.type == "train" || s.type == "distill" ||
                                                       s.type == "prune" || s.type == "quantize" ||
                                                       s.type == "eval")) {
    a.insert(a.end(), {"--tokenizer", in.tokenizer});
  }
  for (const auto& p : s.params) {
    auto it = flags.find(p.key);
    if (it != flags.end() && it->second) {
      if (p.value == "true" || p.value == "yes" || p.value == "1") a.push_back("--" + p.key);
      continue;
    }
    a.push_back("--" + p.key);
    a.push_back(p.value);
  }
  return a;
}

std::string hex(uint64_t h) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)h);
  return b;
}

uint64_t hash_str(uint64_t h, const std::string& s) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return (h ^ 0xff) * 0x100000001b3ULL;
}

bool is_tty() { return core::Progress::stderr_is_tty(); }

struct Logger {
  bool lines;  // JSON lines (CI / --json) instead of human lines
  void event(const json& j) {
    if (lines) {
      std::cout << j.dump() << std::endl;
    } else {
      std::string t = j.value("event", "");
      if (t == "stage") {
        std::fprintf(stderr, "[%s] stage %d %s: %s%s\n", j.value("status", "").c_str(),
                     j.value("index", 0), j.value("type", "").c_str(), j.value("dir", "").c_str(),
                     j.contains("seconds") ? (" (" + std::to_string(int(j["seconds"].get<double>())) + " s)").c_str() : "");
      } else if (j.contains("message")) {
        std::fprintf(stderr, "%s\n", j["message"].get<std::string>().c_str());
      }
    }
  }
};

// Run `args` as a `shrink` command in a child process; JSON result into json_path.
struct ChildResult {
  int rc = 1;
  double seconds = 0, peak_rss_mb = 0;
};
ChildResult run_child(const std::vector<std::string>& args, const std::string& json_path,
                      int threads, bool quiet) {
  std::vector<std::string> full = {"--threads", std::to_string(threads), "--json-out", json_path};
  if (quiet) full.push_back("-q");
  full.insert(full.end(), args.begin(), args.end());
  std::fflush(stdout);
  std::fflush(stderr);
  auto t0 = Clock::now();
  pid_t pid = fork();
  if (pid < 0) throw Error(StatusCode::kIoError, std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    std::string err;
    int rc = run_cli(full, false, &err);
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  ChildResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.peak_rss_mb = double(ru.ru_maxrss) / 1024.0;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  return r;
}

json read_json(const std::string& path) {
  if (!fs::exists(path)) return nullptr;
  auto t = core::read_file(path);
  if (!t.is_ok()) return nullptr;
  auto j = core::json_parse_untrusted(t.value(), path);
  return j.is_ok() ? j.value() : json(nullptr);
}

struct RunOpts {
  std::string recipe;
  std::vector<std::string> sets;
  bool dry_run = false;
  std::string out;
  int from = -1;
  int64_t metrics_tokens = 8192;
};

}  // namespace

void register_run(CLI::App& app, Globals& g) {
  auto o = std::make_shared<RunOpts>();
  CLI::App* sub = app.add_subcommand(
      "run", "Run a YAML recipe: validate it all, then its stages in order, each model feeding "
             "the next; writes OUT/NN-stage/ and OUT/report.{json,md,svg}. Exit 3 when verify fails");
  sub->add_option("recipe", o->recipe, "Recipe file (.yaml)")->required();
  sub->add_option("--set", o->sets, "Override a value: stages.2.quantize.scheme=w8a16 (repeatable)");
  sub->add_flag("--dry-run", o->dry_run, "Validate and print the plan; run nothing");
  sub->add_option("--out", o->out, "Output directory (default: the recipe's output)");
  sub->add_option("--from", o->from, "Rerun from this stage index (0-based) on");
  sub->add_option("--metrics-tokens", o->metrics_tokens,
                  "Evaluation tokens for each stage's perplexity/KL/top-1 against the teacher")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("run", g, false, [&]() -> int {
      auto text = core::read_file(o->recipe);
      if (!text.is_ok()) throw Error(text.status());
      std::vector<std::string> issues;
      core::Recipe r = core::recipe_parse(o->recipe, text.value(), o->sets, &issues);
      const fs::path base = fs::path(o->recipe).parent_path();
      auto resolve = [&](const std::string& p) {
        if (p.empty() || fs::path(p).is_absolute() || fs::exists(p)) return p;
        fs::path q = base / p;  // paths relative to the recipe file work too
        return fs::exists(q) ? q.string() : p;
      };
      auto where = [&](int line, int col) { return core::recipe_where(o->recipe, line, col); };
      // Inputs.
      Inputs in;
      in.teacher = resolve(r.teacher.value);
      if (!r.teacher.value.empty() && !fs::exists(in.teacher + "/config.json")) {
        issues.push_back(where(r.teacher.line, r.teacher.col) + "teacher: '" + r.teacher.value +
                         "' is not a model directory (no config.json)");
      }
      in.train = r.data_train.value.empty() ? core::kDefaultCorpus : resolve(r.data_train.value);
      in.calib = r.data_calib.value.empty() ? in.train : resolve(r.data_calib.value);
      in.eval = r.data_eval.value.empty() ? in.train : resolve(r.data_eval.value);
      in.tokenizer = resolve(r.data_tokenizer.value);
      in.task = resolve(r.data_task.value);
      for (auto* v :
           {&r.data_train, &r.data_calib, &r.data_eval, &r.data_tokenizer, &r.data_task}) {
        if (!v->value.empty() && !fs::exists(resolve(v->value))) {
          issues.push_back(where(v->line, v->col) + "data." + v->key + ": '" + v->value +
                           "' does not exist");
        }
      }
      // Stage keys, checked by the commands themselves.
      for (size_t i = 0; i < r.stages.size(); ++i) {
        const core::RecipeStage& s = r.stages[i];
        const std::string sw = "stages[" + std::to_string(i) + "]." + s.type;
        std::map<std::string, bool> keys = stage_keys(s.type);
        std::vector<std::string> names;
        for (auto& [k, f] : keys) names.push_back(k);
        const auto& reserved = kRunnerKeys.at(s.type);
        Inputs ph{"MODEL", "TEACHER", "DATA", "DATA", "DATA", ""};
        bool any_bad = false;
        std::vector<const core::RecipeValue*> cand;  // keys that exist, with a value of their type
        for (const auto& p : s.params) {
          if (std::find(reserved.begin(), reserved.end(), p.key) != reserved.end()) {
            issues.push_back(where(p.line, p.col) + sw + "." + p.key + ": set by the runner (from "
                             "the previous stage and the recipe's teacher/output); remove it");
            any_bad = true;
            continue;
          }
          auto it = keys.find(p.key);
          if (it == keys.end()) {
            std::string c = core::closest_word(p.key, names);
            issues.push_back(where(p.line, p.col) + sw + ": unknown key '" + p.key + "'" +
                             (c.empty() ? "" : "; did you mean '" + c + "'?"));
            any_bad = true;
            continue;
          }
          if (it->second && p.value != "true" && p.value != "false" && p.value != "yes" &&
              p.value != "no" && p.value != "1" && p.value != "0") {
            issues.push_back(where(p.line, p.col) + sw + "." + p.key + ": '" + p.value +
                             "' is not a boolean; expected true or false");
            any_bad = true;
            continue;
          }
          cand.push_back(&p);
        }
        // Each value, checked by the command: alone first, then together with every key found
        // valid so far, until nothing changes, so that a key which only makes sense with another
        // (group-size with scheme: w4a16, awq-no-clip with awq: true) is judged in its stage's
        // context while a bad value still gets its own line:col.
        std::vector<bool> ok(cand.size(), false);
        std::vector<std::string> errs(cand.size());
        for (bool grew = true; grew;) {
          grew = false;
          for (size_t j = 0; j < cand.size(); ++j) {
            if (ok[j]) continue;
            core::RecipeStage one = s;
            one.params.clear();
            for (size_t k = 0; k < cand.size(); ++k) {
              if (ok[k]) one.params.push_back(*cand[k]);
            }
            one.params.push_back(*cand[j]);
            if (run_cli(stage_args(one, ph, "OUT", keys), true, &errs[j]) == 0) {
              ok[j] = true;
              grew = true;
            }
          }
        }
        for (size_t j = 0; j < cand.size(); ++j) {
          if (ok[j]) continue;
          issues.push_back(where(cand[j]->line, cand[j]->col) + sw + "." + cand[j]->key + ": " +
                           errs[j]);
          any_bad = true;
        }
        if (!any_bad && s.type != "report") {  // the whole stage (each key was fine in context)
          std::string err;
          if (run_cli(stage_args(s, ph, "OUT", keys), true, &err) != 0) {
            issues.push_back(where(s.line, s.col) + sw + ": " + err);
          }
        }
      }
      if (!issues.empty()) {
        std::sort(issues.begin(), issues.end(), [](const std::string& a, const std::string& b) {
          auto lc = [](const std::string& s) {
            int l = 0, c = 0;
            size_t p1 = s.find(':'), p2 = s.find(':', p1 + 1), p3 = s.find(':', p2 + 1);
            if (p1 != std::string::npos && p2 != std::string::npos && p3 != std::string::npos) {
              l = std::atoi(s.substr(p1 + 1, p2 - p1 - 1).c_str());
              c = std::atoi(s.substr(p2 + 1, p3 - p2 - 1).c_str());
            }
            return std::pair{l, c};
          };
          return lc(a) < lc(b);
        });
        for (const auto& m : issues) std::fprintf(stderr, "%s\n", m.c_str());
        throw Error(StatusCode::kInvalidInput,
                    std::to_string(issues.size()) + " problem" + (issues.size() > 1 ? "s" : "") +
                        " in " + o->recipe + "; nothing was run");
      }

      // Plan.
      std::string out = !o->out.empty() ? o->out
                        : !r.output.value.empty() ? r.output.value
                        : "runs/" + fs::path(o->recipe).stem().string();
      Logger log{g.json || !is_tty()};
      struct Planned {
        std::string dir, model_in, model_out;
        std::vector<std::string> args;
      };
      std::vector<Planned> plan;
      std::string cur = in.teacher;
      for (size_t i = 0; i < r.stages.size(); ++i) {
        const auto& s = r.stages[i];
        char nn[8];
        std::snprintf(nn, sizeof nn, "%02zu", i);
        Planned p;
        p.dir = out + "/" + nn + "-" + s.type;
        p.model_in = cur;
        Inputs si = in;
        si.model = cur;
        p.args = stage_args(s, si, p.dir, stage_keys(s.type));
        if (s.type == "distill" || s.type == "train") p.model_out = p.dir + "/model";
        else if (produces_model(s.type)) p.model_out = p.dir + "/model";
        if (!p.model_out.empty()) cur = p.model_out;
        plan.push_back(p);
      }
      if (o->dry_run) {
        auto stats = core::model_stats(in.teacher);
        double n = stats.is_ok() ? double(stats->params) : 0;
        json j = {{"recipe", o->recipe}, {"out", out}, {"teacher", in.teacher},
                  {"teacher_params", n}, {"stages", json::array()}};
        for (size_t i = 0; i < plan.size(); ++i) {
          const auto& s = r.stages[i];
          std::string cmd = "shrink";
          for (const auto& a : plan[i].args) cmd += " " + a;
          // Cost: FLOPs as 6 N T for training tokens, 2 N T for forward-only tokens.
          auto num = [&](const char* k, double d) {
            const auto* v = s.find(k);
            try {
              return v ? std::stod(v->value) : d;
            } catch (const std::exception&) {
              return d;
            }
          };
          double flops = 0;
          if (s.type == "train") flops = 6 * n * num("steps", 1000) * num("batch", 16) * num("seq-len", 256);
          if (s.type == "distill") flops = 8 * n * num("steps", 1000) * num("batch", 16) * num("seq-len", 256);
          if (s.type == "prune" || s.type == "quantize") flops = 2 * n * num("calib-samples", 64) * num("calib-len", 256);
          j["stages"].push_back({{"index", i}, {"type", s.type}, {"input", plan[i].model_in},
                                 {"output", plan[i].model_out.empty() ? plan[i].dir : plan[i].model_out},
                                 {"command", cmd}, {"estimated_gflop", flops / 1e9}});
        }
        if (g.json) {
          print_json(j);
        } else {
          std::printf("plan for %s -> %s (teacher %s, %.2fM parameters)\n", o->recipe.c_str(),
                      out.c_str(), in.teacher.c_str(), n / 1e6);
          for (const auto& s : j["stages"]) {
            std::printf("  %d. %-8s %s\n       -> %s  (~%.0f GFLOP)\n", s["index"].get<int>(),
                        s["type"].get<std::string>().c_str(), s["command"].get<std::string>().c_str(),
                        s["output"].get<std::string>().c_str(), s["estimated_gflop"].get<double>());
          }
        }
        return 0;
      }

      // Run.
      fs::create_directories(out);
      const std::string eval_data = in.eval;
      auto measure = [&](const std::string& model, const std::string& json_path, bool bench) {
        std::vector<std::string> a = {"verify", model, "--reference", in.teacher, "--data", eval_data,
                                      "--split", "val", "--max-tokens", std::to_string(o->metrics_tokens),
                                      "--prompt-len", "64", "--gen-len", "16"};
        if (!bench) a.push_back("--no-bench");
        if (!in.task.empty()) a.insert(a.end(), {"--task", in.task});
        ChildResult c = run_child(a, json_path, g.threads, true);
        json v = c.rc == 0 ? read_json(json_path) : json(nullptr);
        if (v.is_null()) return json(nullptr);
        json acc = {{"perplexity", v["perplexity_compact"]},
                    {"kl", v["kl"]},
                    {"top1_agreement", v["top1_agreement"]},
                    {"decode_tokens_per_second", v["speed_compact"]["decode_tokens_per_second"]},
                    {"prefill_tokens_per_second", v["speed_compact"]["prefill_tokens_per_second"]}};
        if (v.contains("task")) {
          acc["task_acc"] = v["task"]["acc_compact"];
          acc["task_acc_norm"] = v["task"]["acc_norm_compact"];
        }
        return acc;
      };
      json report = {{"schema", core::kReportSchema},
                     {"name", fs::path(o->recipe).stem().string()},
                     {"recipe", {{"path", o->recipe}, {"text", r.text}, {"hash", hex(hash_str(0xcbf29ce484222325ULL, r.text))}, {"overrides", o->sets}}},
                     {"versions", {{"shrink", SHRINK_VERSION}}},
                     {"threads", g.threads},
                     {"stages", json::array()}};
      // The teacher, measured once per run directory.
      {
        json t = read_json(out + "/teacher.json");
        const std::string fp = core::model_fingerprint(in.teacher);
        if (t.is_null() || t.value("fingerprint", "") != fp || t.value("task", "") != in.task) {
          auto st = core::model_stats(in.teacher);
          t = {{"fingerprint", fp}, {"dir", in.teacher}, {"task", in.task},
               {"model", st.is_ok() ? core::model_stats_json(st.value()) : json(nullptr)},
               {"accuracy", measure(in.teacher, out + "/teacher.verify.json", true)}};
          throw_if_error(core::write_file_atomic(out + "/teacher.json", t.dump(2) + "\n"));
        }
        report["teacher"] = t;
      }
      uint64_t chain = hash_str(0xcbf29ce484222325ULL, report["teacher"]["fingerprint"].get<std::string>());
      chain = hash_str(chain, in.train + "|" + in.calib + "|" + in.eval + "|" + in.tokenizer + "|" +
                                  in.task);
      int gate_rc = 0;
      json verify_result = nullptr;
      for (size_t i = 0; i < r.stages.size(); ++i) {
        const auto& s = r.stages[i];
        const Planned& p = plan[i];
        std::string cmd;
        for (const auto& a : p.args) cmd += a + "\x1f";
        chain = hash_str(chain, cmd);
        const std::string h = hex(chain);
        json done = read_json(p.dir + "/stage.json");
        const bool forced = o->from >= 0 && int(i) >= o->from;
        if (!forced && !done.is_null() && done.value("hash", "") == h && done.value("status", "") == "done") {
          log.event({{"event", "stage"}, {"index", i}, {"type", s.type}, {"status", "skipped"}, {"dir", p.dir}});
          report["stages"].push_back(done["record"]);
          if (s.type == "verify") verify_result = done["record"]["verify"];
          continue;
        }
        // A stale or forced directory starts over; a pending one with the same hash resumes.
        json pending = read_json(p.dir + "/stage.pending");
        if (forced || (fs::exists(p.dir) && (pending.is_null() || pending.value("hash", "") != h))) {
          fs::remove_all(p.dir);
        }
        fs::create_directories(p.dir);
        throw_if_error(core::write_file_atomic(p.dir + "/stage.pending", json({{"hash", h}}).dump() + "\n"));
        log.event({{"event", "stage"}, {"index", i}, {"type", s.type}, {"status", "start"}, {"dir", p.dir}});
        json record = {{"index", i}, {"type", s.type}, {"dir", p.dir}, {"input", p.model_in}};
        if (s.type == "report") {
          record["seconds"] = 0.0;
        } else {
          std::string cmdline = "shrink";
          for (const auto& a : p.args) cmdline += " " + a;
          record["command"] = cmdline;
          ChildResult c = run_child(p.args, p.dir + "/result.json", g.threads, log.lines);
          record["seconds"] = c.seconds;
          record["peak_rss_mb"] = c.peak_rss_mb;
          record["result"] = read_json(p.dir + "/result.json");
          if (c.rc != 0 && !(s.type == "verify" && c.rc == 3)) {
            log.event({{"event", "stage"}, {"index", i}, {"type", s.type}, {"status", "failed"}, {"exit_code", c.rc}, {"dir", p.dir}});
            throw Error(c.rc == 2 ? StatusCode::kInvalidInput : StatusCode::kInternal,
                        "stage " + std::to_string(i) + " (" + s.type + ") failed with exit code " +
                            std::to_string(c.rc) + "; rerun continues from it");
          }
          if (s.type == "verify") {
            verify_result = record["result"];
            record["verify"] = verify_result;
            if (c.rc == 3) gate_rc = 3;
          }
        }
        if (!p.model_out.empty()) {
          auto st = core::model_stats(p.model_out);
          record["model"] = st.is_ok() ? core::model_stats_json(st.value()) : json(nullptr);
          record["output"] = p.model_out;
          record["accuracy"] = measure(p.model_out, p.dir + "/metrics.json", true);
        }
        throw_if_error(core::write_file_atomic(p.dir + "/stage.json",
                                               json({{"hash", h}, {"status", "done"}, {"record", record}}).dump(2) + "\n"));
        fs::remove(p.dir + "/stage.pending");
        log.event({{"event", "stage"}, {"index", i}, {"type", s.type}, {"status", "done"}, {"dir", p.dir},
                   {"seconds", record["seconds"]}});
        report["stages"].push_back(record);
      }
      report["verify"] = verify_result;

      // Reports: JSON, Markdown, and the size-vs-perplexity plot with the teacher marked.
      std::vector<core::PlotPoint> pts;
      auto add_point = [&](const std::string& label, const json& rec, bool teacher) {
        if (!rec.contains("model") || rec["model"].is_null() || !rec.contains("accuracy") || rec["accuracy"].is_null()) return;
        pts.push_back({label, rec["model"]["bytes"].get<double>() / 1048576.0,
                       rec["accuracy"]["perplexity"].get<double>(), teacher, false});
      };
      add_point("teacher", report["teacher"], true);
      for (const auto& s : report["stages"]) {
        add_point(std::to_string(s["index"].get<int>()) + " " + s["type"].get<std::string>(), s, false);
      }
      std::vector<double> xs, ys;
      for (auto& p : pts) xs.push_back(p.x), ys.push_back(p.y);
      auto front = core::pareto_front(xs, ys);
      for (size_t k = 0; k < pts.size(); ++k) pts[k].front = front[k];
      throw_if_error(core::write_file_atomic(out + "/report.json", report.dump(2) + "\n"));
      throw_if_error(core::write_file_atomic(out + "/report.md", core::report_markdown(report)));
      throw_if_error(core::write_file_atomic(
          out + "/report.svg", core::plot_svg(pts, report["name"].get<std::string>() + ": size vs perplexity",
                                              "model size (MiB)", "perplexity")));
      log.event({{"event", "report"}, {"dir", out},
                 {"message", "wrote " + out + "/report.json, report.md, report.svg"}});
      if (!verify_result.is_null()) {
        log.event({{"event", "verify"}, {"verdict", verify_result.value("verdict", "")},
                   {"message", "verify: " + verify_result.value("verdict", std::string("?"))}});
      }
      return gate_rc;
    });
  });
}

}  // namespace shrink::cli
