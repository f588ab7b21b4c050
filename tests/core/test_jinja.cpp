// The Jinja2 subset of chat templates: hand-derived renderings of each construct as Jinja2
// (with transformers' trim_blocks and lstrip_blocks) renders it, errors with line:column, and
// refusals that name the unsupported construct. The real templates are checked against
// @huggingface/jinja by scripts/jinja_check.mjs (ctest jinja_check).
#include <gtest/gtest.h>

#include <string>

#include "core/jinja.h"

namespace shrink::core {
namespace {

std::string render(const std::string& src, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  auto t = JinjaTemplate::parse(src, "t");
  if (!t.is_ok()) return "PARSE: " + t.status().message();
  auto r = t.value().render(ctx);
  return r.is_ok() ? r.value() : "RENDER: " + r.status().message();
}

TEST(Jinja, WhitespaceRulesOfTransformers) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
  EXPECT_EQ(render("{% if true %}\n  a\n  {% endif %}\nb"), "  a\nb");
  EXPECT_EQ(render("x  {%- if true -%}  y  {%- endif -%}  z"), "xyz");
  EXPECT_EQ(render("{{ 1 }}\n{{ 2 }}"), "1\n2");                  // not after expressions
  EXPECT_EQ(render("a\n    {%+ if true %}b{% endif %}"), "a\n    b");  // + keeps the indentation
  EXPECT_EQ(render("a {# note #}\nb"), "a b");
  EXPECT_EQ(render("{{ 'x' -}}\n\n  {{- 'y' }}"), "xy");
}

TEST(Jinja, ValuesFollowPython) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 1 / 4 }} {{ 2 ** 10 }}"),
            "7 3 -4 1 0.25 1024");
  EXPECT_EQ(render("{{ true }} {{ none }} {{ 1.0 }} {{ [1, 'a'] }} {{ {'k': 'v'} }}"),
            "True None 1.0 [1, 'a'] {'k': 'v'}");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}|{{ 'ab' * 3 }}|{{ undefined_name }}|"), "a1None|ababab||");
  EXPECT_EQ(render("{{ 'x' if 0 else 'y' }}{{ 'z' if [] }}{{ 1 == 1.0 }}{{ 'b' in 'abc' }}{{ 3 not in [1, 2] }}"),
            "yTrueTrueTrue");
  EXPECT_EQ(render("{{ 'hello'[1:4] }} {{ [1,2,3,4][::-1] }} {{ 'abc'[-1] }} {{ [1,2,3][5] }}"),
            "ell [4, 3, 2, 1] c ");
}

TEST(Jinja, StatementsLoopsAndScopes) {
  nlohmann::ordered_json ctx = {{"messages", {{{"role", "user"}, {"content", "hi"}},
                                              {{"role", "assistant"}, {"content", "yo"}}}}};
  EXPECT_EQ(render("{% for m in messages %}{{ loop.index }}/{{ loop.length }}:{{ m.role }}={{ m['content'] }}"
                   "{% if not loop.last %},{% endif %}{% endfor %}", ctx),
            "1/2:user=hi,2/2:assistant=yo");
  // set inside a loop does not leak; a namespace carries state out.
  EXPECT_EQ(render("{% set x = 1 %}{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set x = i %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ x }} {{ ns.n }}"),
            "1 3");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}"), "a1b2");
  EXPECT_EQ(render("{% for i in range(10) if i is odd %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "135");
  EXPECT_EQ(render("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% macro tag(name, v='d') %}<{{ name }}:{{ v }}>{% endmacro %}{{ tag('a') }}{{ tag('b', v=2) }}"),
            "<a:d><b:2>");
  EXPECT_EQ(render("{% set b %}inner {{ 1 }}{% endset %}[{{ b }}]"), "[inner 1]");
  EXPECT_EQ(render("{% if 0 %}a{% elif 1 %}b{% else %}c{% endif %}"), "b");
}

TEST(Jinja, FiltersTestsAndMethods) {
  EXPECT_EQ(render("{{ '  x  ' | trim }}|{{ 'ab' | upper }}|{{ [3,1,2] | sort | join(',') }}|{{ 'abc' | length }}"),
            "x|AB|1,2,3|3");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [true, none, 1.5, 'é\"']} | tojson }}"),
            R"({"b": 1, "a": [true, null, 1.5, "é\""]})");
  EXPECT_EQ(render("{{ {'a': {'b': 1}} | tojson(indent=2) }}"), "{\n  \"a\": {\n    \"b\": 1\n  }\n}");
  nlohmann::ordered_json ctx = {{"ms", {{{"role", "system"}, {"c", "s"}}, {{"role", "user"}, {"c", "u"}}}}};
  EXPECT_EQ(render("{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='c') | join }}"
                   "{{ ms | rejectattr('role', 'eq', 'user') | list | length }}", ctx),
            "u1");
  EXPECT_EQ(render("{{ x | default('d') }}{{ '' | default('e', true) }}{{ 'a,b'.split(',') }}"
                   "{{ ' y '.strip() }}{{ 'abc'.startswith('ab') }}{{ {'k': 1}.get('z', 2) }}"),
            "de['a', 'b']yTrue2");
  EXPECT_EQ(render("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 4 is divisibleby 2 }}"
                   "{{ 3 is not even }}{{ {} is mapping }}{{ strftime_now is defined }}"),
            "FalseTrueTrueTrueTrueTrueTrue");
}

