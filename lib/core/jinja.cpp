// The Jinja2 subset of chat templates (jinja.h): a lexer with transformers' whitespace rules, a
// recursive-descent parser into an AST (Jinja's operator precedence), and a tree-walking
// evaluator over Python-like values.
#include "core/jinja.h"
#include "core/json_util.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <pthread.h>
#include <set>
#include <sstream>
#include <unordered_map>
#include <variant>
#include <vector>

namespace shrink::core {

namespace {

// ---- values ----------------------------------------------------------------------------------

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python's dict
struct Macro;

// Charges the render in progress for work done (see WorkBudget below); a no-op outside one.
void charge_work(int64_t units);
// A render's work bound: a base, and more for each value of the context and 64 bytes of its text.
constexpr int64_t kWorkBase = 2'000'000, kWorkPerContextValue = 200, kWorkPerContextText64 = 8;

struct Value {
  enum class T { kUndefined, kNone, kBool, kInt, kFloat, kStr, kList, kDict, kMacro, kFunc };
  T t = T::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> l;
  std::shared_ptr<Dict> d;  // kDict; namespaces are dicts that set() may write into
  bool ns = false;
  std::shared_ptr<Macro> m;
  std::function<Value(std::vector<Value>&, std::vector<std::pair<std::string, Value>>&)> fn;

  static Value none() { Value v; v.t = T::kNone; return v; }
  static Value boolean(bool x) { Value v; v.t = T::kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.t = T::kInt; v.i = x; return v; }
  static Value real(double x) { Value v; v.t = T::kFloat; v.f = x; return v; }
  // What a render makes is charged to its work bound: a list item or 64 bytes of text a unit.
  static Value str(std::string x) {
    charge_work(1 + int64_t(x.size() >> 6));
    Value v; v.t = T::kStr; v.s = std::move(x); return v;
  }
  static Value list(List x = {}) {
    charge_work(1 + int64_t(x.size()));
    Value v; v.t = T::kList; v.l = std::make_shared<List>(std::move(x)); return v;
  }
  static Value dict(Dict x = {}) {
    charge_work(1 + int64_t(x.size()));
    Value v; v.t = T::kDict; v.d = std::make_shared<Dict>(std::move(x)); return v;
  }
  bool undefined() const { return t == T::kUndefined; }
  bool is_num() const { return t == T::kInt || t == T::kFloat || t == T::kBool; }
  double num() const { return t == T::kFloat ? f : t == T::kBool ? double(b) : double(i); }
  const Value* get(const std::string& k) const {
    if (t != T::kDict) return nullptr;
    charge_work(1 + int64_t(d->size() >> 4));  // a linear lookup (equal() on dicts makes K of them)
    for (const auto& kv : *d)
      if (kv.first == k) return &kv.second;
    return nullptr;
  }
  void put(const std::string& k, Value v) {
    for (auto& kv : *d)
      if (kv.first == k) { kv.second = std::move(v); return; }
    d->emplace_back(k, std::move(v));
  }

  Value() = default;
  Value(const Value&) = default;
  Value(Value&&) = default;
  Value& operator=(const Value&) = default;
  Value& operator=(Value&&) = default;
  ~Value() {
    if ((l && l.use_count() == 1) || (d && d.use_count() == 1)) release_nested();
  }

 private:
  // A template can nest lists a million deep ({% set ns.x = [ns.x] %} in a loop): the last owner
  // empties them here with a work list, so that destroying a deep value does not recurse.
  void release_nested() {
    std::vector<std::shared_ptr<List>> lists;
    std::vector<std::shared_ptr<Dict>> dicts;
    auto take = [&](Value& v) {
      if (v.l && v.l.use_count() == 1) lists.push_back(std::move(v.l));
      if (v.d && v.d.use_count() == 1) dicts.push_back(std::move(v.d));
    };
    take(*this);
    while (!lists.empty() || !dicts.empty()) {
      if (!lists.empty()) {
        std::shared_ptr<List> x = std::move(lists.back());
        lists.pop_back();
        for (Value& c : *x) take(c);
      } else {
        std::shared_ptr<Dict> x = std::move(dicts.back());
        dicts.pop_back();
        for (auto& kv : *x) take(kv.second);
      }
    }
  }
};

struct Error {
  std::string msg;
};
[[noreturn]] void fail(const std::string& m) { throw Error{m}; }
// An error raised where no position is known (value helpers, the stack budget): render() prefixes
// it with the statement that was running.
struct Unplaced {
  std::string msg;
};
[[noreturn]] void fail_unplaced(const std::string& m) { throw Unplaced{m}; }

// The renderer recurses over expressions, statements, macro calls and nested values. Each is
// bounded on its own (nesting, expression height, macro depth), but not their product, and a
// context or a template-built value may nest without bound; so each recursive step also checks
// the stack it has used since render() began against a budget: what the thread had left, less a
// margin for the calls below the last check (an eighth of it, at least 512 KiB; half of a stack
// under 1 MiB). Frames differ by build (eval's is 752 bytes at -O3 and about ten times that under
// ASan), so the depth reached differs too; what would overflow fails with an error instead.
class StackBudget {
 public:
  StackBudget() : prev_base_(base_), prev_budget_(budget_) {
    base_ = static_cast<const char*>(__builtin_frame_address(0));
    budget_ = size_t(1) << 20;  // where the stack's extent is unknown
    if (const char* low = stack_low(); low && base_ > low) {
      const size_t left = size_t(base_ - low);
      budget_ = left < (size_t(1) << 20) ? left / 2 : left - std::max(left / 8, size_t(512) << 10);
    }
  }
  ~StackBudget() {
    base_ = prev_base_;
    budget_ = prev_budget_;
  }
  StackBudget(const StackBudget&) = delete;
  StackBudget& operator=(const StackBudget&) = delete;

  // The lowest address of this thread's stack (null when unknown), found once per thread: for
  // the main thread glibc reads /proc/self/maps.
  static const char* stack_low() {
    thread_local const char* low = [] {
      const char* l = nullptr;
      pthread_attr_t attr;
      if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void* addr = nullptr;
        size_t size = 0;
        if (pthread_attr_getstack(&attr, &addr, &size) == 0) l = static_cast<const char*>(addr);
        pthread_attr_destroy(&attr);
      }
      return l;
    }();
    return low;
  }

  static void check(const char* what) {
    const char* here = static_cast<const char*>(__builtin_frame_address(0));
    if (base_ && here < base_ && size_t(base_ - here) > budget_)
      fail_unplaced(std::string(what) + " nested too deeply (the renderer's recursion passed its " +
                    std::to_string(budget_ >> 10) + " KiB stack budget)");
  }

 private:
  static thread_local const char* base_;
  static thread_local size_t budget_;
  const char* prev_base_;
  size_t prev_budget_;
};
thread_local const char* StackBudget::base_ = nullptr;
thread_local size_t StackBudget::budget_ = 0;

// Whether `v` holds (at any depth) the list or dict at `target`: appending or setting such a
// value into the target would make a cycle, which leaks and recurses forever when printed.
// Iterative; as no value holds a cycle, the walk ends; each value it looks at (shared ones once
// per path) is charged to the work bound.
bool reaches(const Value& v, const void* target) {
  std::vector<const Value*> todo = {&v};
  while (!todo.empty()) {
    const Value* x = todo.back();
    todo.pop_back();
    charge_work(1);
    const void* c = x->l ? static_cast<const void*>(x->l.get()) : static_cast<const void*>(x->d.get());
    if (!c) continue;
    if (c == target) return true;
    if (x->l) for (const Value& e : *x->l) todo.push_back(&e);
    if (x->d) for (const auto& kv : *x->d) todo.push_back(&kv.second);
  }
  return false;
}

const char* type_name(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined: return "undefined";
    case Value::T::kNone: return "none";
    case Value::T::kBool: return "boolean";
    case Value::T::kInt: return "integer";
    case Value::T::kFloat: return "float";
    case Value::T::kStr: return "string";
    case Value::T::kList: return "list";
    case Value::T::kDict: return "dict";
    default: return "callable";
  }
}

bool truthy(const Value& v) {
  switch (v.t) {
    case Value::T::kUndefined:
    case Value::T::kNone: return false;
    case Value::T::kBool: return v.b;
    case Value::T::kInt: return v.i != 0;
    case Value::T::kFloat: return v.f != 0;
    case Value::T::kStr: return !v.s.empty();
    case Value::T::kList: return !v.l->empty();
    case Value::T::kDict: return !v.d->empty();
    default: return true;
  }
}

// Python's repr of a float: the shortest digits that read back as the same double, in fixed
// notation for decimal exponents -4..15 and scientific otherwise (1000.0, 1e+16, 1.5e-05).
std::string float_str(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char b[64];
  for (int p = 0; p <= 16; ++p) {
    std::snprintf(b, sizeof b, "%.*e", p, x);
    if (std::strtod(b, nullptr) == x) break;
  }
  // b is [-]d[.ddd]e(+|-)XX: split it into the sign, the digits and the decimal exponent.
  std::string m = b;
  const size_t epos = m.find('e');
  const int exp10 = std::atoi(m.c_str() + epos + 1);
  m.resize(epos);
  const bool neg = m[0] == '-';
  std::string digits;
  for (char c : m) if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
  std::string o = neg ? "-" : "";
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 < 0) return o + "0." + std::string(size_t(-exp10 - 1), '0') + digits;
    const size_t whole = size_t(exp10) + 1;
    if (digits.size() <= whole) return o + digits + std::string(whole - digits.size(), '0') + ".0";
    return o + digits.substr(0, whole) + "." + digits.substr(whole);
  }
  o += digits.substr(0, 1);
  if (digits.size() > 1) o += "." + digits.substr(1);
  char e[8];
  std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
  return o + e;
}

std::string repr(const Value& v);
std::string to_str(const Value& v) {  // Python's str()
  switch (v.t) {
    case Value::T::kUndefined: return "";
    case Value::T::kNone: return "None";
    case Value::T::kBool: return v.b ? "True" : "False";
    case Value::T::kInt: return std::to_string(v.i);
    case Value::T::kFloat: return float_str(v.f);
    case Value::T::kStr: return v.s;
    default: return repr(v);
  }
}
std::string repr(const Value& v) {
  StackBudget::check("a value");
  charge_work(1);  // (a list of itself twice, forty times over, is 2^40 values to print)
  switch (v.t) {
    case Value::T::kStr: {
      const char q = v.s.find('\'') != std::string::npos && v.s.find('"') == std::string::npos ? '"' : '\'';
      std::string o(1, q);
      for (char c : v.s) {
        if (c == '\\') o += "\\\\";
        else if (c == '\n') o += "\\n";
        else if (c == '\t') o += "\\t";
        else if (c == q) o += std::string("\\") + c;
        else o += c;
      }
      return o + q;
    }
    case Value::T::kList: {
      std::string o = "[";
      for (size_t k = 0; k < v.l->size(); ++k) o += (k ? ", " : "") + repr((*v.l)[k]);
      return o + "]";
    }
    case Value::T::kDict: {
      std::string o = "{";
      for (size_t k = 0; k < v.d->size(); ++k)
        o += (k ? ", " : "") + repr(Value::str((*v.d)[k].first)) + ": " + repr((*v.d)[k].second);
      return o + "}";
    }
    default: return to_str(v);
  }
}

