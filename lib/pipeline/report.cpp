// Model statistics, Pareto fronts, Markdown tables and SVG plots; see report.h.
#include "pipeline/report.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/dtype.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "pipeline/content_hash.h"

namespace shrink::pipeline {

using core::Checkpoint;
using core::MappedFile;
using core::ModelConfig;
using core::TensorInfo;
using core::config_load;
using core::dtype_is_float;
using core::dtype_size;
using core::quant_config_from_json;

namespace fs = std::filesystem;

Result<ModelStats> model_stats(const std::string& dir) {
  SHRINK_ASSIGN_OR_RETURN(ModelConfig c, config_load(dir));
  SHRINK_ASSIGN_OR_RETURN(Checkpoint ck, Checkpoint::open(dir));
  ModelStats s;
  s.dtype = c.dtype;
  s.layers = c.num_layers;
  s.hidden = c.hidden_size;
  s.intermediate = c.intermediate_size;
  s.heads = c.num_heads;
  s.kv_heads = c.num_kv_heads;
  int64_t zeros = 0, covered = 0;
  for (const std::string& n : ck.names()) {
    const TensorInfo* t = ck.find(n);
    const bool aux = n.find("_scale") != std::string::npos || n.find("_zero_point") != std::string::npos;
    if (aux) continue;
    if (c.tie_word_embeddings && n == "lm_head.weight") continue;
    s.params += t->numel();
    if (n.rfind("model.layers.", 0) == 0 && t->shape.size() == 2) {
      const uint8_t* p = ck.data(*t);
      const size_t es = dtype_size(t->dtype);
      for (int64_t i = 0; i < t->numel(); ++i) {
        bool z = true;
        for (size_t b = 0; b < es; ++b) {
          // +0 and -0 (sign bit only) both count as zero for float types.
          uint8_t byte = p[size_t(i) * es + b];
          if (b == es - 1 && dtype_is_float(t->dtype)) byte &= 0x7f;
          if (byte) {
            z = false;
            break;
          }
        }
        zeros += z;
      }
      covered += t->numel();
    }
  }
  for (auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") s.bytes += uint64_t(fs::file_size(e.path()));
  }
  s.sparsity = covered ? double(zeros) / double(covered) : 0.0;
  if (c.has_quantization()) {
    auto q = quant_config_from_json(c.raw["quantization_config"]);
    if (q.is_ok()) {
      s.quantization = q->activations == "none"
                           ? (q->bits == 4 ? (q->symmetric ? "w4a16-" : "w4a16-asym-") : "w8a16-") +
                                 q->weight_strategy
                           : "w8a8-" + q->activations;
      if (q->weight_strategy == "group") s.quantization += std::to_string(q->group_size);
    } else {
      s.quantization = "unknown";
    }
  }
  return s;
}

nlohmann::json model_stats_json(const ModelStats& s) {
  return {{"params", s.params},         {"bytes", s.bytes},
          {"sparsity", s.sparsity},     {"quantization", s.quantization.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.quantization)},
          {"dtype", s.dtype},           {"layers", s.layers},
          {"hidden_size", s.hidden},    {"intermediate_size", s.intermediate},
          {"heads", s.heads},           {"kv_heads", s.kv_heads}};
}

std::string model_fingerprint(const std::string& dir, ContentHasher* cached) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n == "config.json" || e.path().extension() == ".safetensors") files.push_back(n);
  }
  std::sort(files.begin(), files.end());
  ContentHasher uncached;
  ContentHasher& hasher = cached ? *cached : uncached;
  std::string key;
  for (const auto& f : files) {
    auto h = hasher.hash(dir + "/" + f);
    if (!h.is_ok()) continue;  // unreadable files change nothing; loading reports them
    key += f + "=" + h.value() + ";";
  }
  return content_hash_of(key);
}

std::vector<bool> pareto_front(const std::vector<double>& x, const std::vector<double>& y) {
  std::vector<bool> f(x.size(), true);
  for (size_t i = 0; i < x.size(); ++i) {
    for (size_t j = 0; j < x.size() && f[i]; ++j) {
      if (j == i) continue;
      const bool dominates = x[j] <= x[i] && y[j] <= y[i] && (x[j] < x[i] || y[j] < y[i]);
      if (dominates) f[i] = false;
    }
  }
  return f;
}

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  if (std::fabs(v) >= 100) std::snprintf(b, sizeof b, "%.0f", v);
  else if (std::fabs(v) >= 10) std::snprintf(b, sizeof b, "%.1f", v);
  else std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

}  // namespace

