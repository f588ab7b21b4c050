// Recipe YAML -> structs (the only yaml-cpp user). See recipe.h.
#include "pipeline/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>

namespace shrink::pipeline {

namespace {

const std::vector<std::string> kTopKeys = {"version", "teacher", "data", "output", "stages",
                                           "name", "description"};
const std::vector<std::string> kDataKeys = {"train", "calib", "eval", "tokenizer", "task"};

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

struct Parser {
  std::string path;
  std::vector<std::string>* issues;
  void issue(const YAML::Mark& m, const std::string& what) {
    issues->push_back(recipe_where(path, m.is_null() ? 0 : m.line + 1, m.is_null() ? 0 : m.column + 1) + what);
  }
  // A scalar (or a flat list of scalars, joined with commas) with its position.
  bool value(const YAML::Node& n, const std::string& key, const std::string& where, RecipeValue* out) {
    out->key = key;
    out->line = n.Mark().is_null() ? 0 : n.Mark().line + 1;
    out->col = n.Mark().is_null() ? 0 : n.Mark().column + 1;
    if (n.IsScalar()) {
      out->value = n.Scalar();
      return true;
    }
    if (n.IsSequence()) {
      std::string joined;
      for (const auto& item : n) {
        if (!item.IsScalar()) {
          issue(item.Mark(), where + ": expected a list of plain values");
          return false;
        }
        joined += (joined.empty() ? "" : ",") + item.Scalar();
      }
      out->value = joined;
      return true;
    }
    if (n.IsNull()) {
      issue(n.Mark(), where + ": a value is required");
      return false;
    }
    issue(n.Mark(), where + ": expected a value, got a mapping");
    return false;
  }
  void unknown(const YAML::Node& keynode, const std::string& key, const std::string& where,
               const std::vector<std::string>& valid) {
    std::string c = closest_word(key, valid);
    std::string list;
    for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
    issue(keynode.Mark(), where + ": unknown key '" + key + "'" +
                              (c.empty() ? "" : "; did you mean '" + c + "'?") +
                              " (valid: " + list + ")");
  }
};

// "--set teacher.x: 'teacher' is a value (recipe.yaml:3:10), not a mapping; ..." for an
// override whose path goes through the scalar `node` at parts[i] (the root when i == 0).
std::string not_a_mapping(const std::string& path, const std::vector<std::string>& parts, size_t i,
                          const YAML::Node& node, const std::string& file) {
  std::string parent;
  for (size_t k = 0; k < i; ++k) parent += (k ? "." : "") + parts[k];
  const YAML::Mark m = node.Mark();
  const std::string at = m.line >= 0 ? " (" + file + ":" + std::to_string(m.line + 1) + ":" +
                                           std::to_string(m.column + 1) + ")"
                                     : "";
  return "--set " + path + ": '" + (parent.empty() ? "the recipe" : parent) + "' is a value" + at +
         ", not a mapping; cannot set '" + parts[i] + "' inside it (expected PATH to name keys " +
         "of mappings, e.g. stages.2.quantize.scheme)";
}

// Apply one "a.b.2.c=value" override to the YAML tree.
void apply_override(YAML::Node root, const std::string& spec, const std::string& file,
                    std::vector<std::string>* issues) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) {
    issues->push_back("--set '" + spec + "': expected PATH=VALUE, e.g. stages.2.quantize.scheme=w8a16");
    return;
  }
  std::vector<std::string> parts;
  std::string path = spec.substr(0, eq), rest = path;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t dot = path.find('.', pos);
    parts.push_back(path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos));
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  std::vector<YAML::Node> chain = {root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node cur = chain.back();
    const std::string& p = parts[i];
    if (cur.IsSequence()) {
      size_t idx = 0;
      try {
        idx = std::stoul(p);
      } catch (const std::exception&) {
        issues->push_back("--set " + path + ": '" + p + "' must be a list index");
        return;
      }
      if (idx >= cur.size()) {
        issues->push_back("--set " + path + ": index " + p + " is out of range (the list has " +
                          std::to_string(cur.size()) + " entries)");
        return;
      }
      chain.push_back(cur[idx]);
    } else if (cur.IsMap()) {
      if (!cur[p] || cur[p].IsNull()) cur[p] = YAML::Node(YAML::NodeType::Map);
      chain.push_back(cur[p]);
    } else {
      issues->push_back(not_a_mapping(path, parts, i, cur, file));
      return;
    }
  }
  YAML::Node last = chain.back();
  if (last.IsSequence()) {
    issues->push_back("--set " + path + ": cannot set a list entry; name a key inside it");
    return;
  }
  if (!last.IsMap()) {
    issues->push_back(not_a_mapping(path, parts, parts.size() - 1, last, file));
    return;
  }
  last[parts.back()] = spec.substr(eq + 1);
}

}  // namespace