// json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys), as transformers' tojson.
void dumps(const Value& v, int indent, bool sort, int depth, std::string& o) {
  StackBudget::check("a value");
  charge_work(1);
  auto nl = [&](int d) {
    if (indent < 0) return;
    if (double(o.size()) + double(indent) * double(d) > double(64 << 20)) fail_unplaced("tojson: the text would pass 64 MiB");
    o += '\n';
    o.append(size_t(indent) * size_t(d), ' ');
  };
  switch (v.t) {
    case Value::T::kUndefined:
    case Value::T::kNone: o += "null"; return;
    case Value::T::kBool: o += v.b ? "true" : "false"; return;
    case Value::T::kInt: o += std::to_string(v.i); return;
    case Value::T::kFloat:
      o += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity") : float_str(v.f);
      return;
    case Value::T::kStr: {
      o += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"': o += "\\\""; break;
          case '\\': o += "\\\\"; break;
          case '\n': o += "\\n"; break;
          case '\r': o += "\\r"; break;
          case '\t': o += "\\t"; break;
          case '\b': o += "\\b"; break;
          case '\f': o += "\\f"; break;
          default:
            if (c < 0x20) {
              char b[8];
              std::snprintf(b, sizeof b, "\\u%04x", c);
              o += b;
            } else {
              o += char(c);
            }
        }
      }
      o += '"';
      return;
    }
    case Value::T::kList: {
      if (v.l->empty()) { o += "[]"; return; }
      o += '[';
      for (size_t k = 0; k < v.l->size(); ++k) {
        if (k) o += indent < 0 ? ", " : ",";
        nl(depth + 1);
        dumps((*v.l)[k], indent, sort, depth + 1, o);
      }
      nl(depth);
      o += ']';
      return;
    }
    case Value::T::kDict: {
      if (v.d->empty()) { o += "{}"; return; }
      Dict items = *v.d;
      if (sort) std::stable_sort(items.begin(), items.end(), [](auto& a, auto& b) { return a.first < b.first; });
      o += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) o += indent < 0 ? ", " : ",";
        nl(depth + 1);
        dumps(Value::str(items[k].first), indent, sort, depth + 1, o);
        o += ": ";
        dumps(items[k].second, indent, sort, depth + 1, o);
      }
      nl(depth);
      o += '}';
      return;
    }
    default: fail_unplaced("tojson: a " + std::string(type_name(v)) + " is not serializable");
  }
}

// `units` gains what the value adds to the render's work bound (WorkBudget).
Value from_json(const nlohmann::ordered_json& j, int64_t& units) {
  StackBudget::check("the context");
  units += kWorkPerContextValue;
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {  // past int64: a float, not a wrap to negative
      const uint64_t u = j.get<uint64_t>();
      return u > uint64_t(std::numeric_limits<int64_t>::max()) ? Value::real(double(u)) : Value::integer(int64_t(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value::real(j.get<double>());
    case nlohmann::ordered_json::value_t::string: {
      const std::string& text = j.get_ref<const std::string&>();
      units += kWorkPerContextText64 * int64_t(text.size() >> 6);
      return Value::str(text);
    }
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& x : j) l.push_back(from_json(x, units));
      return Value::list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.emplace_back(it.key(), from_json(it.value(), units));
      return Value::dict(std::move(d));
    }
    default: return Value();
  }
}

int64_t int_value(const Value& v) { return v.t == Value::T::kBool ? int64_t(v.b) : v.i; }  // kInt, kBool
bool both_ints(const Value& a, const Value& b) {
  return a.is_num() && b.is_num() && a.t != Value::T::kFloat && b.t != Value::T::kFloat;
}

// Comparisons are charged to the work bound (one unit, and one per 64 bytes of text compared):
// `x in list`, unique and sort inside loops would otherwise do unbounded work uncharged.
bool equal(const Value& a, const Value& b) {
  StackBudget::check("a value");
  charge_work(1);
  if (both_ints(a, b)) return int_value(a) == int_value(b);  // exact past 2^53
  if (a.is_num() && b.is_num()) return a.num() == b.num();
  if (a.t != b.t) return false;
  switch (a.t) {
    case Value::T::kUndefined:
    case Value::T::kNone: return true;
    case Value::T::kStr: charge_work(int64_t(std::min(a.s.size(), b.s.size()) >> 6)); return a.s == b.s;
    case Value::T::kList:
      if (a.l->size() != b.l->size()) return false;
      for (size_t k = 0; k < a.l->size(); ++k)
        if (!equal((*a.l)[k], (*b.l)[k])) return false;
      return true;
    case Value::T::kDict:
      if (a.d->size() != b.d->size()) return false;
      for (const auto& kv : *a.d) {
        const Value* o = b.get(kv.first);
        if (!o || !equal(kv.second, *o)) return false;
      }
      return true;
    default: return false;
  }
}

bool less(const Value& a, const Value& b) {
  charge_work(1);
  if (both_ints(a, b)) return int_value(a) < int_value(b);
  if (a.is_num() && b.is_num()) return a.num() < b.num();
  if (a.t == Value::T::kStr && b.t == Value::T::kStr) {
    charge_work(int64_t(std::min(a.s.size(), b.s.size()) >> 6));
    return a.s < b.s;
  }
  fail_unplaced(std::string("cannot compare ") + type_name(a) + " and " + type_name(b) + " with <");
}

List iterate(const Value& v) {
  switch (v.t) {
    case Value::T::kList: charge_work(int64_t(v.l->size())); return *v.l;
    case Value::T::kDict: {
      List keys;
      for (const auto& kv : *v.d) keys.push_back(Value::str(kv.first));
      return keys;
    }
    case Value::T::kStr: {
      List chars;  // UTF-8 characters
      for (size_t k = 0; k < v.s.size();) {
        size_t n = 1;
        const unsigned char c = static_cast<unsigned char>(v.s[k]);
        if (c >= 0xF0) n = 4; else if (c >= 0xE0) n = 3; else if (c >= 0xC0) n = 2;
        chars.push_back(Value::str(v.s.substr(k, n)));
        k += n;
      }
      return chars;
    }
    case Value::T::kUndefined:
    case Value::T::kNone: return {};
    default: fail_unplaced(std::string("a ") + type_name(v) + " is not iterable");
  }
}

// ---- lexer -----------------------------------------------------------------------------------

struct Tok {
  enum K { kName, kStr, kInt, kFloat, kOp, kEnd } k = kEnd;
  std::string s;
  int64_t i = 0;
  double f = 0;
  size_t pos = 0;  // byte offset in the template
};

struct Segment {
  enum K { kText, kExpr, kStmt } k;
  std::string text;   // kText
  std::vector<Tok> toks;  // kExpr / kStmt
  size_t pos = 0;
};

struct Loc {
  const std::string* src;
  std::string origin;
  std::string at(size_t pos) const {
    int line = 1, col = 1;
    for (size_t k = 0; k < pos && k < src->size(); ++k) {
      if ((*src)[k] == '\n') { ++line; col = 1; } else { ++col; }
    }
    return origin + ":" + std::to_string(line) + ":" + std::to_string(col);
  }
};

// The work one render may do, in units: a statement run, a list or dict item or 64 bytes of text
// made (a loop iteration makes a `loop` object of 9), a value looked at by a cycle check.
// A unit costs a fraction of a microsecond (about a microsecond under ASan). Real templates do
// work linear in their context: the five in tests/fixtures/chat_templates use 75-155 units per
// message of a 2,000-message chat with 1,000-byte messages. The bound is that much and more:
// 2 million units plus 200 per value of the context and 8 per 64 bytes of its text. It stops
// templates that would run for minutes or fill memory ({% set s = s ~ s %} in a loop, loops in
// loops over range()) at the statement they were running. Reading the context is not charged.
class WorkBudget {
 public:
  WorkBudget(const Loc& loc, int64_t units) : loc_(loc), units_(units), prev_(cur_) { cur_ = this; }
  ~WorkBudget() { cur_ = prev_; }
  WorkBudget(const WorkBudget&) = delete;
  WorkBudget& operator=(const WorkBudget&) = delete;

  static void charge(int64_t units) {
    if (!cur_) return;
    cur_->used_ += units;
    if (cur_->used_ > cur_->units_)
      fail(cur_->loc_.at(cur_->pos_) + ": the template did more than its bound of " + std::to_string(cur_->units_) +
           " units of work (statements run, loop iterations, items and 64-byte blocks of text made; 2 million "
           "plus 200 per value of the context and 8 per 64 bytes of its text)");
  }
  // The statement being run, which an error names.
  static void at(size_t pos) {
    if (cur_) cur_->pos_ = pos;
  }
  std::string where() const { return loc_.at(pos_); }

 private:
  const Loc& loc_;
  int64_t units_;
  WorkBudget* prev_;
  int64_t used_ = 0;
  size_t pos_ = 0;
  static thread_local WorkBudget* cur_;
};
thread_local WorkBudget* WorkBudget::cur_ = nullptr;
void charge_work(int64_t units) { WorkBudget::charge(units); }