std::string plot_svg(const std::vector<PlotPoint>& pts, const std::string& title,
                     const std::string& xl, const std::string& yl) {
  const double W = 720, H = 440, L = 80, R = 200, T = 40, B = 60;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& p : pts) {
    x0 = std::min(x0, p.x);
    x1 = std::max(x1, p.x);
    y0 = std::min(y0, p.y);
    y1 = std::max(y1, p.y);
  }
  if (pts.empty()) x0 = y0 = 0, x1 = y1 = 1;
  const bool logx = x0 > 0 && x1 / x0 > 10;
  auto fx = [&](double v) { return logx ? std::log10(v) : v; };
  double a = fx(x0), b = fx(x1);
  if (b - a < 1e-12) a -= 0.5, b += 0.5;
  double pad = 0.08 * (b - a);
  a -= pad, b += pad;
  double c = y0, d = y1;
  if (d - c < 1e-12) c -= 0.5, d += 0.5;
  double pady = 0.1 * (d - c);
  c -= pady, d += pady;
  auto px = [&](double v) { return L + (fx(v) - a) / (b - a) * (W - L - R); };
  auto py = [&](double v) { return H - B - (v - c) / (d - c) * (H - T - B); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << W << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << W / 2 - R / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << esc(title) << "</text>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  o << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (int k = 0; k <= 4; ++k) {  // ticks
    double xv = a + (b - a) * k / 4.0, yv = c + (d - c) * k / 4.0;
    double xr = logx ? std::pow(10.0, xv) : xv;
    double X = L + (W - L - R) * k / 4.0, Y = H - B - (H - T - B) * k / 4.0;
    o << "<line x1=\"" << X << "\" y1=\"" << H - B << "\" x2=\"" << X << "\" y2=\"" << H - B + 5 << "\" stroke=\"black\"/>";
    o << "<text x=\"" << X << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << num(xr) << "</text>\n";
    o << "<line x1=\"" << L - 5 << "\" y1=\"" << Y << "\" x2=\"" << L << "\" y2=\"" << Y << "\" stroke=\"black\"/>";
    o << "<text x=\"" << L - 8 << "\" y=\"" << Y + 4 << "\" text-anchor=\"end\">" << num(yv) << "</text>\n";
  }
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 18 << "\" text-anchor=\"middle\">" << esc(xl)
    << (logx ? " (log scale)" : "") << "</text>\n";
  o << "<text x=\"18\" y=\"" << (T + H - B) / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
    << (T + H - B) / 2 << ")\">" << esc(yl) << "</text>\n";
  // The Pareto front as a polyline through its points, sorted by x.
  std::vector<const PlotPoint*> front;
  for (const auto& p : pts) {
    if (p.front) front.push_back(&p);
  }
  std::sort(front.begin(), front.end(), [](auto* u, auto* v) { return u->x < v->x; });
  if (front.size() > 1) {
    o << "<polyline fill=\"none\" stroke=\"#2a7\" stroke-dasharray=\"4 3\" points=\"";
    for (auto* p : front) o << px(p->x) << "," << py(p->y) << " ";
    o << "\"/>\n";
  }
  int k = 0;
  for (const auto& p : pts) {
    const char* color = p.highlight ? "#d33" : p.front ? "#2a7" : "#36c";
    if (p.highlight) {
      o << "<rect x=\"" << px(p.x) - 6 << "\" y=\"" << py(p.y) - 6 << "\" width=\"12\" height=\"12\" fill=\"" << color << "\"/>\n";
    } else {
      o << "<circle cx=\"" << px(p.x) << "\" cy=\"" << py(p.y) << "\" r=\"5\" fill=\"" << color << "\"/>\n";
    }
    o << "<text x=\"" << px(p.x) + 8 << "\" y=\"" << py(p.y) - 6 << "\" font-size=\"10\">" << ++k << "</text>\n";
    o << "<text x=\"" << W - R + 12 << "\" y=\"" << T + 14 * k << "\" font-size=\"11\" fill=\"" << color << "\">" << k
      << ". " << esc(p.label) << "</text>\n";
  }
  o << "<text x=\"" << W - R + 12 << "\" y=\"" << T + 14 * (k + 2) << "\" font-size=\"10\" fill=\"#d33\">square: teacher</text>\n";
  o << "<text x=\"" << W - R + 12 << "\" y=\"" << T + 14 * (k + 3) << "\" font-size=\"10\" fill=\"#2a7\">green: Pareto front</text>\n";
  o << "</svg>\n";
  return o.str();
}

