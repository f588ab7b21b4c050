// `shrink compare A/report.json B/report.json ... [--format md|csv|json] [--plot out.svg]`: the
// final model of each run side by side (size, perplexity, KL and top-1 against the teacher,
// decode speed), with the Pareto front of (size, perplexity) marked.
#include <cstdio>
#include <filesystem>

#include "core/fs.h"
#include "core/json_util.h"
#include "pipeline/report.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_compare(CLI::App& app, Globals& g) {
  struct Opts {
    std::vector<std::string> reports;
    std::string format = "md", plot;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "compare", "Compare runs side by side (their report.json files), with the Pareto front of "
                 "size and perplexity marked");
  sub->add_option("reports", o->reports, "report.json files (or run directories)")->required();
  sub->add_option("--format", o->format, "md, csv or json")->capture_default_str();
  sub->add_option("--plot", o->plot, "Also write an SVG plot here");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("compare", g, false, [&] {
      if (o->format != "md" && o->format != "csv" && o->format != "json") {
        throw Error(StatusCode::kInvalidInput, "--format '" + o->format + "': expected md, csv or json");
      }
      if (g.validate_only) return 0;
      struct Row {
        std::string name;
        nlohmann::json model, acc;
        bool teacher = false;
        double task_acc = -1;  // the verify stage's task acc_norm, when it ran one
      };
      std::vector<Row> rows;
      for (std::string path : o->reports) {
        if (std::filesystem::is_directory(path)) path += "/report.json";
        auto text = core::read_file(path);
        if (!text.is_ok()) throw Error(text.status());
        auto parsed = core::json_parse_untrusted(text.value(), path);
        if (!parsed.is_ok()) throw Error(parsed.status());
        nlohmann::json j = std::move(parsed.value());
        if (!j.is_object() || !j.contains("schema") || j["schema"] != pipeline::kReportSchema) {
          throw Error(StatusCode::kInvalidInput, path + ": not a shrink report (expected schema " +
                                                     std::string(pipeline::kReportSchema) + ")");
        }
        // The verify stage's task accuracy (verify --task): the compact model's for the run,
        // the reference's for the teacher.
        const nlohmann::json task = j.contains("verify") && j["verify"].is_object() &&
                                            j["verify"].contains("task") ? j["verify"]["task"]
                                                                         : nlohmann::json(nullptr);
        auto task_acc = [&](const char* k) {
          return task.is_object() && task.contains(k) ? task[k].get<double>() : -1.0;
        };
        // A recipe with data.task measures every stage on it: that value comes first.
        auto stage_task = [](const nlohmann::json& acc, double fallback) {
          return acc.is_object() && acc.contains("task_acc_norm") && acc["task_acc_norm"].is_number()
                     ? acc["task_acc_norm"].get<double>() : fallback;
        };
        if (rows.empty() && j.contains("teacher")) {
          rows.push_back({"teacher", j["teacher"]["model"], j["teacher"]["accuracy"], true,
                          stage_task(j["teacher"]["accuracy"], task_acc("acc_norm_reference"))});
        }
        nlohmann::json last = nullptr;
        for (const auto& s : j["stages"]) {
          if (s.contains("model") && !s["model"].is_null()) last = s;
        }
        if (last.is_null()) continue;
        rows.push_back({j.value("name", path) + " (" + path + ")", last["model"], last["accuracy"], false,
                        stage_task(last["accuracy"], task_acc("acc_norm_compact"))});
      }
      std::vector<double> xs, ys;
      for (auto& r : rows) {
        xs.push_back(r.model.value("bytes", 0.0) / 1048576.0);
        ys.push_back(r.acc.is_null() ? 1e300 : r.acc.value("perplexity", 1e300));
      }
      auto front = pipeline::pareto_front(xs, ys);
      if (o->format == "json") {
        nlohmann::json out = nlohmann::json::array();
        for (size_t i = 0; i < rows.size(); ++i) {
          out.push_back({{"run", rows[i].name}, {"model", rows[i].model}, {"accuracy", rows[i].acc},
                         {"task_acc_norm", rows[i].task_acc >= 0 ? nlohmann::json(rows[i].task_acc)
                                                                 : nlohmann::json(nullptr)},
                         {"pareto", bool(front[i])}});
        }
        print_json(out);
      } else {
        const bool md = o->format == "md";
        auto v = [](const nlohmann::json& j, const char* k, const char* fmt) -> std::string {
          if (j.is_null() || !j.contains(k) || !j[k].is_number()) return "-";
          char b[48];
          std::snprintf(b, sizeof b, fmt, j[k].get<double>());
          return b;
        };
        if (md) {
          std::printf("| run | params | MiB | quant | sparsity | perplexity | KL | top-1 | task acc_norm | decode tok/s | Pareto |\n");
          std::printf("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|:---:|\n");
        } else {
          std::printf("run,params,mib,quant,sparsity,perplexity,kl,top1,task_acc_norm,decode_tok_s,pareto\n");
        }
        for (size_t i = 0; i < rows.size(); ++i) {
          const auto& r = rows[i];
          std::string q = r.model.contains("quantization") && r.model["quantization"].is_string()
                              ? r.model["quantization"].get<std::string>() : "float";
          const char* f = md ? "| %s | %s | %.2f | %s | %s | %s | %s | %s | %s | %s | %s |\n"
                             : "%s,%s,%.2f,%s,%s,%s,%s,%s,%s,%s,%s\n";
          const std::string ta = r.task_acc >= 0 ? shrink::strfmt("%.4f", r.task_acc) : "-";
          std::printf(f, r.name.c_str(), v(r.model, "params", "%.0f").c_str(), xs[i], q.c_str(),
                      v(r.model, "sparsity", "%.3f").c_str(), v(r.acc, "perplexity", "%.3f").c_str(),
                      v(r.acc, "kl", "%.4f").c_str(), v(r.acc, "top1_agreement", "%.3f").c_str(),
                      ta.c_str(), v(r.acc, "decode_tokens_per_second", "%.1f").c_str(),
                      front[i] ? (md ? "**yes**" : "yes") : (md ? "" : "no"));
        }
      }
      if (!o->plot.empty()) {
        std::vector<pipeline::PlotPoint> pts;
        for (size_t i = 0; i < rows.size(); ++i) {
          if (ys[i] >= 1e299) continue;
          pts.push_back({rows[i].name, xs[i], ys[i], rows[i].teacher, bool(front[i])});
        }
        throw_if_error(core::write_file_atomic(
            o->plot, pipeline::plot_svg(pts, "runs: size vs perplexity", "model size (MiB)", "perplexity")));
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