std::vector<Tok> lex_expr(const std::string& s, size_t begin, size_t end, const Loc& loc) {
  std::vector<Tok> out;
  size_t k = begin;
  static const char* ops3[] = {"**", "//", "==", "!=", "<=", ">="};
  while (k < end) {
    const char c = s[k];
    if (std::isspace(static_cast<unsigned char>(c))) { ++k; continue; }
    Tok t;
    t.pos = k;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = k;
      while (e < end && (std::isalnum(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
      t.k = Tok::kName;
      t.s = s.substr(k, e - k);
      k = e;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t e = k;
      while (e < end && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
      bool real = false;
      auto digit = [&](size_t at) { return at < end && std::isdigit(static_cast<unsigned char>(s[at])); };
      if (e + 1 < end && s[e] == '.' && digit(e + 1)) {
        real = true;
        ++e;
        while (digit(e) || (e < end && s[e] == '_')) ++e;
      }
      if (e < end && (s[e] == 'e' || s[e] == 'E')) {  // an exponent, as Jinja's float literals
        const size_t d = e + 1 + (e + 1 < end && (s[e + 1] == '+' || s[e + 1] == '-'));
        if (digit(d)) {
          real = true;
          e = d;
          while (digit(e) || (e < end && s[e] == '_')) ++e;
        }
      }
      std::string num = s.substr(k, e - k);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      if (real) {
        t.k = Tok::kFloat;
        t.f = std::strtod(num.c_str(), nullptr);  // out of range: inf, as Python's float literals
      } else {
        t.k = Tok::kInt;
        errno = 0;
        t.i = std::strtoll(num.c_str(), nullptr, 10);
        if (errno == ERANGE) fail(loc.at(k) + ": integer literal outside the 64-bit range (integers are 64-bit here)");
      }
      k = e;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t e = k + 1;
      for (; e < end && s[e] != c; ++e) {
        if (s[e] == '\\' && e + 1 < end) {
          const char x = s[++e];
          switch (x) {
            case 'n': v += '\n'; break;
            case 't': v += '\t'; break;
            case 'r': v += '\r'; break;
            case '\\': v += '\\'; break;
            case '\'': v += '\''; break;
            case '"': v += '"'; break;
            default: v += '\\'; v += x;
          }
        } else {
          v += s[e];
        }
      }
      if (e >= end) fail(loc.at(k) + ": unterminated string");
      t.k = Tok::kStr;
      t.s = v;
      k = e + 1;
    } else {
      t.k = Tok::kOp;
      std::string two = s.substr(k, 2);
      bool matched = false;
      for (const char* o : ops3)
        if (two == o) { t.s = two; k += 2; matched = true; break; }
      if (!matched) {
        if (std::string("+-*/%~|.,:()[]{}=<>!").find(c) == std::string::npos)
          fail(loc.at(k) + ": unexpected character '" + std::string(1, c) + "'");
        t.s = std::string(1, c);
        ++k;
      }
    }
    out.push_back(t);
  }
  Tok e;
  e.pos = end;
  out.push_back(e);
  return out;
}

// Split into text, {{ }} and {% %} with transformers' trim_blocks + lstrip_blocks and the - / +
// controls; comments vanish (with the block rules).
std::vector<Segment> lex(const std::string& s, const Loc& loc) {
  std::vector<Segment> out;
  size_t k = 0;
  bool trim_next_newline = false, strip_next_ws = false;
  while (k <= s.size()) {
    size_t open = s.find('{', k);
    while (open != std::string::npos && open + 1 < s.size() &&
           s[open + 1] != '{' && s[open + 1] != '%' && s[open + 1] != '#')
      open = s.find('{', open + 1);
    if (open != std::string::npos && open + 1 >= s.size()) open = std::string::npos;
    std::string text = s.substr(k, open == std::string::npos ? std::string::npos : open - k);
    if (strip_next_ws) {
      size_t a = text.find_first_not_of(" \t\r\n");
      text = a == std::string::npos ? "" : text.substr(a);
    } else if (trim_next_newline && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
    } else if (trim_next_newline && text.size() >= 2 && text[0] == '\r' && text[1] == '\n') {
      text.erase(0, 2);
    }
    trim_next_newline = strip_next_ws = false;
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, {}, k});
      break;
    }
    const char kind = s[open + 1];
    const bool minus = open + 2 < s.size() && s[open + 2] == '-';
    const bool plus = open + 2 < s.size() && s[open + 2] == '+';
    if (minus) {
      size_t e = text.find_last_not_of(" \t\r\n");
      text = e == std::string::npos ? "" : text.substr(0, e + 1);
    } else if ((kind == '%' || kind == '#') && !plus) {
      // lstrip_blocks: the spaces and tabs between the start of the tag's source line and the
      // tag go.
      size_t p = open;
      while (p > k && (s[p - 1] == ' ' || s[p - 1] == '\t')) --p;
      if (p == 0 || s[p - 1] == '\n') text.erase(text.size() - std::min(open - p, text.size()));
    }
    if (!text.empty()) out.push_back({Segment::kText, text, {}, k});
    const size_t body = open + 2 + (minus || plus ? 1 : 0);
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t end = s.find(close, body);
    if (kind != '#') {
      // A closing delimiter inside a string literal does not end the tag.
      // Nor does "}}" while braces opened inside the tag are unbalanced (a dict literal), as
      // in Jinja's lexer.
      size_t q = body;
      char inq = 0;
      int depth = 0;
      for (; q + 1 < s.size(); ++q) {
        if (inq) {
          if (s[q] == '\\') { ++q; continue; }
          if (s[q] == inq) inq = 0;
        } else if (s[q] == '\'' || s[q] == '"') {
          inq = s[q];
        } else if (depth == 0 && s.compare(q, 2, close) == 0) {
          break;
        } else if (s[q] == '{') {
          ++depth;
        } else if (s[q] == '}' && depth > 0) {
          --depth;
        }
      }
      end = q + 1 < s.size() ? q : std::string::npos;
    }
    if (end == std::string::npos) fail(loc.at(open) + ": '" + s.substr(open, 2) + "' is never closed");
    size_t inner_end = end;
    const bool rminus = end > body && s[end - 1] == '-';
    if (rminus) --inner_end;
    if (kind == '{') {
      out.push_back({Segment::kExpr, "", lex_expr(s, body, inner_end, loc), open});
    } else if (kind == '%') {
      out.push_back({Segment::kStmt, "", lex_expr(s, body, inner_end, loc), open});
    }
    k = end + 2;
    if (rminus) strip_next_ws = true;
    else if (kind != '{') trim_next_newline = true;
  }
  return out;
}

// ---- AST -------------------------------------------------------------------------------------

struct Expr;
using ExprP = std::shared_ptr<Expr>;
struct Expr {
  enum K { kLit, kName, kAttr, kIndex, kSlice, kCall, kFilter, kTest, kUnary, kBinary, kAnd, kOr,
           kNot, kTernary, kList, kDict } k;
  Value lit;
  std::string name;  // kName, kAttr, kFilter, kTest, ops
  std::vector<ExprP> args;  // operands / positional args
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negate = false;  // kTest: "is not"
  size_t pos = 0;
  int height = 1;  // of the tree under this node, bounded by the parser (sealed())
};

struct Node;
using NodeP = std::shared_ptr<Node>;
struct Node {
  enum K { kText, kOut, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kBlock } k;
  std::string text;
  ExprP e;                                      // kOut, kSet value, kFor iterable
  std::vector<std::pair<ExprP, std::vector<NodeP>>> branches;  // kIf (null cond = else)
  std::vector<std::string> targets;             // kFor targets, kSet target (name or ns.attr)
  ExprP cond;                                   // kFor filter
  std::vector<NodeP> body, orelse;
  std::vector<std::pair<std::string, ExprP>> params;  // kMacro
  size_t pos = 0;
};

struct Macro {
  std::vector<std::pair<std::string, ExprP>> params;
  std::vector<NodeP> body;
};

const std::set<std::string> kFilters = {
    "trim", "tojson", "length", "count", "upper", "lower", "title", "capitalize", "default", "d",
    "join", "first", "last", "string", "int", "float", "list", "items", "replace", "reverse",
    "selectattr", "rejectattr", "map", "unique", "abs", "round", "safe", "e", "escape", "indent",
    "wordcount", "sum", "sort", "dictsort", "min", "max", "batch", "select", "reject", "attr"};
const std::set<std::string> kTests = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "sequence",
    "iterable", "boolean", "true", "false", "equalto", "eq", "ne", "odd", "even", "divisibleby",
    "in", "lower", "upper", "callable", "gt", "lt", "ge", "le", "sameas"};
const std::set<std::string> kMethods = {
    "strip", "lstrip", "rstrip", "split", "startswith", "endswith", "upper", "lower", "title",
    "capitalize", "replace", "items", "keys", "values", "get", "append", "count", "find", "join",
    "rsplit", "splitlines", "isdigit", "isalpha", "isspace"};
const std::set<std::string> kGlobals = {"raise_exception", "strftime_now", "namespace", "range",
                                        "dict", "len"};

class Parser {
 public:
  Parser(std::vector<Segment> segs, Loc loc) : segs_(std::move(segs)), loc_(std::move(loc)) {}

  std::vector<NodeP> parse_all() {
    std::vector<NodeP> body = block({});
    if (seg_ < segs_.size()) fail(loc_.at(segs_[seg_].pos) + ": unexpected '" + stmt_name() + "'");
    for (const auto& [name, pos] : called_)
      if (!macros_.count(name) && !kGlobals.count(name))
        fail(loc_.at(pos) + ": unsupported function '" + name + "' (not a macro of this template "
                            "nor one of raise_exception, strftime_now, namespace, range, dict)");
    return body;
  }

 private:
  std::vector<Segment> segs_;
  Loc loc_;
  size_t seg_ = 0;
  const std::vector<Tok>* toks_ = nullptr;
  size_t t_ = 0;
  std::set<std::string> macros_;
  std::vector<std::pair<std::string, size_t>> called_;

  std::string stmt_name() const {
    const Segment& s = segs_[seg_];
    return s.k == Segment::kStmt && !s.toks.empty() && s.toks[0].k == Tok::kName ? s.toks[0].s : "";
  }
  // Nodes until one of `stops` (a statement name); leaves seg_ on the stop.
  std::vector<NodeP> block(const std::set<std::string>& stops, size_t opener = 0,
                           const std::string& opener_name = "") {
    std::vector<NodeP> out;
    while (seg_ < segs_.size()) {
      const Segment& s = segs_[seg_];
      if (s.k == Segment::kText) {
        auto n = std::make_shared<Node>();
        n->k = Node::kText;
        n->text = s.text;
        out.push_back(n);
        ++seg_;
        continue;
      }
      toks_ = &s.toks;
      t_ = 0;
      if (s.k == Segment::kExpr) {
        auto n = std::make_shared<Node>();
        n->k = Node::kOut;
        n->pos = s.pos;
        n->e = expr();
        expect_end();
        out.push_back(n);
        ++seg_;
        continue;
      }
      const std::string name = stmt_name();
      if (stops.count(name)) return out;
      out.push_back(statement());
    }
    if (!stops.empty()) {
      std::string want;
      for (const auto& x : stops) want += (want.empty() ? "" : " or ") + x;
      fail(loc_.at(opener) + ": '" + opener_name + "' is never closed (the template ends before '" + want + "')");
    }
    return out;
  }

  const Tok& peek(size_t a = 0) const { return (*toks_)[std::min(t_ + a, toks_->size() - 1)]; }
  bool is_op(const char* o, size_t a = 0) const { return peek(a).k == Tok::kOp && peek(a).s == o; }
  bool is_name(const char* n, size_t a = 0) const { return peek(a).k == Tok::kName && peek(a).s == n; }
  [[noreturn]] void bad(const std::string& what) const { fail(loc_.at(peek().pos) + ": " + what); }
  void want_op(const char* o) {
    if (!is_op(o)) bad(std::string("expected '") + o + "'");
    ++t_;
  }
  std::string want_name() {
    if (peek().k != Tok::kName) bad("expected a name");
    return (*toks_)[t_++].s;
  }
  void expect_end() {
    if (peek().k != Tok::kEnd) bad("unexpected '" + peek().s + "'");
  }
  void next_stmt(const char* name) {
    toks_ = &segs_[seg_].toks;
    t_ = 1;
    expect_end();
    (void)name;
    ++seg_;
  }

  NodeP statement() {
    Depth guard(*this);
    const Segment& s = segs_[seg_];
    const std::string name = want_name();
    auto n = std::make_shared<Node>();
    n->pos = s.pos;
    if (name == "if") {
      n->k = Node::kIf;
      ExprP c = expr();
      expect_end();
      ++seg_;
      for (;;) {
        std::vector<NodeP> body = block({"elif", "else", "endif"}, s.pos, "if");
        n->branches.emplace_back(c, body);
        toks_ = &segs_[seg_].toks;
        t_ = 0;
        const std::string k = want_name();
        if (k == "endif") { expect_end(); ++seg_; break; }
        if (k == "else") {
          expect_end();
          ++seg_;
          n->branches.emplace_back(nullptr, block({"endif"}, s.pos, "if"));
          next_stmt("endif");
          break;
        }
        c = expr();  // elif
        expect_end();
        ++seg_;
      }
      return n;
    }
    if (name == "for") {
      n->k = Node::kFor;
      n->targets.push_back(want_name());
      while (is_op(",")) { ++t_; n->targets.push_back(want_name()); }
      if (!is_name("in")) bad("expected 'in'");
      ++t_;
      n->e = or_expr();  // no ternary: `if` here is the loop filter
      if (is_name("if")) { ++t_; n->cond = expr(); }
      if (is_name("recursive")) bad("unsupported: recursive loops");
      expect_end();
      ++seg_;
      n->body = block({"else", "endfor"}, s.pos, "for");
      if (stmt_name() == "else") {
        next_stmt("else");
        n->orelse = block({"endfor"}, s.pos, "for");
      }
      next_stmt("endfor");
      return n;
    }
    if (name == "set") {
      std::string target = want_name();
      if (is_op(".")) { ++t_; target += "." + want_name(); }
      if (is_op(",")) bad("unsupported: tuple assignment in set");
      n->targets.push_back(target);
      if (peek().k == Tok::kEnd) {  // {% set x %}...{% endset %}
        n->k = Node::kSetBlock;
        ++seg_;
        n->body = block({"endset"}, s.pos, "set");
        next_stmt("endset");
        return n;
      }
      n->k = Node::kSet;
      want_op("=");
      n->e = expr();
      expect_end();
      ++seg_;
      return n;
    }
    if (name == "macro") {
      n->k = Node::kMacro;
      n->targets.push_back(want_name());
      macros_.insert(n->targets[0]);
      want_op("(");
      while (!is_op(")")) {
        std::string p = want_name();
        ExprP def;
        if (is_op("=")) { ++t_; def = expr(); }
        n->params.emplace_back(p, def);
        if (!is_op(")")) want_op(",");
      }
      ++t_;
      expect_end();
      ++seg_;
      n->body = block({"endmacro"}, s.pos, "macro");
      next_stmt("endmacro");
      return n;
    }
    if (name == "break" || name == "continue") {
      n->k = name == "break" ? Node::kBreak : Node::kContinue;
      expect_end();
      ++seg_;
      return n;
    }
    if (name == "generation") {  // transformers' AssistantTracker: renders its body
      n->k = Node::kBlock;
      expect_end();
      ++seg_;
      n->body = block({"endgeneration"}, s.pos, "generation");
      next_stmt("endgeneration");
      return n;
    }
    t_ = 0;
    bad("unsupported statement '" + name + "'");
  }