const RecipeValue* RecipeStage::find(const std::string& key) const {
  for (const auto& p : params) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

const std::vector<std::string>& recipe_stage_types() {
  static const std::vector<std::string> t = {"train", "distill", "prune", "quantize",
                                             "eval",  "export",  "verify", "report"};
  return t;
}

std::string recipe_where(const std::string& path, int line, int col) {
  if (line <= 0) return "--set: ";
  return path + ":" + std::to_string(line) + ":" + std::to_string(col) + ": ";
}

std::string closest_word(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  // Close enough: at most a third of the word's letters (at least 2) differ.
  return best_d <= std::max<size_t>(2, word.size() / 3) ? best : std::string();
}

namespace {
Recipe recipe_parse_unguarded(const std::string& path, const std::string& text,
                              const std::vector<std::string>& overrides,
                              std::vector<std::string>* issues) {
  Recipe r;
  r.path = path;
  r.text = text;
  Parser P{path, issues};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    issues->push_back(recipe_where(path, e.mark.line + 1, e.mark.column + 1) + "YAML syntax: " + e.msg);
    return r;
  }
  if (!root.IsMap()) {
    issues->push_back(path + ":1:1: a recipe is a mapping with version, teacher, data and stages");
    return r;
  }
  for (const auto& o : overrides) apply_override(root, o, path, issues);
  for (auto it = root.begin(); it != root.end(); ++it) {
    std::string k = it->first.Scalar();
    if (std::find(kTopKeys.begin(), kTopKeys.end(), k) == kTopKeys.end()) {
      P.unknown(it->first, k, k, kTopKeys);
    }
  }
  // version
  if (!root["version"]) {
    issues->push_back(path + ":1:1: version: missing; write `version: 1` at the top");
  } else {
    RecipeValue v;
    if (P.value(root["version"], "version", "version", &v)) {
      if (v.value != "1") {
        P.issue(root["version"].Mark(), "version: " + v.value + " is not supported; expected 1");
      } else {
        r.version = 1;
      }
    }
  }
  if (!root["teacher"]) {
    issues->push_back(path + ":1:1: teacher: missing; give the model directory to start from");
  } else {
    P.value(root["teacher"], "teacher", "teacher", &r.teacher);
  }
  if (root["output"]) P.value(root["output"], "output", "output", &r.output);
  if (root["data"]) {
    YAML::Node d = root["data"];
    if (!d.IsMap()) {
      P.issue(d.Mark(), "data: expected a mapping with train, calib, eval, tokenizer, task");
    } else {
      for (auto it = d.begin(); it != d.end(); ++it) {
        std::string k = it->first.Scalar();
        RecipeValue* dst = k == "train" ? &r.data_train : k == "calib" ? &r.data_calib
                         : k == "eval" ? &r.data_eval : k == "tokenizer" ? &r.data_tokenizer
                         : k == "task" ? &r.data_task : nullptr;
        if (!dst) {
          P.unknown(it->first, k, "data." + k, kDataKeys);
          continue;
        }
        P.value(it->second, k, "data." + k, dst);
      }
    }
  }
  if (!root["stages"]) {
    issues->push_back(path + ":1:1: stages: missing; list the stages to run");
    return r;
  }
  YAML::Node st = root["stages"];
  if (!st.IsSequence()) {
    P.issue(st.Mark(), "stages: expected a list like `- prune: {method: wanda}`");
    return r;
  }
  const auto& types = recipe_stage_types();
  for (size_t i = 0; i < st.size(); ++i) {
    YAML::Node e = st[i];
    const std::string where = "stages[" + std::to_string(i) + "]";
    RecipeStage s;
    s.line = e.Mark().line + 1;
    s.col = e.Mark().column + 1;
    if (e.IsScalar()) {  // "- report" with no options
      s.type = e.Scalar();
    } else if (e.IsMap() && e.size() == 1) {
      s.type = e.begin()->first.Scalar();
    } else {
      P.issue(e.Mark(), where + ": expected one stage like `- quantize: {scheme: w8a8}`");
      continue;
    }
    if (std::find(types.begin(), types.end(), s.type) == types.end()) {
      std::string c = closest_word(s.type, types);
      P.issue(e.IsMap() ? e.begin()->first.Mark() : e.Mark(),
              where + ": unknown stage '" + s.type + "'" + (c.empty() ? "" : "; did you mean '" + c + "'?") +
                  " (valid: train, distill, prune, quantize, eval, export, verify, report)");
      continue;
    }
    if (e.IsMap()) {
      YAML::Node params = e.begin()->second;
      if (params.IsMap()) {
        for (auto it = params.begin(); it != params.end(); ++it) {
          RecipeValue v;
          std::string k = it->first.Scalar();
          // verify's `serve:` block ({concurrency: [1, 8], requests: 16, ...}) becomes the
          // flags --serve-concurrency 1,8 --serve-requests 16 ...
          if (s.type == "verify" && k == "serve" && it->second.IsMap()) {
            for (auto jt = it->second.begin(); jt != it->second.end(); ++jt) {
              const std::string sk = jt->first.Scalar();
              if (P.value(jt->second, "serve-" + sk, where + ".verify.serve." + sk, &v)) {
                v.line = jt->first.Mark().line + 1;
                v.col = jt->first.Mark().column + 1;
                s.params.push_back(v);
              }
            }
            continue;
          }
          if (P.value(it->second, k, where + "." + s.type + "." + k, &v)) {
            v.line = it->first.Mark().line + 1;  // point at the key: where the user looks
            v.col = it->first.Mark().column + 1;
            if (it->second.Mark().is_null()) v.line = 0;
            s.params.push_back(v);
          }
        }
      } else if (!params.IsNull()) {
        P.issue(params.Mark(), where + "." + s.type + ": expected a mapping of options");
      }
    }
    r.stages.push_back(s);
  }
  // Values that came from --set point at --set, not at the file.
  for (const auto& spec : overrides) {
    std::string path = spec.substr(0, spec.find('='));
    if (path.rfind("stages.", 0) == 0) {
      size_t a = 7, b = path.find('.', a), c = b == std::string::npos ? b : path.find('.', b + 1);
      if (b == std::string::npos || c == std::string::npos) continue;
      size_t idx = size_t(std::atoi(path.substr(a, b - a).c_str()));
      std::string key = path.substr(c + 1);
      if (idx < r.stages.size()) {
        for (auto& p : r.stages[idx].params) {
          if (p.key == key) p.line = p.col = 0;
        }
      }
    } else {
      for (auto* v : {&r.teacher, &r.output, &r.data_train, &r.data_calib, &r.data_eval,
                      &r.data_tokenizer, &r.data_task}) {
        if (path == v->key || path == "data." + v->key) v->line = v->col = 0;
      }
    }
  }
  return r;
}
}  // namespace

Recipe recipe_parse(const std::string& path, const std::string& text,
                    const std::vector<std::string>& overrides, std::vector<std::string>* issues) {
  // Every yaml-cpp use above checks node kinds first; this catches what a check may have missed,
  // so that a recipe can never end the process with a raw yaml-cpp exception.
  try {
    return recipe_parse_unguarded(path, text, overrides, issues);
  } catch (const YAML::Exception& e) {
    const int line = e.mark.line >= 0 ? e.mark.line + 1 : 1;
    const int col = e.mark.column >= 0 ? e.mark.column + 1 : 1;
    issues->push_back(recipe_where(path, line, col) + "cannot read the recipe: " + e.msg);
  } catch (const std::exception& e) {
    issues->push_back(path + ":1:1: cannot read the recipe: " + e.what());
  }
  Recipe r;
  r.path = path;
  r.text = text;
  return r;
}

}  // namespace shrink::pipeline