std::string report_markdown(const nlohmann::json& r) {
  std::ostringstream o;
  auto f = [](const nlohmann::json& j, const char* k, const char* fmt) -> std::string {
    if (!j.contains(k) || j[k].is_null()) return "-";
    char b[64];
    if (j[k].is_number()) std::snprintf(b, sizeof b, fmt, j[k].get<double>());
    else return j[k].is_string() ? j[k].get<std::string>() : j[k].dump();
    return b;
  };
  o << "# shrink report: " << r.value("name", std::string("run")) << "\n\n";
  o << "Recipe `" << r["recipe"].value("path", std::string("?")) << "` (hash " << r["recipe"].value("hash", std::string("?"))
    << "), shrink " << r["versions"].value("shrink", std::string("?")) << ", " << r.value("threads", 0) << " threads.\n\n";
  o << "| # | stage | params | MiB | sparsity | quant | perplexity | KL vs teacher | top-1 | task acc_norm | decode tok/s | time s | peak MiB |\n";
  o << "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
  auto row = [&](const std::string& idx, const std::string& name, const nlohmann::json& s) {
    const nlohmann::json& m = s.contains("model") ? s["model"] : nlohmann::json::object();
    const nlohmann::json& a = s.contains("accuracy") ? s["accuracy"] : nlohmann::json::object();
    o << "| " << idx << " | " << name << " | " << f(m, "params", "%.0f") << " | "
      << (m.contains("bytes") ? num(m["bytes"].get<double>() / 1048576.0) : std::string("-")) << " | "
      << f(m, "sparsity", "%.3f") << " | " << f(m, "quantization", "%s") << " | " << f(a, "perplexity", "%.3f")
      << " | " << f(a, "kl", "%.4f") << " | " << f(a, "top1_agreement", "%.3f") << " | "
      << f(a, "task_acc_norm", "%.3f") << " | " << f(a, "decode_tokens_per_second", "%.1f") << " | " << f(s, "seconds", "%.1f") << " | "
      << f(s, "peak_rss_mb", "%.0f") << " |\n";
  };
  if (r.contains("teacher")) row("-", "teacher", r["teacher"]);
  for (const auto& s : r["stages"]) row(std::to_string(s.value("index", 0)), s.value("type", std::string("?")), s);
  if (r.contains("verify") && !r["verify"].is_null()) {
    const auto& v = r["verify"];
    o << "\n## Verify\n\n" << "Verdict: **" << v.value("verdict", std::string("?")) << "**\n\n";
    o << "| | reference | compact |\n|---|---:|---:|\n";
    if (v.contains("engine_compact"))
      o << "| engine | " << f(v, "engine_reference", "%s") << " | " << f(v, "engine_compact", "%s") << " |\n";
    o << "| perplexity | " << f(v, "perplexity_reference", "%.3f") << " | " << f(v, "perplexity_compact", "%.3f") << " |\n";
    if (v.contains("speed_reference")) {
      o << "| decode tok/s | " << f(v["speed_reference"], "decode_tokens_per_second", "%.1f") << " | "
        << f(v["speed_compact"], "decode_tokens_per_second", "%.1f") << " |\n";
      o << "| prefill tok/s | " << f(v["speed_reference"], "prefill_tokens_per_second", "%.1f") << " | "
        << f(v["speed_compact"], "prefill_tokens_per_second", "%.1f") << " |\n";
    }
    o << "\nTop-1 agreement " << f(v, "top1_agreement", "%.4f") << ", KL " << f(v, "kl", "%.5f");
    if (v.contains("kl_stats")) {
      o << " (p99 " << f(v["kl_stats"], "p99", "%.5f") << ", max " << f(v["kl_stats"], "max", "%.4f") << ")";
    }
    if (v.contains("perplexity_increase_ci95") && v["perplexity_increase_ci95"].is_array()) {
      o << ", perplexity change 95% interval [" << shrink::strfmt("%+.2f%%", 100 * v["perplexity_increase_ci95"][0].get<double>())
        << ", " << shrink::strfmt("%+.2f%%", 100 * v["perplexity_increase_ci95"][1].get<double>()) << "]";
    }
    o << ", decode speed-up " << f(v, "decode_speedup", "%.2f") << "x.\n";
    if (v.contains("serve") && v["serve"].is_object() && v["serve"].contains("levels")) {
      const auto& sv = v["serve"];
      o << "\nServing (`shrink-rt serve`, continuous batching; " << sv["workload"].value("prompt_len", 0)
        << " prompt tokens, " << sv["workload"].value("gen_len", 0) << " generated per request):\n\n"
        << "| concurrency | output tok/s reference | output tok/s compact | ratio | TTFT p50 ms reference | TTFT p50 ms compact |\n"
        << "|---:|---:|---:|---:|---:|---:|\n";
      for (const auto& l : sv["levels"]) {
        o << "| " << l.value("concurrency", 0) << " | " << f(l, "output_tokens_per_s_reference", "%.1f") << " | "
          << f(l, "output_tokens_per_s_compact", "%.1f") << " | " << f(l, "throughput_ratio", "%.2f") << "x | "
          << f(l, "ttft_p50_ms_reference", "%.1f") << " | " << f(l, "ttft_p50_ms_compact", "%.1f") << " |\n";
      }
    }
    if (v.contains("task") && v["task"].is_object()) {
      const auto& t = v["task"];
      o << "\nTask " << f(t, "path", "%s") << " (" << t.value("items", 0) << " items): acc_norm "
        << f(t, "acc_norm_reference", "%.4f") << " -> " << f(t, "acc_norm_compact", "%.4f")
        << " (drop " << f(t, "acc_norm_drop", "%+.4f") << " +- " << f(t, "acc_norm_drop_stderr", "%.4f")
        << "), same choice on " << shrink::strfmt("%.1f%%", 100 * t.value("agreement", 0.0))
        << " of items.\n";
    }
  }
  return o.str();
}

}  // namespace shrink::pipeline