  // ---- expressions (Jinja's precedence) ----
  ExprP mk(Expr::K k, size_t pos) {
    auto e = std::make_shared<Expr>();
    e->k = k;
    e->pos = pos;
    return e;
  }
  struct Depth {  // nesting of expressions and blocks: bounded, so no input overflows the stack
    explicit Depth(Parser& p) : p_(p) {
      if (++p_.depth_ > 200) p_.bad("nested more than 200 deep");
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };
  int depth_ = 0;
  // Operator chains (a + b + c ..., x.a.b ..., x|f|g ...) build trees iteratively, as deep as
  // they are long, that evaluation walks recursively: each node's height is bounded as it is made.
  static constexpr int kMaxHeight = 200;
  ExprP sealed(ExprP e) const {
    int h = 0;
    for (const ExprP& a : e->args) if (a) h = std::max(h, a->height);
    for (const auto& kv : e->kwargs) h = std::max(h, kv.second->height);
    if (h + 1 > kMaxHeight)
      fail(loc_.at(e->pos) + ": expression nested more than " + std::to_string(kMaxHeight) + " deep");
    e->height = h + 1;
    return e;
  }
  ExprP expr() {
    Depth guard(*this);
    ExprP a = or_expr();
    if (is_name("if")) {
      auto e = mk(Expr::kTernary, peek().pos);
      ++t_;
      ExprP c = or_expr();
      ExprP b;
      if (is_name("else")) { ++t_; b = expr(); }
      e->args = {c, a, b};
      return sealed(e);
    }
    return a;
  }
  ExprP or_expr() {
    ExprP a = and_expr();
    while (is_name("or")) {
      auto e = mk(Expr::kOr, peek().pos);
      ++t_;
      e->args = {a, and_expr()};
      a = sealed(e);
    }
    return a;
  }
  ExprP and_expr() {
    ExprP a = not_expr();
    while (is_name("and")) {
      auto e = mk(Expr::kAnd, peek().pos);
      ++t_;
      e->args = {a, not_expr()};
      a = sealed(e);
    }
    return a;
  }
  ExprP not_expr() {
    if (is_name("not")) {
      Depth guard(*this);
      auto e = mk(Expr::kNot, peek().pos);
      ++t_;
      e->args = {not_expr()};
      return sealed(e);
    }
    return compare();
  }
  ExprP compare() {
    ExprP a = math1();
    for (;;) {
      std::string op;
      const size_t pos = peek().pos;
      if (peek().k == Tok::kOp && (peek().s == "==" || peek().s == "!=" || peek().s == "<" ||
                                   peek().s == ">" || peek().s == "<=" || peek().s == ">=")) {
        op = peek().s;
        ++t_;
      } else if (is_name("in")) {
        op = "in";
        ++t_;
      } else if (is_name("not") && is_name("in", 1)) {
        op = "not in";
        t_ += 2;
      } else {
        return a;
      }
      auto e = mk(Expr::kBinary, pos);
      e->name = op;
      e->args = {a, math1()};
      a = sealed(e);
    }
  }
  ExprP binary_chain(const std::vector<std::string>& ops, ExprP (Parser::*next)()) {
    ExprP a = (this->*next)();
    while (peek().k == Tok::kOp && std::find(ops.begin(), ops.end(), peek().s) != ops.end()) {
      auto e = mk(Expr::kBinary, peek().pos);
      e->name = peek().s;
      ++t_;
      e->args = {a, (this->*next)()};
      a = sealed(e);
    }
    return a;
  }
  ExprP math1() { return binary_chain({"+", "-"}, &Parser::concat); }
  ExprP concat() { return binary_chain({"~"}, &Parser::math2); }
  ExprP math2() { return binary_chain({"*", "/", "//", "%"}, &Parser::power); }
  ExprP power() { return binary_chain({"**"}, &Parser::unary_f); }
  ExprP unary_f() { return unary(true); }
  ExprP unary(bool with_filter) {
    ExprP e;
    if (is_op("-") || is_op("+")) {
      Depth guard(*this);
      e = mk(Expr::kUnary, peek().pos);
      e->name = peek().s;
      ++t_;
      e->args = {unary(false)};
      e = sealed(e);
    } else {
      e = postfix(primary());
    }
    return with_filter ? filters(e) : e;
  }
  ExprP primary() {
    const Tok& t = peek();
    const size_t pos = t.pos;
    if (t.k == Tok::kStr) {
      auto e = mk(Expr::kLit, pos);
      e->lit = Value::str(t.s);
      ++t_;
      while (peek().k == Tok::kStr) { e->lit.s += peek().s; ++t_; }  // adjacent literals
      return e;
    }
    if (t.k == Tok::kInt || t.k == Tok::kFloat) {
      auto e = mk(Expr::kLit, pos);
      e->lit = t.k == Tok::kInt ? Value::integer(t.i) : Value::real(t.f);
      ++t_;
      return e;
    }
    if (t.k == Tok::kName) {
      auto e = mk(Expr::kLit, pos);
      if (t.s == "true" || t.s == "True") e->lit = Value::boolean(true);
      else if (t.s == "false" || t.s == "False") e->lit = Value::boolean(false);
      else if (t.s == "none" || t.s == "None") e->lit = Value::none();
      else { e->k = Expr::kName; e->name = t.s; }
      ++t_;
      return e;
    }
    if (is_op("(")) {
      ++t_;
      ExprP e = expr();
      if (is_op(",")) bad("unsupported: tuples");
      want_op(")");
      return e;
    }
    if (is_op("[")) {
      auto e = mk(Expr::kList, pos);
      ++t_;
      while (!is_op("]")) {
        e->args.push_back(expr());
        if (!is_op("]")) want_op(",");
      }
      ++t_;
      return sealed(e);
    }
    if (is_op("{")) {
      auto e = mk(Expr::kDict, pos);
      ++t_;
      while (!is_op("}")) {
        ExprP k = expr();
        want_op(":");
        e->args.push_back(k);
        e->args.push_back(expr());
        if (!is_op("}")) want_op(",");
      }
      ++t_;
      return sealed(e);
    }
    bad(t.k == Tok::kEnd ? "expected an expression" : "unexpected '" + t.s + "'");
  }
  void call_args(ExprP& e) {
    want_op("(");
    while (!is_op(")")) {
      if (peek().k == Tok::kName && is_op("=", 1)) {
        std::string k = want_name();
        ++t_;
        e->kwargs.emplace_back(k, expr());
      } else {
        e->args.push_back(expr());
      }
      if (!is_op(")")) want_op(",");
    }
    ++t_;
  }
  ExprP postfix(ExprP e) {
    for (;;) {
      if (is_op(".")) {
        const size_t pos = peek().pos;
        ++t_;
        auto a = mk(Expr::kAttr, pos);
        a->name = want_name();
        a->args = {e};
        if (is_op("(") && !kMethods.count(a->name))
          fail(loc_.at(pos) + ": unsupported method '" + a->name + "()'");
        e = sealed(a);
      } else if (is_op("[")) {
        const size_t pos = peek().pos;
        ++t_;
        ExprP idx[3];
        bool slice = false;
        int part = 0;
        while (!is_op("]")) {
          if (is_op(":")) { slice = true; ++part; ++t_; if (part > 2) bad("too many ':' in a slice"); continue; }
          idx[part] = expr();
        }
        ++t_;
        auto a = mk(slice ? Expr::kSlice : Expr::kIndex, pos);
        a->args = {e, idx[0], idx[1], idx[2]};
        if (!slice && !idx[0]) fail(loc_.at(pos) + ": empty subscript");
        e = sealed(a);
      } else if (is_op("(")) {
        auto c = mk(Expr::kCall, peek().pos);
        c->args.push_back(e);
        if (e->k == Expr::kName) called_.emplace_back(e->name, e->pos);
        call_args(c);
        e = sealed(c);
      } else {
        return e;
      }
    }
  }
  ExprP filters(ExprP e) {
    for (;;) {
      if (is_op("|")) {
        const size_t pos = peek().pos;
        ++t_;
        auto f = mk(Expr::kFilter, pos);
        f->name = want_name();
        if (!kFilters.count(f->name)) fail(loc_.at(pos) + ": unsupported filter '" + f->name + "'");
        f->args.push_back(e);
        if (is_op("(")) call_args(f);
        e = sealed(f);
      } else if (is_name("is")) {
        const size_t pos = peek().pos;
        ++t_;
        auto f = mk(Expr::kTest, pos);
        if (is_name("not")) { f->negate = true; ++t_; }
        f->name = want_name();
        if (!kTests.count(f->name)) fail(loc_.at(pos) + ": unsupported test '" + f->name + "'");
        f->args.push_back(e);
        // As Jinja: `is test(args)`, or one argument without parentheses (`is divisibleby 3`,
        // `is equalto 'x'`, `is sameas false`) unless the next word is else, or or and.
        if (is_op("(")) {
          call_args(f);
        } else if ((peek().k == Tok::kName && !is_name("else") && !is_name("or") && !is_name("and")) ||
                   peek().k == Tok::kStr || peek().k == Tok::kInt || peek().k == Tok::kFloat ||
                   is_op("[") || is_op("{")) {
          if (is_name("is")) bad("tests cannot be chained with 'is'");
          f->args.push_back(postfix(primary()));
        }
        e = sealed(f);
      } else {
        return e;
      }
    }
  }
};

// ---- evaluation ------------------------------------------------------------------------------

struct Break {};
struct Continue {};

// Python's integers are unbounded; here they are 64-bit, and a result outside that range is an
// error (never undefined behaviour, never a silent wrap or a trip through double).
bool int_pow(int64_t base, int64_t exp, int64_t& out) {  // exp >= 0; false on overflow
  int64_t r = 1;
  while (exp > 0) {
    if ((exp & 1) && __builtin_mul_overflow(r, base, &r)) return false;
    exp >>= 1;
    if (exp > 0 && __builtin_mul_overflow(base, base, &base)) return false;
  }
  out = r;
  return true;
}
// A float truncated toward zero, as Python's int(); false for NaN, infinities and what int64 cannot hold.
bool float_to_int(double x, int64_t& out) {
  if (!(x >= -9223372036854775808.0 && x < 9223372036854775808.0)) return false;
  out = int64_t(x);
  return true;
}

class Evaluator {
 public:
  Evaluator(const Loc& loc) : loc_(loc) {}
  std::vector<std::unordered_map<std::string, Value>> scopes;

