// See runner.h.
#include "pipeline/runner.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <utility>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/json_util.h"
#include "core/status.h"
#include "pipeline/content_hash.h"
#include "pipeline/recipe.h"
#include "pipeline/report.h"

namespace shrink::pipeline {

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

bool is_true(const std::string& v) { return v == "true" || v == "yes" || v == "1"; }
bool is_boolean(const std::string& v) {
  return is_true(v) || v == "false" || v == "no" || v == "0";
}

// The recipe's inputs, resolved to paths.
struct Inputs {
  std::string model;    // the model this stage reads
  std::string teacher;  // the recipe's teacher
  std::string train, calib, eval, tokenizer;
  std::string task;  // data.task: a multiple-choice task for every stage's accuracy and verify
};

// A stage's command line (after the global options): the command, the runner's inputs, then the
// recipe's keys (flags present when true, absent when false).
std::vector<std::string> stage_args(const RecipeStage& s, const Inputs& in, const std::string& dir,
                                    const std::map<std::string, bool>& flags) {
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
  const bool tokenizes = s.type == "train" || s.type == "distill" || s.type == "prune" ||
                         s.type == "quantize" || s.type == "eval";
  if (!in.tokenizer.empty() && !has("tokenizer") && tokenizes) {
    a.insert(a.end(), {"--tokenizer", in.tokenizer});
  }
  for (const auto& p : s.params) {
    auto it = flags.find(p.key);
    if (it != flags.end() && it->second) {
      if (is_true(p.value)) a.push_back("--" + p.key);
      continue;
    }
    a.push_back("--" + p.key);
    a.push_back(p.value);
  }
  return a;
}

std::string command_line(const std::vector<std::string>& args) {
  std::string cmd = "shrink";
  for (const auto& a : args) cmd += " " + a;
  return cmd;
}

// Progress events: JSON lines on stdout (CI / --json) or human lines on stderr.
struct Logger {
  bool lines;
  void event(const json& j) const {
    if (lines) {
      std::cout << j.dump() << std::endl;
      return;
    }
    const std::string t = j.value("event", "");
    if (t == "stage") {
      const std::string took =
          j.contains("seconds") ? " (" + std::to_string(int(j["seconds"].get<double>())) + " s)" : "";
      std::fprintf(stderr, "[%s] stage %d %s: %s%s\n", j.value("status", "").c_str(),
                   j.value("index", 0), j.value("type", "").c_str(), j.value("dir", "").c_str(),
                   took.c_str());
    } else if (j.contains("message")) {
      std::fprintf(stderr, "%s\n", j["message"].get<std::string>().c_str());
    }
  }
  void stage(size_t index, const std::string& type, const std::string& status,
             const std::string& dir, json extra = json::object()) const {
    extra.update({{"event", "stage"}, {"index", index}, {"type", type}, {"status", status},
                  {"dir", dir}});
    event(extra);
  }
};

struct ChildResult {
  int rc = 1;
  double seconds = 0, peak_rss_mb = 0;
};

// Runs a stage command in a forked child; its exit code, wall time and peak memory.
ChildResult run_child(StageCommands& commands, const std::vector<std::string>& args,
                      const StageIo& io) {
  std::fflush(stdout);
  std::fflush(stderr);
  const auto t0 = Clock::now();
  const pid_t pid = fork();
  if (pid < 0) throw Error(StatusCode::kIoError, std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    const int rc = commands.run(args, io);
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  int status = 0;
  rusage ru{};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  ChildResult r;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.peak_rss_mb = double(ru.ru_maxrss) / 1024.0;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
  return r;
}

// A JSON file written by a stage or an earlier run; null when missing or unreadable.
json read_json(const std::string& path) {
  if (!fs::exists(path)) return nullptr;
  auto t = core::read_file(path);
  if (!t.is_ok()) return nullptr;
  auto j = core::json_parse_untrusted(t.value(), path);
  return j.is_ok() ? j.value() : json(nullptr);
}

// ---------------------------------------------------------------------------------------------
// Validation: every problem of the recipe, each at its file:line:col.

class Validation {
 public:
  // `issues`: the parser's, already with file:line:col.
  Validation(const RunOptions& o, const Recipe& r, std::vector<std::string> issues)
      : o_(o), r_(r), issues_(std::move(issues)) {}

  void issue(int line, int col, const std::string& message) {
    issues_.push_back(recipe_where(o_.recipe, line, col) + message);
  }

  // Paths relative to the recipe file work too.
  std::string resolve(const std::string& p) const {
    if (p.empty() || fs::path(p).is_absolute() || fs::exists(p)) return p;
    const fs::path q = fs::path(o_.recipe).parent_path() / p;
    return fs::exists(q) ? q.string() : p;
  }

  Inputs inputs() {
    Inputs in;
    in.teacher = resolve(r_.teacher.value);
    if (!r_.teacher.value.empty() && !fs::exists(in.teacher + "/config.json")) {
      issue(r_.teacher.line, r_.teacher.col,
            "teacher: '" + r_.teacher.value + "' is not a model directory (no config.json)");
    }
    in.train = r_.data_train.value.empty() ? core::kDefaultCorpus : resolve(r_.data_train.value);
    in.calib = r_.data_calib.value.empty() ? in.train : resolve(r_.data_calib.value);
    in.eval = r_.data_eval.value.empty() ? in.train : resolve(r_.data_eval.value);
    in.tokenizer = resolve(r_.data_tokenizer.value);
    in.task = resolve(r_.data_task.value);
    for (const RecipeValue* v :
         {&r_.data_train, &r_.data_calib, &r_.data_eval, &r_.data_tokenizer, &r_.data_task}) {
      if (!v->value.empty() && !fs::exists(resolve(v->value))) {
        issue(v->line, v->col, "data." + v->key + ": '" + v->value + "' does not exist");
      }
    }
    return in;
  }

  // Each stage's keys, checked by its command.
  void stages(StageCommands& commands) {
    for (size_t i = 0; i < r_.stages.size(); ++i) stage(i, commands);
  }

  // Throws with every issue printed, sorted by position.
  void throw_if_any() {
    if (issues_.empty()) return;
    std::stable_sort(issues_.begin(), issues_.end(), [](const std::string& a, const std::string& b) {
      return line_col(a) < line_col(b);
    });
    for (const auto& m : issues_) std::fprintf(stderr, "%s\n", m.c_str());
    throw Error(StatusCode::kInvalidInput, std::to_string(issues_.size()) + " problem" +
                                               (issues_.size() > 1 ? "s" : "") + " in " +
                                               o_.recipe + "; nothing was run");
  }

 private:
  static std::pair<int, int> line_col(const std::string& s) {
    const size_t p1 = s.find(':'), p2 = s.find(':', p1 + 1), p3 = s.find(':', p2 + 1);
    if (p1 == std::string::npos || p2 == std::string::npos || p3 == std::string::npos) return {0, 0};
    return {std::atoi(s.substr(p1 + 1, p2 - p1 - 1).c_str()),
            std::atoi(s.substr(p2 + 1, p3 - p2 - 1).c_str())};
  }

  void stage(size_t i, StageCommands& commands) {
    const RecipeStage& s = r_.stages[i];
    const std::string where = "stages[" + std::to_string(i) + "]." + s.type;
    const std::map<std::string, bool> keys = commands.keys(s.type);
    bool any_bad = false;
    std::vector<const RecipeValue*> known = known_keys(s, where, keys, any_bad);
    any_bad |= !check_values_in_context(s, where, keys, known, commands);
    if (!any_bad && s.type != "report") {  // the whole stage (each key was fine in context)
      const std::string err = commands.check(stage_args(s, placeholders(), "OUT", keys));
      if (!err.empty()) issue(s.line, s.col, where + ": " + err);
    }
  }

  static const Inputs& placeholders() {
    static const Inputs ph{"MODEL", "TEACHER", "DATA", "DATA", "DATA", "", ""};
    return ph;
  }

  // The stage's keys that its command has, with a value of their type; an issue for each other.
  std::vector<const RecipeValue*> known_keys(const RecipeStage& s, const std::string& where,
                                             const std::map<std::string, bool>& keys, bool& any_bad) {
    std::vector<std::string> names;
    for (const auto& [k, flag] : keys) names.push_back(k);
    const auto& reserved = kRunnerKeys.at(s.type);
    std::vector<const RecipeValue*> known;
    for (const auto& p : s.params) {
      if (std::find(reserved.begin(), reserved.end(), p.key) != reserved.end()) {
        issue(p.line, p.col, where + "." + p.key + ": set by the runner (from the previous stage "
                                                   "and the recipe's teacher/output); remove it");
        any_bad = true;
        continue;
      }
      auto it = keys.find(p.key);
      if (it == keys.end()) {
        const std::string c = closest_word(p.key, names);
        issue(p.line, p.col, where + ": unknown key '" + p.key + "'" +
                                 (c.empty() ? "" : "; did you mean '" + c + "'?"));
        any_bad = true;
        continue;
      }
      if (it->second && !is_boolean(p.value)) {
        issue(p.line, p.col,
              where + "." + p.key + ": '" + p.value + "' is not a boolean; expected true or false");
        any_bad = true;
        continue;
      }
      known.push_back(&p);
    }
    return known;
  }

  // Each value, checked by the command: alone first, then together with every key found valid
  // so far, until nothing changes, so that a key which only makes sense with another
  // (group-size with scheme: w4a16, awq-no-clip with awq: true) is judged in its stage's context
  // while a bad value still gets its own line:col. False when some value is bad.
  bool check_values_in_context(const RecipeStage& s, const std::string& where,
                               const std::map<std::string, bool>& keys,
                               const std::vector<const RecipeValue*>& known, StageCommands& commands) {
    std::vector<bool> ok(known.size(), false);
    std::vector<std::string> errs(known.size());
    for (bool grew = true; grew;) {
      grew = false;
      for (size_t j = 0; j < known.size(); ++j) {
        if (ok[j]) continue;
        RecipeStage trial = s;
        trial.params.clear();
        for (size_t k = 0; k < known.size(); ++k) {
          if (ok[k]) trial.params.push_back(*known[k]);
        }
        trial.params.push_back(*known[j]);
        errs[j] = commands.check(stage_args(trial, placeholders(), "OUT", keys));
        if (errs[j].empty()) {
          ok[j] = true;
          grew = true;
        }
      }
    }
    bool all_ok = true;
    for (size_t j = 0; j < known.size(); ++j) {
      if (ok[j]) continue;
      issue(known[j]->line, known[j]->col, where + "." + known[j]->key + ": " + errs[j]);
      all_ok = false;
    }
    return all_ok;
  }

  const RunOptions& o_;
  const Recipe& r_;
  std::vector<std::string> issues_;
};

// ---------------------------------------------------------------------------------------------
// The plan: each stage's directory, input and output model, and command line.

struct PlannedStage {
  std::string dir, model_in, model_out;  // model_out: "" for stages that make no model
  std::vector<std::string> args;
};

std::string output_dir(const RunOptions& o, const Recipe& r) {
  if (!o.out.empty()) return o.out;
  if (!r.output.value.empty()) return r.output.value;
  return "runs/" + fs::path(o.recipe).stem().string();
}

std::vector<PlannedStage> plan_stages(const Recipe& r, const Inputs& in, const std::string& out,
                                      StageCommands& commands) {
  std::vector<PlannedStage> plan;
  std::string cur = in.teacher;
  for (size_t i = 0; i < r.stages.size(); ++i) {
    const RecipeStage& s = r.stages[i];
    char nn[24];
    std::snprintf(nn, sizeof nn, "%02zu", i);
    PlannedStage p;
    p.dir = out + "/" + nn + "-" + s.type;
    p.model_in = cur;
    Inputs si = in;
    si.model = cur;
    p.args = stage_args(s, si, p.dir, commands.keys(s.type));
    if (produces_model(s.type)) p.model_out = p.dir + "/model";
    if (!p.model_out.empty()) cur = p.model_out;
    plan.push_back(p);
  }
  return plan;
}

// The dry run's plan, with each stage's cost: FLOPs as 6 N T for training tokens (8 N T when a
// teacher runs too), 2 N T for forward-only tokens.
json plan_json(const RunOptions& o, const Recipe& r, const Inputs& in, const std::string& out,
               const std::vector<PlannedStage>& plan) {
  auto stats = model_stats(in.teacher);
  const double n = stats.is_ok() ? double(stats->params) : 0;
  json j = {{"recipe", o.recipe}, {"out", out}, {"teacher", in.teacher},
            {"teacher_params", n}, {"stages", json::array()}};
  for (size_t i = 0; i < plan.size(); ++i) {
    const RecipeStage& s = r.stages[i];
    auto num = [&](const char* k, double d) {
      const RecipeValue* v = s.find(k);
      try {
        return v ? std::stod(v->value) : d;
      } catch (const std::exception&) {
        return d;
      }
    };
    double flops = 0;
    const double train_tokens = num("steps", 1000) * num("batch", 16) * num("seq-len", 256);
    if (s.type == "train") flops = 6 * n * train_tokens;
    if (s.type == "distill") flops = 8 * n * train_tokens;
    if (s.type == "prune" || s.type == "quantize") {
      flops = 2 * n * num("calib-samples", 64) * num("calib-len", 256);
    }
    j["stages"].push_back(
        {{"index", i}, {"type", s.type}, {"input", plan[i].model_in},
         {"output", plan[i].model_out.empty() ? plan[i].dir : plan[i].model_out},
         {"command", command_line(plan[i].args)}, {"estimated_gflop", flops / 1e9}});
  }
  return j;
}

// ---------------------------------------------------------------------------------------------
// Stage keys: what a stage's result depends on.

// The key of everything every stage reads: the teacher, the data, the tool.
std::string inputs_key(const Inputs& in, const std::string& teacher_fingerprint,
                       ContentHasher& hasher) {
  std::string key = "teacher=" + teacher_fingerprint + ";tool=" + tool_identity(hasher).take_or_throw();
  for (const auto& [name, path] : {std::pair<const char*, const std::string&>{"train", in.train},
                                   {"calib", in.calib},
                                   {"eval", in.eval},
                                   {"tokenizer", in.tokenizer},
                                   {"task", in.task}}) {
    key += std::string(";") + name + "=";
    if (!path.empty()) key += hasher.hash(path).take_or_throw();
  }
  return content_hash_of(key);
}

// A stage's key: the previous one, its command line, and the contents of the files its keys
// name (a student config, a stage's own data or task).
std::string stage_key(const std::string& previous, const RecipeStage& s,
                      const std::vector<std::string>& args, ContentHasher& hasher) {
  std::string key = previous;
  for (const auto& a : args) key += a + "\x1f";
  for (const auto& p : s.params) {
    std::error_code ec;
    if (p.value.empty() || !fs::exists(p.value, ec)) continue;
    key += p.key + "=" + hasher.hash(p.value).take_or_throw() + "\x1f";
  }
  return content_hash_of(key);
}

// ---------------------------------------------------------------------------------------------
// Running: the teacher's metrics once per run directory, each stage or its skip, the reports.

class RecipeRun {
 public:
  RecipeRun(const RunOptions& o, const Recipe& r, Inputs in, std::string out,
            std::vector<PlannedStage> plan, StageCommands& commands)
      : o_(o), r_(r), in_(std::move(in)), out_(std::move(out)), plan_(std::move(plan)),
        commands_(commands), log_{o.json_lines}, hasher_(out_ + "/.content-hashes.json") {}

  int run() {
    fs::create_directories(out_);
    report_ = report_header();
    report_["teacher"] = teacher_record();
    std::string key = inputs_key(in_, report_["teacher"]["fingerprint"].get<std::string>(), hasher_);
    throw_if_error(hasher_.save());
    for (size_t i = 0; i < plan_.size(); ++i) {
      key = stage_key(key, r_.stages[i], plan_[i].args, hasher_);
      report_["stages"].push_back(run_or_skip(i, key));
      throw_if_error(hasher_.save());
    }
    report_["verify"] = verify_result_;
    write_reports();
    return gate_rc_;
  }

 private:
  static void throw_if_error(const Status& s) {
    if (!s.is_ok()) throw Error(s);
  }

  json report_header() const {
    const std::string recipe_hash = content_hash_of(r_.text);
    return {{"schema", kReportSchema},
            {"name", fs::path(o_.recipe).stem().string()},
            {"recipe", {{"path", o_.recipe}, {"text", r_.text}, {"hash", recipe_hash}, {"overrides", o_.sets}}},
            {"versions", {{"shrink", SHRINK_VERSION}}},
            {"threads", o_.threads},
            {"stages", json::array()}};
  }

  // Perplexity, KL and top-1 agreement against the teacher, speed, and the task's accuracy.
  json measure(const std::string& model, const std::string& json_path) {
    const std::vector<std::string> a = {"verify", model, "--reference", in_.teacher, "--data",
                                        in_.eval, "--split", "val", "--max-tokens",
                                        std::to_string(o_.metrics_tokens), "--prompt-len", "64",
                                        "--gen-len", "16"};
    std::vector<std::string> args = a;
    if (!in_.task.empty()) args.insert(args.end(), {"--task", in_.task});
    const ChildResult c = run_child(commands_, args, StageIo{o_.threads, json_path, true});
    const json v = c.rc == 0 ? read_json(json_path) : json(nullptr);
    if (v.is_null()) return nullptr;
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
  }

  // The teacher, measured once per run directory (again when its content or the task changes).
  json teacher_record() {
    json t = read_json(out_ + "/teacher.json");
    const std::string fp = model_fingerprint(in_.teacher, &hasher_);
    if (!t.is_null() && t.value("fingerprint", "") == fp && t.value("task", "") == in_.task) return t;
    auto st = model_stats(in_.teacher);
    t = {{"fingerprint", fp}, {"dir", in_.teacher}, {"task", in_.task},
         {"model", st.is_ok() ? model_stats_json(st.value()) : json(nullptr)},
         {"accuracy", measure(in_.teacher, out_ + "/teacher.verify.json")}};
    throw_if_error(core::write_file_atomic(out_ + "/teacher.json", t.dump(2) + "\n"));
    return t;
  }

  // A stage whose directory holds a finished result with this key is skipped; otherwise it runs
  // (resuming a pending one with the same key) and its record is written last.
  json run_or_skip(size_t i, const std::string& key) {
    const RecipeStage& s = r_.stages[i];
    const PlannedStage& p = plan_[i];
    const json done = read_json(p.dir + "/stage.json");
    const bool forced = o_.from >= 0 && int(i) >= o_.from;
    if (!forced && !done.is_null() && done.value("hash", "") == key &&
        done.value("status", "") == "done") {
      log_.stage(i, s.type, "skipped", p.dir);
      if (s.type == "verify") verify_result_ = done["record"]["verify"];
      return done["record"];
    }
    prepare_stage_dir(p.dir, key, forced);
    log_.stage(i, s.type, "start", p.dir);
    json record = {{"index", i}, {"type", s.type}, {"dir", p.dir}, {"input", p.model_in}};
    if (s.type == "report") {
      record["seconds"] = 0.0;
    } else {
      run_stage_command(i, record);
    }
    if (!p.model_out.empty()) {
      auto st = model_stats(p.model_out);
      record["model"] = st.is_ok() ? model_stats_json(st.value()) : json(nullptr);
      record["output"] = p.model_out;
      record["accuracy"] = measure(p.model_out, p.dir + "/metrics.json");
    }
    throw_if_error(core::write_file_atomic(
        p.dir + "/stage.json", json({{"hash", key}, {"status", "done"}, {"record", record}}).dump(2) + "\n"));
    fs::remove(p.dir + "/stage.pending");
    log_.stage(i, s.type, "done", p.dir, {{"seconds", record["seconds"]}});
    return record;
  }

  // A stale or forced directory starts over; a pending one with the same key resumes.
  static void prepare_stage_dir(const std::string& dir, const std::string& key, bool forced) {
    const json pending = read_json(dir + "/stage.pending");
    if (forced || (fs::exists(dir) && (pending.is_null() || pending.value("hash", "") != key))) {
      fs::remove_all(dir);
    }
    fs::create_directories(dir);
    throw_if_error(core::write_file_atomic(dir + "/stage.pending", json({{"hash", key}}).dump() + "\n"));
  }

  void run_stage_command(size_t i, json& record) {
    const RecipeStage& s = r_.stages[i];
    const PlannedStage& p = plan_[i];
    record["command"] = command_line(p.args);
    const ChildResult c =
        run_child(commands_, p.args, StageIo{o_.threads, p.dir + "/result.json", log_.lines});
    record["seconds"] = c.seconds;
    record["peak_rss_mb"] = c.peak_rss_mb;
    record["result"] = read_json(p.dir + "/result.json");
    const bool gate_failed = s.type == "verify" && c.rc == 3;
    if (c.rc != 0 && !gate_failed) {
      log_.stage(i, s.type, "failed", p.dir, {{"exit_code", c.rc}});
      throw Error(c.rc == 2 ? StatusCode::kInvalidInput : StatusCode::kInternal,
                  "stage " + std::to_string(i) + " (" + s.type + ") failed with exit code " +
                      std::to_string(c.rc) + "; rerun continues from it");
    }
    if (s.type == "verify") {
      verify_result_ = record["result"];
      record["verify"] = verify_result_;
      if (gate_failed) gate_rc_ = 3;
    }
  }

  // JSON, Markdown, and the size-vs-perplexity plot with the teacher and the Pareto front marked.
  void write_reports() {
    std::vector<PlotPoint> pts;
    auto add_point = [&](const std::string& label, const json& rec, bool teacher) {
      if (!rec.contains("model") || rec["model"].is_null() || !rec.contains("accuracy") ||
          rec["accuracy"].is_null()) {
        return;
      }
      pts.push_back({label, rec["model"]["bytes"].get<double>() / 1048576.0,
                     rec["accuracy"]["perplexity"].get<double>(), teacher, false});
    };
    add_point("teacher", report_["teacher"], true);
    for (const auto& s : report_["stages"]) {
      add_point(std::to_string(s["index"].get<int>()) + " " + s["type"].get<std::string>(), s, false);
    }
    std::vector<double> xs, ys;
    for (const auto& p : pts) xs.push_back(p.x), ys.push_back(p.y);
    const std::vector<bool> front = pareto_front(xs, ys);
    for (size_t k = 0; k < pts.size(); ++k) pts[k].front = front[k];
    throw_if_error(core::write_file_atomic(out_ + "/report.json", report_.dump(2) + "\n"));
    throw_if_error(core::write_file_atomic(out_ + "/report.md", report_markdown(report_)));
    throw_if_error(core::write_file_atomic(
        out_ + "/report.svg", plot_svg(pts, report_["name"].get<std::string>() + ": size vs perplexity",
                                       "model size (MiB)", "perplexity")));
    log_.event({{"event", "report"}, {"dir", out_},
                {"message", "wrote " + out_ + "/report.json, report.md, report.svg"}});
    if (!verify_result_.is_null()) {
      log_.event({{"event", "verify"}, {"verdict", verify_result_.value("verdict", "")},
                  {"message", "verify: " + verify_result_.value("verdict", std::string("?"))}});
    }
  }

  const RunOptions& o_;
  const Recipe& r_;
  const Inputs in_;
  const std::string out_;
  const std::vector<PlannedStage> plan_;
  StageCommands& commands_;
  const Logger log_;
  ContentHasher hasher_;
  json report_;
  json verify_result_ = nullptr;
  int gate_rc_ = 0;
};

Recipe recipe_load(const RunOptions& o, std::vector<std::string>& issues) {
  auto text = core::read_file(o.recipe);
  if (!text.is_ok()) throw Error(text.status());
  return recipe_parse(o.recipe, text.value(), o.sets, &issues);
}

}  // namespace

RunResult recipe_run(const RunOptions& o, StageCommands& commands) {
  std::vector<std::string> parse_issues;
  const Recipe r = recipe_load(o, parse_issues);
  Validation check(o, r, std::move(parse_issues));
  const Inputs in = check.inputs();
  check.stages(commands);
  check.throw_if_any();
  const std::string out = output_dir(o, r);
  std::vector<PlannedStage> plan = plan_stages(r, in, out, commands);
  RunResult result;
  if (o.dry_run) {
    result.plan = plan_json(o, r, in, out, plan);
    return result;
  }
  result.exit_code = RecipeRun(o, r, in, out, std::move(plan), commands).run();
  return result;
}

}  // namespace shrink::pipeline