TEST(Jinja, ErrorsNameTheConstructAndWhere) {
  EXPECT_EQ(render("ok\n{{ x | frobnicate }}"), "PARSE: t:2:6: unsupported filter 'frobnicate'");
  EXPECT_EQ(render("{% include 'a.html' %}"), "PARSE: t:1:4: unsupported statement 'include'");
  EXPECT_EQ(render("{{ x is prime }}"), "PARSE: t:1:6: unsupported test 'prime'");
  EXPECT_EQ(render("{{ lipsum(3) }}"),
            "PARSE: t:1:4: unsupported function 'lipsum' (not a macro of this template nor one of "
            "raise_exception, strftime_now, namespace, range, dict)");
  EXPECT_EQ(render("{{ 'a'.zfill(3) }}"), "PARSE: t:1:7: unsupported method 'zfill()'");
  EXPECT_EQ(render("{% if x %}no end"), "PARSE: t:1:1: 'if' is never closed (the template ends before 'elif or else or endif')");
  EXPECT_EQ(render("{{ 'open }}"), "PARSE: t:1:1: '{{' is never closed");
  EXPECT_EQ(render("{{ raise_exception('Only user and assistant roles') }}"),
            "RENDER: Only user and assistant roles");
  EXPECT_EQ(render("{{ x.y }}"), "RENDER: t:1:5: 'y' of an undefined value");
  EXPECT_EQ(render("{{ 1 + 'a' }}"), "RENDER: t:1:6: unsupported operand types for +: integer and string");
}

std::string repeat(const std::string& s, int n) {
  std::string o;
  for (int k = 0; k < n; ++k) o += s;
  return o;
}

// Inputs that recursed without bound (the fuzzer's stack overflows and leaks) fail with an error.
TEST(Jinja, NestingAndCyclesAreBoundedNotFatal) {
  // Expression trees: chains are as deep as they are long; 200 levels are allowed.
  EXPECT_EQ(render("{{ 1" + repeat(" + 1", 198) + " }}"), "199");
  EXPECT_EQ(render("{{ 1" + repeat(" + 1", 5000) + " }}"), "PARSE: t:1:802: expression nested more than 200 deep");
  EXPECT_EQ(render("{{ x" + repeat(".a", 5000) + " }}"), "PARSE: t:1:403: expression nested more than 200 deep");
  EXPECT_EQ(render("{{ 'a'" + repeat("|trim", 5000) + " }}"), "PARSE: t:1:1002: expression nested more than 200 deep");
  EXPECT_EQ(render("{{ " + repeat("not ", 5000) + "x }}"), "PARSE: t:1:800: nested more than 200 deep");
  EXPECT_EQ(render("{{ " + repeat("- ", 5000) + "1 }}"), "PARSE: t:1:402: nested more than 200 deep");
  EXPECT_EQ(render("{{ " + repeat("not ", 3) + "x }}"), "True");
  EXPECT_EQ(render("{{ " + repeat("- ", 3) + "1 }}"), "-1");
  // A value that refers to itself is refused where it would be made.
  EXPECT_EQ(render("{% set x = [1] %}{{ x.append(x) }}"), "RENDER: t:1:22: append(): a list cannot contain itself");
  EXPECT_EQ(render("{% set x = [] %}{% set y = [[x]] %}{{ x.append(y) }}"),
            "RENDER: t:1:40: append(): a list cannot contain itself");
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.b = [ns] %}"),
            "RENDER: t:1:30: cannot set 'ns.b': a namespace cannot contain itself");
  EXPECT_EQ(render("{% set x = [1] %}{% set y = [x, x] %}{{ y.append(x) }}{{ y }}"), "None[[1], [1], [1]]");
  // Values nested a hundred thousand deep: printing them fails, freeing them does not recurse.
  const std::string deep =
      "{% set root = [] %}{% set ns = namespace(cur=root) %}{% for i in range(100000) %}"
      "{% set n = [] %}{{ ns.cur.append(n) }}{% set ns.cur = n %}{% endfor %}";
  EXPECT_EQ(render(deep + "{{ root|length }}{{ ns.cur|length }}").substr(4 * 100000), "10");
  EXPECT_EQ(render(deep + "{{ root|tojson }}").rfind("RENDER: a value nested too deeply", 0), 0u);
  EXPECT_EQ(render(deep + "{{ root }}").rfind("RENDER: a value nested too deeply", 0), 0u);
  EXPECT_EQ(render(deep + "{{ root == root }}").rfind("RENDER: a value nested too deeply", 0), 0u);
  // Building the same nesting by rebuilding a namespace's list costs each level a walk of the
  // levels below (the cycle check): it ends at the step bound, not the stack.
  EXPECT_EQ(render("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}"),
            "RENDER: t:1:59: the template ran more than 20 million steps");
  // A context nested deeper than the stack allows.
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  nlohmann::ordered_json* inner = &ctx["deep"];
  for (int k = 0; k < 200000; ++k) {
    inner->push_back(nlohmann::ordered_json::array());
    inner = &inner->back();
  }
  EXPECT_EQ(render("{{ 1 }}", ctx).rfind("RENDER: the context nested too deeply", 0), 0u);
}

}  // namespace
}  // namespace shrink::core