  void run(const std::vector<NodeP>& nodes, std::string& out) {
    for (const NodeP& n : nodes) exec(*n, out);
  }

 private:
  const Loc& loc_;

  [[noreturn]] void err(size_t pos, const std::string& m) { fail(loc_.at(pos) + ": " + m); }

  Value lookup(const std::string& name) {
    for (size_t k = scopes.size(); k-- > 0;) {
      auto it = scopes[k].find(name);
      if (it != scopes[k].end()) return it->second;
    }
    if (kGlobals.count(name)) {  // defined, as transformers' globals are (`strftime_now is defined`)
      Value f;
      f.t = Value::T::kFunc;
      f.fn = [this, name](std::vector<Value>& a, std::vector<std::pair<std::string, Value>>& kw) {
        return global(name, a, kw, 0);
      };
      return f;
    }
    return Value();
  }

  // Bounds on what a template may cost: work (WorkBudget), output bytes and macro recursion.
  int macro_depth_ = 0;
  void exec(const Node& n, std::string& out) {
    StackBudget::check("the template");
    WorkBudget::at(n.pos);
    charge_work(1);
    if (out.size() > (size_t(64) << 20)) err(n.pos, "the template wrote more than 64 MiB");
    switch (n.k) {
      case Node::kText: out += n.text; return;
      case Node::kOut: out += to_str(eval(*n.e)); return;
      case Node::kIf:
        for (const auto& [c, body] : n.branches)
          if (!c || truthy(eval(*c))) { run(body, out); return; }
        return;
      case Node::kFor: {
        List items = iterate(eval(*n.e));
        if (n.cond) {  // the loop filter sees each item
          List kept;
          for (const Value& v : items) {
            charge_work(1);
            scopes.emplace_back();
            bind(n, v);
            if (truthy(eval(*n.cond))) kept.push_back(v);
            scopes.pop_back();
          }
          items = std::move(kept);
        }
        if (items.empty()) { run(n.orelse, out); return; }
        const int64_t len = int64_t(items.size());
        for (int64_t k = 0; k < len; ++k) {
          WorkBudget::at(n.pos);  // (each iteration is charged for the `loop` object it makes)
          scopes.emplace_back();
          bind(n, items[size_t(k)]);
          Value loop = Value::dict({{"index", Value::integer(k + 1)},
                                    {"index0", Value::integer(k)},
                                    {"revindex", Value::integer(len - k)},
                                    {"revindex0", Value::integer(len - k - 1)},
                                    {"first", Value::boolean(k == 0)},
                                    {"last", Value::boolean(k == len - 1)},
                                    {"length", Value::integer(len)},
                                    {"previtem", k > 0 ? items[size_t(k - 1)] : Value()},
                                    {"nextitem", k + 1 < len ? items[size_t(k + 1)] : Value()}});
          scopes.back()["loop"] = loop;
          try {
            run(n.body, out);
          } catch (const Break&) {
            scopes.pop_back();
            break;
          } catch (const Continue&) {
          }
          scopes.pop_back();
        }
        return;
      }
      case Node::kSet: assign(n, eval(*n.e)); return;
      case Node::kSetBlock: {
        std::string body;
        run(n.body, body);
        assign(n, Value::str(body));
        return;
      }
      case Node::kMacro: {
        auto m = std::make_shared<Macro>();
        m->params = n.params;
        m->body = n.body;
        Value v;
        v.t = Value::T::kMacro;
        v.m = m;
        scopes.back()[n.targets[0]] = v;
        return;
      }
      case Node::kBreak: throw Break{};
      case Node::kContinue: throw Continue{};
      case Node::kBlock: run(n.body, out); return;
    }
  }
  void bind(const Node& n, const Value& v) {
    if (n.targets.size() == 1) { scopes.back()[n.targets[0]] = v; return; }
    List parts = v.t == Value::T::kList ? *v.l : iterate(v);
    if (parts.size() != n.targets.size())
      err(n.pos, "cannot unpack " + std::to_string(parts.size()) + " values into " +
                     std::to_string(n.targets.size()) + " loop variables");
    for (size_t k = 0; k < parts.size(); ++k) scopes.back()[n.targets[k]] = parts[k];
  }
  void assign(const Node& n, Value v) {
    const std::string& t = n.targets[0];
    const size_t dot = t.find('.');
    if (dot == std::string::npos) { scopes.back()[t] = std::move(v); return; }
    Value ns = lookup(t.substr(0, dot));
    if (ns.t != Value::T::kDict || !ns.ns)
      err(n.pos, "cannot set '" + t + "': '" + t.substr(0, dot) + "' is not a namespace");
    if (reaches(v, ns.d.get())) err(n.pos, "cannot set '" + t + "': a namespace cannot contain itself");
    ns.put(t.substr(dot + 1), std::move(v));
  }

  Value call_macro(const Macro& m, std::vector<Value>& args, std::vector<std::pair<std::string, Value>>& kw, size_t pos) {
    if (macro_depth_ >= 64) err(pos, "macros nested more than 64 deep");
    ++macro_depth_;
    scopes.emplace_back();
    for (size_t k = 0; k < m.params.size(); ++k) {
      Value v;
      if (k < args.size()) v = args[k];
      else if (m.params[k].second) v = eval(*m.params[k].second);
      for (auto& [name, val] : kw)
        if (name == m.params[k].first) v = val;
      scopes.back()[m.params[k].first] = v;
    }
    std::string out;
    try {
      run(m.body, out);
    } catch (const Break&) {  // (Jinja refuses these; they must not unwind the caller's loop)
      err(pos, "'break' outside a loop (in a macro)");
    } catch (const Continue&) {
      err(pos, "'continue' outside a loop (in a macro)");
    }
    scopes.pop_back();
    --macro_depth_;
    return Value::str(out);
  }

  Value eval(const Expr& e) {
    StackBudget::check("the template");
    switch (e.k) {
      case Expr::kLit: return e.lit;
      case Expr::kName: return lookup(e.name);
      case Expr::kList: {
        List l;
        for (const ExprP& a : e.args) l.push_back(eval(*a));
        return Value::list(std::move(l));
      }
      case Expr::kDict: {
        Value d = Value::dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) d.put(to_str(eval(*e.args[k])), eval(*e.args[k + 1]));
        return d;
      }
      case Expr::kAttr: {
        Value o = eval(*e.args[0]);
        if (o.undefined()) err(e.pos, "'" + e.name + "' of an undefined value");
        if (o.t == Value::T::kDict) {
          if (const Value* v = o.get(e.name)) return *v;
        }
        if (kMethods.count(e.name) && (o.t == Value::T::kStr || o.t == Value::T::kDict || o.t == Value::T::kList))
          return bound_method(o, e.name, e.pos);
        return Value();
      }
      case Expr::kIndex: {
        Value o = eval(*e.args[0]);
        Value k = eval(*e.args[1]);
        if (o.undefined()) err(e.pos, "subscript of an undefined value");
        if (o.t == Value::T::kDict) {
          const Value* v = o.get(to_str(k));
          return v ? *v : Value();
        }
        if (o.t == Value::T::kList && k.t == Value::T::kInt) {  // (no copy: messages[i] in a loop)
          const int64_t n = int64_t(o.l->size());
          const int64_t i = k.i < 0 ? k.i + n : k.i;
          if (i < 0 || i >= n) return Value();
          return (*o.l)[size_t(i)];
        }
        if (o.t == Value::T::kStr && k.t == Value::T::kInt) {
          List items = iterate(o);
          int64_t i = k.i < 0 ? k.i + int64_t(items.size()) : k.i;
          if (i < 0 || i >= int64_t(items.size())) return Value();
          return items[size_t(i)];
        }
        return Value();
      }
      case Expr::kSlice: {
        Value o = eval(*e.args[0]);
        List items = iterate(o);  // (charged for the copy)
        const int64_t n = int64_t(items.size());
        auto opt = [&](const ExprP& x, bool& has) -> int64_t {
          has = false;
          if (!x) return 0;
          Value v = eval(*x);
          if (v.t == Value::T::kNone) return 0;
          if (v.t != Value::T::kInt) err(e.pos, "slice indices must be integers");
          has = true;
          return v.i;
        };
        bool hs, he, hst;
        int64_t start = opt(e.args[1], hs), stop = opt(e.args[2], he), step = opt(e.args[3], hst);
        if (!hst) step = 1;
        if (step == 0) err(e.pos, "slice step cannot be zero");
        auto clamp = [&](int64_t x, bool has, int64_t dflt) {
          if (!has) return dflt;
          if (x < 0) x += n;
          if (step > 0) return std::max<int64_t>(0, std::min(x, n));
          return std::max<int64_t>(-1, std::min(x, n - 1));
        };
        start = clamp(start, hs, step > 0 ? 0 : n - 1);
        stop = clamp(stop, he, step > 0 ? n : -1);
        List r;
        for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
          r.push_back(items[size_t(k)]);
          if (__builtin_add_overflow(k, step, &k)) break;  // past either end of the items
        }
        if (o.t == Value::T::kStr) {
          std::string s;
          for (const Value& c : r) s += c.s;
          return Value::str(s);
        }
        return Value::list(std::move(r));
      }
      case Expr::kCall: {
        const Expr& target = *e.args[0];
        std::vector<Value> args;
        std::vector<std::pair<std::string, Value>> kw;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        for (const auto& [name, x] : e.kwargs) kw.emplace_back(name, eval(*x));
        if (target.k == Expr::kName) {
          Value f = lookup(target.name);
          if (f.t == Value::T::kMacro) return call_macro(*f.m, args, kw, e.pos);
          if (f.t == Value::T::kFunc) return f.fn(args, kw);
          return global(target.name, args, kw, e.pos);
        }
        Value f = eval(target);
        if (f.t == Value::T::kFunc) return f.fn(args, kw);
        if (f.t == Value::T::kMacro) return call_macro(*f.m, args, kw, e.pos);
        err(e.pos, std::string("a ") + type_name(f) + " is not callable");
      }
      case Expr::kFilter: return filter(e);
      case Expr::kTest: {
        const bool r = test(e);
        return Value::boolean(e.negate ? !r : r);
      }
      case Expr::kUnary: {
        Value v = eval(*e.args[0]);
        if (!v.is_num()) err(e.pos, std::string("unary ") + e.name + " of a " + type_name(v));
        if (e.name == "+") return v;
        if (v.t == Value::T::kFloat) return Value::real(-v.f);
        int64_t r = 0;
        if (__builtin_sub_overflow(int64_t(0), int_value(v), &r)) overflow_error(e.pos, "unary -");
        return Value::integer(r);
      }
      case Expr::kNot: return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::kAnd: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case Expr::kOr: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case Expr::kTernary:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value();
      case Expr::kBinary: return binary(e);
    }
    return Value();
  }

  Value binary(const Expr& e) {
    Value a = eval(*e.args[0]), b = eval(*e.args[1]);
    const std::string& op = e.name;
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "<") return Value::boolean(less(a, b));
    if (op == ">") return Value::boolean(less(b, a));
    if (op == "<=") return Value::boolean(!less(b, a));
    if (op == ">=") return Value::boolean(!less(a, b));
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.t == Value::T::kStr) {
        if (a.t != Value::T::kStr) err(e.pos, "'in <string>' needs a string on the left");
        r = find_text(b.s, a.s, 0) != std::string::npos;
      } else if (b.t == Value::T::kDict) {
        r = b.get(to_str(a)) != nullptr;
      } else if (b.t == Value::T::kList) {
        for (const Value& x : *b.l) r = r || equal(a, x);
      } else if (!b.undefined() && b.t != Value::T::kNone) {
        err(e.pos, std::string("'in' a ") + type_name(b));
      }
      return Value::boolean(op == "in" ? r : !r);
    }
    if (op == "~") return Value::str(to_str(a) + to_str(b));
    if (op == "+") {
      if (a.t == Value::T::kStr && b.t == Value::T::kStr) return Value::str(a.s + b.s);
      if (a.t == Value::T::kList && b.t == Value::T::kList) {
        List l = *a.l;
        l.insert(l.end(), b.l->begin(), b.l->end());
        return Value::list(std::move(l));
      }
    }
    if (op == "*" && a.t == Value::T::kStr && b.t == Value::T::kInt) {
      if (a.s.empty() || b.i <= 0) return Value::str("");
      if (double(a.s.size()) * double(std::max<int64_t>(b.i, 0)) > double(64 << 20))
        err(e.pos, "a string repeated past 64 MiB");
      std::string s;
      for (int64_t k = 0; k < b.i; ++k) s += a.s;
      return Value::str(s);
    }
    if (!a.is_num() || !b.is_num())
      err(e.pos, "unsupported operand types for " + op + ": " + type_name(a) + " and " + type_name(b));
    // Integers stay exact; / and negative powers give floats, as in Python.
    if (both_ints(a, b) && op != "/" && !(op == "**" && int_value(b) < 0))
      return Value::integer(int_arith(op, int_value(a), int_value(b), e.pos));
    const double x = a.num(), y = b.num();
    if (op == "+") return Value::real(x + y);
    if (op == "-") return Value::real(x - y);
    if (op == "*") return Value::real(x * y);
    if (op == "/") {
      if (y == 0) err(e.pos, "division by zero");
      return Value::real(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) err(e.pos, "division by zero");
      const double d = std::floor(x / y);
      return op == "//" ? Value::real(d) : Value::real(x - d * y);
    }
    if (op == "**") {
      if (x == 0 && y < 0) err(e.pos, "zero to a negative power");
      return Value::real(std::pow(x, y));
    }
    err(e.pos, "unsupported operator " + op);
  }

  // p op q for + - * // % and ** (q >= 0), exact in int64; a result outside it is an error.
  int64_t int_arith(const std::string& op, int64_t p, int64_t q, size_t pos) {
    int64_t r = 0;
    bool overflow = false;
    if (op == "+") overflow = __builtin_add_overflow(p, q, &r);
    else if (op == "-") overflow = __builtin_sub_overflow(p, q, &r);
    else if (op == "*") overflow = __builtin_mul_overflow(p, q, &r);
    else if (op == "**") overflow = !int_pow(p, q, r);
    else if (op == "//" || op == "%") {
      if (q == 0) err(pos, "division by zero");
      if (q == -1) {  // p / -1 overflows for the smallest p; the remainder is 0
        overflow = op == "//" && __builtin_sub_overflow(int64_t(0), p, &r);
      } else {
        // Floored, as Python: the quotient rounds down, the remainder takes the divisor's sign.
        const int64_t m = p % q;
        const bool adjust = m != 0 && ((m < 0) != (q < 0));
        r = op == "//" ? p / q - (adjust ? 1 : 0) : m + (adjust ? q : 0);
      }
    } else {
      err(pos, "unsupported operator " + op);
    }
    if (overflow) overflow_error(pos, op);
    return r;
  }
  [[noreturn]] void overflow_error(size_t pos, const std::string& op) {
    err(pos, "integer overflow in " + op + " (integers are 64-bit here)");
  }

  // s.find(x, from), charged for the text it scans. Patterns past 16 bytes are searched with
  // Knuth-Morris-Pratt, so that no search costs more than linear time ("aaa...ab" in "aaaa..."
  // costs a naive search length x length; libstdc++'s boyer_moore_searcher spent 6 s building
  // its tables for a 200 KB pattern).
  static size_t find_text(const std::string& s, const std::string& x, size_t from) {
    if (from > s.size()) return std::string::npos;
    size_t p = std::string::npos;
    if (x.size() <= 16) {
      p = s.find(x, from);
    } else {
      std::vector<size_t> border(x.size(), 0);  // border[k]: the longest proper border of x[0..k]
      for (size_t k = 1, b = 0; k < x.size(); ++k) {
        while (b > 0 && x[k] != x[b]) b = border[b - 1];
        if (x[k] == x[b]) ++b;
        border[k] = b;
      }
      for (size_t k = from, m = 0; k < s.size(); ++k) {
        while (m > 0 && s[k] != x[m]) m = border[m - 1];
        if (s[k] == x[m] && ++m == x.size()) {
          p = k + 1 - x.size();
          break;
        }
      }
    }
    charge_work(1 + int64_t(((p == std::string::npos ? s.size() : p) - from + x.size()) >> 6));
    return p;
  }
  // r += a + b, unless that would pass 64 MiB (checked before anything is allocated).
  void append_capped(std::string& r, const std::string& a, const std::string& b, size_t pos, const char* what) {
    if (r.size() + a.size() + b.size() > (size_t(64) << 20)) err(pos, std::string(what) + ": the result would pass 64 MiB");
    charge_work(int64_t((a.size() + b.size()) >> 6));
    r += a;
    r += b;
  }
  static std::string strip_chars(const std::string& s, const std::string& chars, bool l, bool r) {
    bool strip[256] = {};  // (a table: a long chars argument costs no more per byte stripped)
    for (unsigned char c : chars) strip[c] = true;
    size_t a = 0, b = s.size();
    if (l) while (a < b && strip[static_cast<unsigned char>(s[a])]) ++a;
    if (r) while (b > a && strip[static_cast<unsigned char>(s[b - 1])]) --b;
    return s.substr(a, b - a);
  }

  Value bound_method(const Value& owner, const std::string& name, size_t pos) {
    Value f;
    f.t = Value::T::kFunc;
    // The method value holds its list or dict in its own l/d, where the cycle check and the
    // iterative release see it (`l.append(l.append)`, chains of methods in a namespace); the
    // capture only points at it (aliasing shared_ptrs that own nothing).
    f.l = owner.l;
    f.d = owner.d;
    Value o = owner;
    o.l = std::shared_ptr<List>(std::shared_ptr<List>(), owner.l.get());
    o.d = std::shared_ptr<Dict>(std::shared_ptr<Dict>(), owner.d.get());
    f.fn = [this, o, name, pos](std::vector<Value>& a, std::vector<std::pair<std::string, Value>>&) -> Value {
      auto arg_str = [&](size_t k) {
        if (k >= a.size() || a[k].t != Value::T::kStr) err(pos, name + "(): expected a string argument");
        return a[k].s;
      };
      if (o.t == Value::T::kStr) {
        const std::string& s = o.s;
        const std::string ws = " \t\n\r\f\v";
        if (name == "strip" || name == "lstrip" || name == "rstrip") {
          const std::string chars = a.empty() || a[0].t == Value::T::kNone ? ws : arg_str(0);
          return Value::str(strip_chars(s, chars, name != "rstrip", name != "lstrip"));
        }
        if (name == "upper" || name == "lower") {
          std::string r = s;
          for (char& c : r) c = char(name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
          return Value::str(r);
        }
        if (name == "title" || name == "capitalize") return title_case(s, name == "capitalize");
        if (name == "startswith") return Value::boolean(s.rfind(arg_str(0), 0) == 0);
        if (name == "endswith") {
          const std::string x = arg_str(0);
          return Value::boolean(s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0);
        }
        if (name == "replace") return Value::str(replace_all(s, arg_str(0), arg_str(1), pos));
        if (name == "find") {
          const size_t p = find_text(s, arg_str(0), 0);
          return Value::integer(p == std::string::npos ? -1 : int64_t(p));
        }
        if (name == "count") {
          const std::string x = arg_str(0);
          int64_t c = 0;
          for (size_t p = 0; !x.empty() && (p = find_text(s, x, p)) != std::string::npos; p += x.size()) ++c;
          return Value::integer(c);
        }
        if (name == "split" || name == "rsplit") {
          List parts;
          const int64_t maxsplit = a.size() > 1 && a[1].t == Value::T::kInt ? a[1].i : -1;
          if (a.empty() || a[0].t == Value::T::kNone) {
            std::istringstream in(s);
            for (std::string w; in >> w;) parts.push_back(Value::str(w));
            return Value::list(parts);
          }
          const std::string sep = arg_str(0);
          if (sep.empty()) err(pos, "split(): empty separator");
          if (name == "rsplit" && maxsplit >= 0) {  // from the right: search the reversed text
            const std::string rs(s.rbegin(), s.rend()), rsep(sep.rbegin(), sep.rend());
            std::vector<std::string> rev;
            size_t end = s.size();  // the text left is s[0, end)
            for (int64_t k = 0; k < maxsplit; ++k) {
              const size_t r = find_text(rs, rsep, s.size() - end);
              if (r == std::string::npos) break;
              const size_t p = s.size() - r - sep.size();  // where the separator starts in s
              rev.push_back(s.substr(p + sep.size(), end - p - sep.size()));
              end = p;
            }
            parts.push_back(Value::str(s.substr(0, end)));
            for (size_t k = rev.size(); k-- > 0;) parts.push_back(Value::str(rev[k]));
            return Value::list(parts);
          }
          size_t p = 0;
          int64_t n = 0;
          for (size_t q; (maxsplit < 0 || n < maxsplit) && (q = find_text(s, sep, p)) != std::string::npos; p = q + sep.size(), ++n)
            parts.push_back(Value::str(s.substr(p, q - p)));
          parts.push_back(Value::str(s.substr(p)));
          return Value::list(parts);
        }
        if (name == "splitlines") {
          List parts;
          std::istringstream in(s);
          for (std::string line; std::getline(in, line);) parts.push_back(Value::str(line));
          return Value::list(parts);
        }
        if (name == "join") {
          if (a.empty()) err(pos, "join(): expected an iterable");
          std::string r;
          List items = iterate(a[0]);
          for (size_t k = 0; k < items.size(); ++k) append_capped(r, k ? s : "", to_str(items[k]), pos, "join");
          return Value::str(r);
        }
        if (name == "isdigit" || name == "isalpha" || name == "isspace") {
          if (s.empty()) return Value::boolean(false);
          for (unsigned char c : s) {
            if (name == "isdigit" && !std::isdigit(c)) return Value::boolean(false);
            if (name == "isalpha" && !std::isalpha(c)) return Value::boolean(false);
            if (name == "isspace" && !std::isspace(c)) return Value::boolean(false);
          }
          return Value::boolean(true);
        }
      }
      if (o.t == Value::T::kDict) {
        if (name == "items") {
          List l;
          for (const auto& kv : *o.d) l.push_back(Value::list({Value::str(kv.first), kv.second}));
          return Value::list(l);
        }
        if (name == "keys" || name == "values") {
          List l;
          for (const auto& kv : *o.d) l.push_back(name == "keys" ? Value::str(kv.first) : kv.second);
          return Value::list(l);
        }
        if (name == "get") {
          if (a.empty()) err(pos, "get(): expected a key");
          const Value* v = o.get(to_str(a[0]));
          return v ? *v : (a.size() > 1 ? a[1] : Value::none());
        }
      }
      if (o.t == Value::T::kList) {
        if (name == "append") {
          if (a.size() != 1) err(pos, "append(): expected one argument");
          if (reaches(a[0], o.l.get())) err(pos, "append(): a list cannot contain itself");
          o.l->push_back(a[0]);
          return Value::none();
        }
        if (name == "count") {
          int64_t c = 0;
          for (const Value& x : *o.l) c += a.size() == 1 && equal(x, a[0]);
          return Value::integer(c);
        }
      }
      err(pos, std::string("a ") + type_name(o) + " has no method '" + name + "'");
    };
    return f;
  }

  // Each occurrence of `from` replaced (left to right, not overlapping), in one pass, with the
  // result's size known before it is made.
  std::string replace_all(const std::string& s, const std::string& from, const std::string& to, size_t pos) {
    if (from.empty()) return s;
    std::vector<size_t> at;
    for (size_t p = 0; (p = find_text(s, from, p)) != std::string::npos; p += from.size()) at.push_back(p);
    const double size = double(s.size()) + double(at.size()) * (double(to.size()) - double(from.size()));
    if (size > double(64 << 20)) err(pos, "replace: the result would pass 64 MiB");
    std::string r;
    r.reserve(size_t(size));
    size_t p = 0;
    for (size_t q : at) {
      r.append(s, p, q - p);
      r += to;
      p = q + from.size();
    }
    r.append(s, p, std::string::npos);
    return r;
  }
  static Value title_case(const std::string& s, bool first_only) {
    std::string r = s;
    bool start = true;
    for (size_t k = 0; k < r.size(); ++k) {
      unsigned char c = static_cast<unsigned char>(r[k]);
      if (first_only) {
        r[k] = char(k == 0 ? std::toupper(c) : std::tolower(c));
        continue;
      }
      if (std::isalpha(c)) {
        r[k] = char(start ? std::toupper(c) : std::tolower(c));
        start = false;
      } else {
        start = !std::isalnum(c) && c < 0x80;
      }
    }
    return Value::str(r);
  }

  Value global(const std::string& name, std::vector<Value>& a, std::vector<std::pair<std::string, Value>>& kw, size_t pos) {
    if (name == "raise_exception") fail(a.empty() ? "raise_exception()" : to_str(a[0]));
    if (name == "strftime_now") {
      if (a.empty() || a[0].t != Value::T::kStr) err(pos, "strftime_now(): expected a format string");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char b[256];
      const size_t n = std::strftime(b, sizeof b, a[0].s.c_str(), &tm);
      return Value::str(std::string(b, n));
    }
    if (name == "namespace" || name == "dict") {
      Value d = Value::dict();
      d.ns = name == "namespace";
      if (!a.empty() && a[0].t == Value::T::kDict)
        for (const auto& kv : *a[0].d) d.put(kv.first, kv.second);
      for (auto& [k, v] : kw) d.put(k, v);
      return d;
    }
    if (name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      for (const Value& v : a)
        if (v.t != Value::T::kInt) err(pos, "range(): expected integers");
      if (a.size() == 1) stop = a[0].i;
      else if (a.size() >= 2) { start = a[0].i; stop = a[1].i; if (a.size() > 2) step = a[2].i; }
      if (step == 0) err(pos, "range(): step is zero");
      // Counted (and charged) before it is made; in long double, as stop - start may overflow.
      const long double span = step > 0 ? (long double)stop - start : (long double)start - stop;
      const long double count = span <= 0 ? 0 : std::ceil(span / std::fabs((long double)step));
      if (count > 1000000) err(pos, "range(): more than a million items");
      charge_work(int64_t(count));
      List l;
      l.reserve(size_t(count));
      for (uint64_t k = 0; k < uint64_t(count); ++k)  // modulo 2^64: each item is in range, k * step may not be
        l.push_back(Value::integer(int64_t(uint64_t(start) + k * uint64_t(step))));
      return Value::list(l);
    }
    if (name == "len") {
      if (a.size() != 1) err(pos, "len(): expected one argument");
      return Value::integer(length(a[0], pos));
    }
    err(pos, "'" + name + "' is undefined");
  }

  int64_t length(const Value& v, size_t pos) {
    if (v.t == Value::T::kList) return int64_t(v.l->size());
    if (v.t == Value::T::kDict) return int64_t(v.d->size());
    if (v.t == Value::T::kStr) return int64_t(iterate(v).size());
    if (v.undefined()) return 0;
    err(pos, std::string("length of a ") + type_name(v));
  }

  bool apply_test(const std::string& name, const Value& v, const std::vector<Value>& a, size_t pos) {
    auto arg = [&]() -> const Value& {
      if (a.empty()) err(pos, "test '" + name + "' needs an argument");
      return a[0];
    };
    if (name == "defined") return !v.undefined();
    if (name == "undefined") return v.undefined();
    if (name == "none") return v.t == Value::T::kNone;
    if (name == "string") return v.t == Value::T::kStr;
    if (name == "number") return v.t == Value::T::kInt || v.t == Value::T::kFloat;
    if (name == "integer") return v.t == Value::T::kInt;
    if (name == "float") return v.t == Value::T::kFloat;
    if (name == "boolean") return v.t == Value::T::kBool;
    if (name == "true") return v.t == Value::T::kBool && v.b;
    if (name == "false") return v.t == Value::T::kBool && !v.b;
    if (name == "mapping") return v.t == Value::T::kDict;
    if (name == "sequence") return v.t == Value::T::kList || v.t == Value::T::kStr || v.t == Value::T::kDict;
    if (name == "iterable") return v.t == Value::T::kList || v.t == Value::T::kStr || v.t == Value::T::kDict;
    if (name == "callable") return v.t == Value::T::kMacro || v.t == Value::T::kFunc;
    if (name == "equalto" || name == "eq" || name == "sameas") return equal(v, arg());
    if (name == "ne") return !equal(v, arg());
    if (name == "gt") return less(arg(), v);
    if (name == "lt") return less(v, arg());
    if (name == "ge") return !less(v, arg());
    if (name == "le") return !less(arg(), v);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (v.t != Value::T::kInt) err(pos, "test '" + name + "' of a " + type_name(v));
      if (name == "divisibleby") {
        const Value& d = arg();
        if (d.t != Value::T::kInt || d.i == 0) err(pos, "divisibleby needs a non-zero integer");
        return d.i == -1 || v.i % d.i == 0;  // (the smallest integer % -1 overflows)
      }
      return (((v.i % 2) + 2) % 2 == 1) == (name == "odd");
    }
    if (name == "in") {
      const Value& c = arg();
      if (c.t == Value::T::kStr) return v.t == Value::T::kStr && find_text(c.s, v.s, 0) != std::string::npos;
      if (c.t == Value::T::kDict) return c.get(to_str(v)) != nullptr;
      for (const Value& x : iterate(c)) if (equal(v, x)) return true;
      return false;
    }
    if (name == "lower" || name == "upper") {
      if (v.t != Value::T::kStr) return false;
      for (unsigned char c : v.s)
        if (std::isalpha(c) && (name == "lower" ? std::isupper(c) : std::islower(c))) return false;
      return true;
    }
    err(pos, "unsupported test '" + name + "'");
  }
  bool test(const Expr& e) {
    Value v = eval(*e.args[0]);
    std::vector<Value> a;
    for (size_t k = 1; k < e.args.size(); ++k) a.push_back(eval(*e.args[k]));
    return apply_test(e.name, v, a, e.pos);
  }

  Value attr_path(const Value& v, const std::string& path) {
    Value cur = v;
    size_t p = 0;
    while (p <= path.size()) {
      const size_t q = path.find('.', p);
      const std::string k = path.substr(p, q == std::string::npos ? std::string::npos : q - p);
      if (cur.t != Value::T::kDict) return Value();
      const Value* x = cur.get(k);
      if (!x) return Value();
      cur = *x;
      if (q == std::string::npos) break;
      p = q + 1;
    }
    return cur;
  }

  Value filter(const Expr& e) {
    Value v = eval(*e.args[0]);
    std::vector<Value> a;
    std::vector<std::pair<std::string, Value>> kw;
    for (size_t k = 1; k < e.args.size(); ++k) a.push_back(eval(*e.args[k]));
    for (const auto& [name, x] : e.kwargs) kw.emplace_back(name, eval(*x));
    auto kwarg = [&](const char* name, size_t posn) -> const Value* {
      for (const auto& [k, x] : kw) if (k == name) return &x;
      return posn < a.size() ? &a[posn] : nullptr;
    };
    const std::string& f = e.name;
    const size_t pos = e.pos;
    if (f == "trim") {
      const Value* chars = kwarg("chars", 0);
      return Value::str(strip_chars(to_str(v), chars && chars->t == Value::T::kStr ? chars->s : " \t\n\r\f\v", true, true));
    }
    if (f == "tojson") {
      const Value* ind = kwarg("indent", 0);
      const Value* sk = kwarg("sort_keys", 99);
      std::string o;
      const int indent = ind && ind->t == Value::T::kInt ? int(std::clamp<int64_t>(ind->i, -1, 64 << 20)) : -1;
      dumps(v, indent, sk && truthy(*sk), 0, o);
      return Value::str(o);
    }
    if (f == "length" || f == "count") return Value::integer(length(v, pos));
    if (f == "upper" || f == "lower") {
      std::string r = to_str(v);
      for (char& c : r) c = char(f == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value::str(r);
    }
    if (f == "title" || f == "capitalize") return title_case(to_str(v), f == "capitalize");
    if (f == "default" || f == "d") {
      const Value* dflt = kwarg("default_value", 0);
      const Value* boolean = kwarg("boolean", 1);
      const bool use = v.undefined() || (boolean && truthy(*boolean) && !truthy(v));
      return use ? (dflt ? *dflt : Value::str("")) : v;
    }
    if (f == "join") {
      const Value* sep = kwarg("d", 0);
      const Value* attr = kwarg("attribute", 1);
      std::string r;
      List items = iterate(v);
      const std::string glue = sep ? to_str(*sep) : "";
      for (size_t k = 0; k < items.size(); ++k)
        append_capped(r, k ? glue : "", to_str(attr ? attr_path(items[k], to_str(*attr)) : items[k]), pos, "join");
      return Value::str(r);
    }
    if (f == "first" || f == "last") {
      List items = iterate(v);
      if (items.empty()) return Value();
      return f == "first" ? items.front() : items.back();
    }
    if (f == "string" || f == "safe" || f == "e" || f == "escape") {
      if (f == "e" || f == "escape") {
        std::string r;
        for (char c : to_str(v)) {
          switch (c) {
            case '&': r += "&amp;"; break;
            case '<': r += "&lt;"; break;
            case '>': r += "&gt;"; break;
            case '"': r += "&#34;"; break;
            case '\'': r += "&#39;"; break;
            default: r += c;
          }
        }
        return Value::str(r);
      }
      return Value::str(to_str(v));
    }
    if (f == "int") {
      if (v.t == Value::T::kFloat) {
        int64_t r = 0;
        if (!float_to_int(v.f, r)) err(pos, "int of " + float_str(v.f) + ": outside the 64-bit integer range");
        return Value::integer(r);
      }
      if (v.is_num()) return Value::integer(int_value(v));
      if (v.t == Value::T::kStr) {
        char* end = nullptr;
        const long long x = std::strtoll(v.s.c_str(), &end, 10);
        return Value::integer(end && *end == 0 && !v.s.empty() ? x : 0);
      }
      return Value::integer(0);
    }
    if (f == "float") {
      if (v.is_num()) return Value::real(v.num());
      if (v.t == Value::T::kStr) return Value::real(std::strtod(v.s.c_str(), nullptr));
      return Value::real(0);
    }
    if (f == "list") return Value::list(iterate(v));
    if (f == "items") {
      if (v.t != Value::T::kDict) err(pos, std::string("items of a ") + type_name(v));
      List l;
      for (const auto& kv : *v.d) l.push_back(Value::list({Value::str(kv.first), kv.second}));
      return Value::list(l);
    }
    if (f == "replace") {
      if (a.size() < 2) err(pos, "replace needs two arguments");
      return Value::str(replace_all(to_str(v), to_str(a[0]), to_str(a[1]), pos));
    }
    if (f == "reverse") {
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      if (v.t == Value::T::kStr) {
        std::string s;
        for (const Value& c : items) s += c.s;
        return Value::str(s);
      }
      return Value::list(items);
    }
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
      const bool attr = f == "selectattr" || f == "rejectattr";
      const bool keep = f == "selectattr" || f == "select";
      size_t k = 0;
      std::string path;
      if (attr) {
        if (a.empty()) err(pos, f + " needs an attribute name");
        path = to_str(a[k++]);
      }
      std::string tname = k < a.size() ? to_str(a[k++]) : "";
      std::vector<Value> targs(a.begin() + long(std::min(k, a.size())), a.end());
      if (!tname.empty() && !kTests.count(tname)) err(pos, "unsupported test '" + tname + "'");
      List out;
      for (const Value& x : iterate(v)) {
        const Value y = attr ? attr_path(x, path) : x;
        const bool r = tname.empty() ? truthy(y) : apply_test(tname, y, targs, pos);
        if (r == keep) out.push_back(x);
      }
      return Value::list(out);
    }
    if (f == "map") {
      const Value* attr = kwarg("attribute", 99);
      List out;
      for (const Value& x : iterate(v)) {
        if (attr) {
          out.push_back(attr_path(x, to_str(*attr)));
        } else {
          if (a.empty()) err(pos, "map needs attribute= or a filter name");
          const std::string fn = to_str(a[0]);
          if (fn == "string") out.push_back(Value::str(to_str(x)));
          else if (fn == "lower" || fn == "upper" || fn == "trim" || fn == "int" || fn == "length") {
            Expr sub;
            sub.k = Expr::kFilter;
            sub.name = fn;
            auto lit = std::make_shared<Expr>();
            lit->k = Expr::kLit;
            lit->lit = x;
            sub.args = {lit};
            sub.pos = pos;
            out.push_back(filter(sub));
          } else {
            err(pos, "map: unsupported filter '" + fn + "'");
          }
        }
      }
      return Value::list(out);
    }
    if (f == "attr") {
      if (a.empty()) err(pos, "attr needs a name");
      return attr_path(v, to_str(a[0]));
    }
    if (f == "unique") {
      List out;
      for (const Value& x : iterate(v)) {
        bool seen = false;
        for (const Value& y : out) seen = seen || equal(x, y);
        if (!seen) out.push_back(x);
      }
      return Value::list(out);
    }
    if (f == "abs") {
      if (!v.is_num()) err(pos, std::string("abs of a ") + type_name(v));
      if (v.t == Value::T::kFloat) return Value::real(std::fabs(v.f));
      const int64_t x = int_value(v);
      if (x == std::numeric_limits<int64_t>::min()) overflow_error(pos, "abs");
      return Value::integer(x < 0 ? -x : x);
    }
    if (f == "round") {
      const Value* prec = kwarg("precision", 0);
      const double p = std::pow(10.0, prec && prec->t == Value::T::kInt ? double(prec->i) : 0.0);
      return Value::real(std::nearbyint(v.num() * p) / p);
    }
    if (f == "indent") {
      const Value* w = kwarg("width", 0);
      const Value* first = kwarg("first", 1);
      const int64_t width = w && w->t == Value::T::kInt ? std::max<int64_t>(w->i, 0) : 4;  // as ' ' * width
      std::string s = to_str(v), r;
      if (double(width) * double(std::count(s.begin(), s.end(), '\n') + 1) > double(64 << 20))
        err(pos, "indent: the result would pass 64 MiB");
      const std::string pad(size_t(width), ' ');
      bool at_start = true, is_first = true;
      for (char c : s) {
        if (at_start && c != '\n' && (!is_first || (first && truthy(*first)))) r += pad;
        if (at_start && c != '\n') is_first = false;
        r += c;
        at_start = c == '\n';
        if (at_start) is_first = false;
      }
      return Value::str(r);
    }
    if (f == "wordcount") {
      std::istringstream in(to_str(v));
      int64_t n = 0;
      for (std::string w; in >> w;) ++n;
      return Value::integer(n);
    }
    if (f == "sum") {
      double s = 0;
      int64_t si = 0;
      bool real = false;
      for (const Value& x : iterate(v)) {
        if (!x.is_num()) err(pos, "sum of a non-number");
        real = real || x.t == Value::T::kFloat;
        s += x.num();
        if (!real && __builtin_add_overflow(si, int_value(x), &si))
          overflow_error(pos, "sum");
      }
      return real ? Value::real(s) : Value::integer(si);
    }
    if (f == "sort" || f == "min" || f == "max") {
      List items = iterate(v);
      const Value* attr = kwarg("attribute", 99);
      const Value* rev = kwarg("reverse", 0);
      auto key = [&](const Value& x) { return attr ? attr_path(x, to_str(*attr)) : x; };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) { return less(key(x), key(y)); });
      if (f == "min") return items.empty() ? Value() : items.front();
      if (f == "max") return items.empty() ? Value() : items.back();
      if (rev && truthy(*rev)) std::reverse(items.begin(), items.end());
      return Value::list(items);
    }
    if (f == "dictsort") {
      if (v.t != Value::T::kDict) err(pos, "dictsort of a non-dict");
      Dict d = *v.d;
      std::stable_sort(d.begin(), d.end(), [](auto& x, auto& y) { return x.first < y.first; });
      List l;
      for (const auto& kv : d) l.push_back(Value::list({Value::str(kv.first), kv.second}));
      return Value::list(l);
    }
    if (f == "batch") {
      if (a.empty() || a[0].t != Value::T::kInt || a[0].i <= 0) err(pos, "batch needs a positive size");
      List out, cur;
      for (const Value& x : iterate(v)) {
        cur.push_back(x);
        if (int64_t(cur.size()) == a[0].i) { out.push_back(Value::list(cur)); cur.clear(); }
      }
      if (!cur.empty()) out.push_back(Value::list(cur));
      return Value::list(out);
    }
    err(pos, "unsupported filter '" + f + "'");
  }
};

}  // namespace

struct JinjaTemplate::Impl {
  std::string source, origin;
  std::vector<NodeP> body;
};

JinjaTemplate::JinjaTemplate() = default;
JinjaTemplate::~JinjaTemplate() = default;
JinjaTemplate::JinjaTemplate(JinjaTemplate&&) noexcept = default;
JinjaTemplate& JinjaTemplate::operator=(JinjaTemplate&&) noexcept = default;

Result<JinjaTemplate> JinjaTemplate::parse(const std::string& source, const std::string& origin) {
  JinjaTemplate t;
  t.impl_ = std::make_unique<Impl>();
  t.impl_->source = source;
  t.impl_->origin = origin;
  try {
    Loc loc{&t.impl_->source, origin};
    Parser p(lex(t.impl_->source, loc), loc);
    t.impl_->body = p.parse_all();
  } catch (const Error& e) {
    return Status(StatusCode::kInvalidInput, e.msg);
  }
  return t;
}

Result<std::string> JinjaTemplate::render(const nlohmann::ordered_json& context) const {
  SHRINK_CHECK(impl_, StatusCode::kInternal, "render of an empty template");
  SHRINK_CHECK(context.is_object(), StatusCode::kInvalidInput, "the template context must be an object");
  Loc loc{&impl_->source, impl_->origin};
  StackBudget stack;
  Evaluator ev(loc);
  ev.scopes.emplace_back();
  std::string out;
  std::optional<WorkBudget> work;
  auto where = [&] { return work ? work->where() : impl_->origin; };
  try {
    int64_t units = kWorkBase;
    for (auto it = context.begin(); it != context.end(); ++it) ev.scopes.back()[it.key()] = from_json(it.value(), units);
    work.emplace(loc, units);
    ev.run(impl_->body, out);
  } catch (const Error& e) {
    return Status(StatusCode::kInvalidInput, e.msg);
  } catch (const Unplaced& e) {
    return Status(StatusCode::kInvalidInput, where() + ": " + e.msg);
  } catch (const Break&) {
    return Status(StatusCode::kInvalidInput, impl_->origin + ": 'break' outside a loop");
  } catch (const Continue&) {
    return Status(StatusCode::kInvalidInput, impl_->origin + ": 'continue' outside a loop");
  } catch (const std::exception& e) {  // a backstop: what the bounds above missed is an error, not a crash
    return Status(StatusCode::kInvalidInput, where() + ": the template failed: " + e.what());
  }
  return out;
}

namespace {

std::string special_token_text(const nlohmann::ordered_json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return "";
}

}  // namespace

Result<std::optional<ChatTemplate>> chat_template_load(const std::string& model_dir) {
  const std::string cfg_path = model_dir + "/tokenizer_config.json";
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
  if (FILE* f = std::fopen(cfg_path.c_str(), "rb")) {
    std::string text;
    char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
    SHRINK_RETURN_IF_ERROR(json_check_depth(text, cfg_path));
    try {
      cfg = nlohmann::ordered_json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      return Status(StatusCode::kInvalidInput, cfg_path + ":" + std::to_string(e.byte) + ": not valid JSON");
    } catch (const nlohmann::json::exception& e) {
      return Status(StatusCode::kInvalidInput, cfg_path + ": " + e.what());
    }
    if (!cfg.is_object()) return Status(StatusCode::kInvalidInput, cfg_path + ": expected a JSON object");
  }
  std::string source, origin;
  if (FILE* f = std::fopen(jinja_path.c_str(), "rb")) {
    char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) source.append(buf, n);
    std::fclose(f);
    origin = jinja_path;
  } else if (cfg.contains("chat_template")) {
    const auto& t = cfg["chat_template"];
    origin = cfg_path + ": chat_template";
    if (t.is_string()) {
      source = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& e : t)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
          source = e["template"].get<std::string>();
      if (source.empty())
        return Status(StatusCode::kInvalidInput, origin + ": a list without a \"default\" template");
    } else if (!t.is_null()) {
      return Status(StatusCode::kInvalidInput, origin + ": expected a string or a list of {name, template}");
    }
  }
  if (source.empty()) return std::optional<ChatTemplate>();
  ChatTemplate ct;
  SHRINK_ASSIGN_OR_RETURN(ct.tmpl, JinjaTemplate::parse(source, origin));
  ct.origin = origin;
  if (cfg.contains("bos_token")) ct.bos_token = special_token_text(cfg["bos_token"]);
  if (cfg.contains("eos_token")) ct.eos_token = special_token_text(cfg["eos_token"]);
  return std::optional<ChatTemplate>(std::move(ct));
}

Result<std::string> chat_template_render(const ChatTemplate& t, const nlohmann::ordered_json& messages,
                                         bool add_generation_prompt, const nlohmann::ordered_json& tools,
                                         const nlohmann::ordered_json& extra) {
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
  ctx["messages"] = messages;
  ctx["add_generation_prompt"] = add_generation_prompt;
  ctx["bos_token"] = t.bos_token;
  ctx["eos_token"] = t.eos_token;
  if (!tools.is_null()) ctx["tools"] = tools;
  return t.tmpl.render(ctx);
}

}  // namespace shrink::core
