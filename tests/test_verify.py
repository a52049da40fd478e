"""The static verification gate with its real linters: verdicts per language, hostile input, bounds.

Every test runs the real tools (pylint, ESLint, Checkstyle, javac, clang-tidy, SQLFluff,
tree-sitter) through :class:`LocalGate`; nothing is stubbed. Items are grouped into few ``check``
calls because each call starts linter processes.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from infinisynth.verify.gate import GateSettings, LocalGate
from infinisynth.verify.linters import Checkstyle, ClangTidy, Pylint
from infinisynth.verify.model import (
    BINARY_CODE,
    CODE_TOO_LARGE,
    EMPTY_CODE,
    GATE_TOOL,
    LINT_OUTPUT_LIMIT,
    LINT_TIMEOUT,
    NESTING_TOO_DEEP,
    LinterUnavailable,
    LintItem,
)
from infinisynth.verify.responses import NO_CODE, VERDICT_FIELDS, code_blocks, verify_responses


def check(gate: LocalGate, items: list[LintItem]):
    results = asyncio.run(gate.check(items))
    assert [r.id for r in results] == [i.id for i in items]
    return {r.id: r for r in results}


@pytest.fixture(scope="module")
def gate() -> LocalGate:
    return LocalGate()


# (language, good code, bad code, tool and rule the bad code must draw)
SAMPLES = [
    (
        "python",
        "import os\n\n\ndef cwd():\n    return os.getcwd()\n",
        "def f():\n    return undefined_name\n",
        "pylint",
        "undefined-variable",
    ),
    ("python", "print([x * 2 for x in range(3)])\n", "def f(:\n    pass\n", "pylint", "syntax-error"),
    ("javascript", "const xs = [1, 2];\nconsole.log(xs.map((x) => x * 2));\n", "const a = 1;\nconsole.log(b);\n", "eslint", "no-undef"),
    ("javascript", "export function f(a) {\n  return a ?? 0;\n}\n", "function f( {\n}\n", "eslint", "parse-error"),
    (
        "jsx",
        'export const App = () => <div className="x">hi</div>;\n',
        "export const App = () => <div>hi</span>;\n",
        "eslint",
        "parse-error",
    ),
    ("typescript", "export function len(s: string): number {\n  return s.length;\n}\n", "const n: number = ;\n", "eslint", "parse-error"),
    (
        "typescript",
        "interface P { x: number }\nexport const p: P = { x: 1 };\n",
        "export const v = missingThing + 1;\n",
        "eslint",
        "no-undef",
    ),
    (
        "java",
        "import java.util.*;\npublic class Main {\n  public static void main(String[] args) {\n    List<Integer> xs = new ArrayList<>();\n    System.out.println(xs.size());\n  }\n}\n",
        'public class Main {\n  public static void main(String[] args) {\n    int x = "text";\n  }\n}\n',
        "javac",
        "compiler.err.prob.found.req",
    ),
    (
        "java",
        'class A { boolean same(String s) { return s.equals("x"); } }\n',
        'class A { boolean same(String s) { return s == "x"; } }\n',
        "checkstyle",
        "StringLiteralEquality",
    ),
    (
        "c",
        '#include <stdio.h>\nint main(void) {\n  printf("hi\\n");\n  return 0;\n}\n',
        "int main(void) {\n  return undeclared;\n}\n",
        "clang-tidy",
        "clang-diagnostic-error",
    ),
    (
        "c",
        "int half(int x) { return x / 2; }\n",
        "int f(void) {\n  int z = 0;\n  return 10 / z;\n}\n",
        "clang-tidy",
        "clang-analyzer-core.DivideZero",
    ),
    (
        "cpp",
        "#include <vector>\nint main() {\n  std::vector<int> v{1, 2};\n  return static_cast<int>(v.size());\n}\n",
        "#include <string>\nint main() {\n  std::string s = 5.5;\n}\n",
        "clang-tidy",
        "clang-diagnostic-error",
    ),
    ("sql", "SELECT a, COUNT(*) FROM t WHERE a > 1 GROUP BY a;\n", "SELEC a FROM WHERE;\n", "sqlfluff", "PRS"),
    (
        "go",
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(1) }\n',
        "package main\nfunc main() { fmt.Println(1 }\n",
        "tree-sitter",
        "missing",
    ),
    (
        "rust",
        'fn main() {\n    let v = vec![1, 2];\n    println!("{}", v.len());\n}\n',
        "fn main() {\n    let v = ;\n}\n",
        "tree-sitter",
        "syntax-error",
    ),
    ("shell", 'for f in *.txt; do\n  echo "$f"\ndone\n', "if [ -f x ]; then\n  echo yes\n", "tree-sitter", "missing"),
]


def test_every_language_passes_good_code_and_fails_bad_code_with_the_finding(gate):
    items = []
    for n, (language, good, bad, _, _) in enumerate(SAMPLES):
        items += [LintItem(f"good-{n}", language, good), LintItem(f"bad-{n}", language, bad)]
    results = check(gate, items)
    for n, (language, _, _, tool, rule) in enumerate(SAMPLES):
        good, bad = results[f"good-{n}"], results[f"bad-{n}"]
        assert good.passed, (language, good.findings)
        assert not bad.passed, language
        assert (tool, rule) in {(f.tool, f.rule) for f in bad.findings}, (language, bad.findings)
        assert all(f.line >= 1 for f in bad.findings if f.tool != GATE_TOOL), bad.findings
        # The verdict names each tool that checked the item with its version.
        assert tool in dict(bad.tools) and all(version for _, version in bad.tools)
    java_tools = dict(results["good-7"].tools)
    assert set(java_tools) == {"checkstyle", "javac"}


def test_findings_carry_the_line_and_our_names_never_the_sample_file(gate):
    results = check(gate, [LintItem("x", "python", "import os\n\n\nprint(os.getcwd())\nprint(nope)\n")])
    (finding,) = results["x"].findings
    assert (finding.tool, finding.rule, finding.line) == ("pylint", "undefined-variable", 5)
    assert "nope" in finding.message


def test_disable_comments_and_inline_config_do_not_switch_the_gate_off(gate):
    items = [
        LintItem("py-disable-all", "python", "# pylint: disable=all\nprint(undefined_a)\n"),
        LintItem("py-skip-file", "python", "# pylint: skip-file\nprint(undefined_b)\n"),
        LintItem("py-line", "python", "print(undefined_c)  # pylint: disable=undefined-variable\n"),
        LintItem("py-coding", "python", "# -*- coding: latin-1 -*-\nprint(undefined_d)\n"),
        LintItem("js-disable", "javascript", "/* eslint-disable */\nundefinedE();\n"),
        LintItem("js-line", "javascript", "undefinedF(); // eslint-disable-line\n"),
        LintItem("js-global", "javascript", "/* global undefinedG */\nundefinedG();\n"),
        LintItem("ts-disable", "typescript", "// eslint-disable-next-line no-undef\nundefinedH();\n"),
        LintItem("c-nolint", "c", "int f(void) {\n  int z = 0;\n  return 10 / z; // NOLINT\n}\n"),
        LintItem("c-pragma", "c", '#pragma clang diagnostic ignored "-Wimplicit-function-declaration"\nint main(void) { return g(); }\n'),
        LintItem("java-off", "java", '// CHECKSTYLE:OFF\n@SuppressWarnings("all")\nclass A { boolean b(String s) { return s == "x"; } }\n'),
        LintItem("sql-noqa", "sql", "SELEC a FROM t; -- noqa\n"),
        LintItem("sql-inline", "sql", "-- sqlfluff:templater:python\n-- sqlfluff:dialect:mysql\nSELEC a FROM t;\n"),
    ]
    results = check(gate, items)
    for item in items:
        assert not results[item.id].passed, (item.id, "a directive in the sample switched the gate off")


HOSTILE_CONFIGS = {
    # Each would switch a linter off (or run code) if that linter read configuration near its files.
    "pylintrc": "[MESSAGES CONTROL]\ndisable=all\n[MAIN]\nload-plugins=evil_plugin\n",
    ".pylintrc": "[MESSAGES CONTROL]\ndisable=all\n",
    "pyproject.toml": "[tool.pylint.main]\nload-plugins = ['evil_plugin']\n[tool.pylint.'messages control']\ndisable = ['all']\n",
    "setup.cfg": "[pylint.messages_control]\ndisable=all\n",
    "evil_plugin.py": "open({canary!r}, 'w').write('plugin ran')\ndef register(linter):\n    pass\n",
    "sitecustomize.py": "open({canary!r}, 'w').write('sitecustomize ran')\n",
    "eslint.config.js": "require('fs').writeFileSync({canary!r}, 'eslint config ran');\nmodule.exports = [{{ rules: {{}} }}];\n",
    "eslint.config.mjs": "import fs from 'node:fs';\nfs.writeFileSync({canary!r}, 'eslint config ran');\nexport default [];\n",
    ".eslintrc.json": '{{"root": true, "rules": {{"no-undef": "off"}}}}',
    ".sqlfluff": "[sqlfluff]\ntemplater = python\nrules = none\n[sqlfluff:templater:python:context]\nx = 1\n",
    ".clang-tidy": "Checks: '-*'\nWarningsAsErrors: ''\n",
    "compile_commands.json": "[]",
}


def test_config_files_next_to_the_samples_are_never_read(tmp_path):
    canary = tmp_path / "CANARY_config_ran"
    for name, text in HOSTILE_CONFIGS.items():
        (tmp_path / name).write_text(text.format(canary=str(canary)))
    (tmp_path / "__init__.py").write_text("")
    gate = LocalGate(GateSettings(temp_dir=str(tmp_path)))
    results = check(
        gate,
        [
            LintItem("py", "python", "print(undefined_name)\n"),
            LintItem("js", "javascript", "undefinedCall();\n"),
            LintItem("sql", "sql", "SELEC a FROM t;\n"),
            LintItem("c", "c", "int f(void) {\n  int z = 0;\n  return 10 / z;\n}\n"),
        ],
    )
    assert not any(r.passed for r in results.values()), results
    assert not canary.exists(), canary.read_text()
    # The batch folders were private and are gone.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("lint-")) == []


def test_generated_code_is_never_executed(gate, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    pwned = tmp_path / "PWNED"
    items = [
        LintItem("rmtree", "python", f"import shutil\nshutil.rmtree({str(victim)!r})\n"),
        LintItem("system", "python", f"import os\nos.system('rm -rf {victim}')\nopen({str(pwned)!r}, 'w').write('ran')\n"),
        LintItem("import-time", "python", f"import subprocess\nsubprocess.run(['rm', '-rf', {str(victim)!r}], check=False)\n"),
        LintItem(
            "js",
            "javascript",
            f"const cp = require('child_process');\ncp.execSync('rm -rf {victim}');\nrequire('fs').writeFileSync('{pwned}', 'ran');\n",
        ),
        LintItem("c", "c", f'#include <stdlib.h>\nint main(void) {{ return system("rm -rf {victim}"); }}\n'),
        LintItem(
            "java",
            "java",
            f'class A {{ static {{ try {{ Runtime.getRuntime().exec("rm -rf {victim}"); }} catch (Exception e) {{ }} }} }}\n',
        ),
        LintItem("shell", "shell", f"rm -rf {victim}\ntouch {pwned}\n"),
        LintItem("sql", "sql", "DROP TABLE users;\n"),
    ]
    results = check(gate, items)
    assert all(r.passed for r in results.values()), {k: r.findings for k, r in results.items() if not r.passed}
    assert (victim / "keep.txt").read_text() == "precious"
    assert not pwned.exists()


def test_oversized_binary_and_non_utf8_code_fail_with_the_reason_and_the_rest_still_pass(gate):
    five_mb = "x = 1\n" * (5 * 1024 * 1024 // 6 + 1)
    items = [
        LintItem("huge", "python", five_mb),
        LintItem("huge-blank", "cpp", " \n" * (200 * 1024)),  # the cap comes first, whatever the code
        LintItem("latin1", "python", "print('caf\xe9')\n".encode("latin-1")),
        LintItem("binary", "c", bytes(range(256)) * 4),
        LintItem("nul", "javascript", "const a = 1;\x00\x01\x02"),
        LintItem("surrogate", "python", "print('\ud800')\n"),
        LintItem("utf8-bytes", "python", "print('caf\xe9')\n".encode()),
        LintItem("ok", "python", "print(1)\n"),
    ]
    results = check(gate, items)
    assert [f.rule for f in results["huge"].findings] == [CODE_TOO_LARGE]
    assert results["huge-blank"].gate_reason == CODE_TOO_LARGE
    assert "bytes of code" in results["huge"].findings[0].message
    for key in ("latin1", "binary", "nul", "surrogate"):
        assert [f.rule for f in results[key].findings] == [BINARY_CODE], key
        assert results[key].gate_reason == BINARY_CODE
    assert results["utf8-bytes"].passed and results["ok"].passed


# (language, a comment-only sample, the same comment in front of code that passes)
EMPTY_SAMPLES = [
    ("python", "# TODO: write the solution\n\n   # later\n", "# solution\nprint(1)\n"),
    ("javascript", "// TODO\n/* nothing\n   here */\n", "// solution\nconsole.log(1);\n"),
    ("jsx", "/* a component, some day */", "/* a component */\nexport const A = () => <b>x</b>;\n"),
    (
        "typescript",
        "#!/usr/bin/env node\n/** Adds numbers. */\n",
        "/** Adds. */\nexport const add = (a: number, b: number): number => a + b;\n",
    ),
    ("tsx", "// nothing yet", "// a component\nexport const A = () => <i>y</i>;\n"),
    ("java", "/** The class goes here. */\n// and its tests\n", "/** A class. */\nclass A { }\n"),
    ("c", "/* main() would go here */\n", "/* main */\nint main(void) { return 0; }\n"),
    ("cpp", "// #include <vector>\n/* std::vector<int> v; */\n", "// a function\nint twice(int x) { return 2 * x; }\n"),
    ("sql", "-- SELECT * FROM users;\n/* nothing */\n", "-- the query\nSELECT 1;\n"),
    ("go", "// package main\n", "// the package\npackage main\n"),
    ("rust", "/// docs only\n// fn main() {}\n", "// the program\nfn main() {}\n"),
    ("shell", "#!/bin/sh\n# rm -rf /tmp/x\n", "# say hi\necho hi\n"),
    ("ruby", "# puts 1\n", "# print\nputs 1\n"),
    ("haskell", "-- main = print 1\n{- nothing -}\n", "-- the program\nmain = print 1\n"),
    ("lua", "-- print(1)\n", "-- print\nprint(1)\n"),
]


def test_empty_whitespace_and_comment_only_code_fails_as_empty_code_in_every_language(gate):
    items = []
    for language, comments, code in EMPTY_SAMPLES:
        items += [
            LintItem(f"{language}:empty", language, ""),
            LintItem(f"{language}:blank", language, " \n\t\r\n  \n"),
            LintItem(f"{language}:comments", language, comments),
            LintItem(f"{language}:code", language, code),
        ]
    results = check(gate, items)
    for language, _, _ in EMPTY_SAMPLES:
        for kind in ("empty", "blank", "comments"):
            result = results[f"{language}:{kind}"]
            assert not result.passed and result.gate_reason == EMPTY_CODE, (language, kind, result.findings)
            assert "no code" in result.findings[0].message
        assert results[f"{language}:code"].passed, (language, results[f"{language}:code"].findings)


def test_a_response_whose_code_is_empty_fails_as_empty_code_and_untagged_comments_are_prose(gate):
    empty_fence = "Here is the solution:\n\n```python\n```\n"
    blank_fence = "```javascript\n   \n\n```\n"
    comments_only = "```cpp\n// the solution goes here\n```\n"
    good_then_empty = "```python\nprint(1)\n```\n\nand\n\n```python\n# nothing\n```\n"
    untagged_comment = "```python\nprint(sorted([3, 1]))\n```\n\nOutput:\n\n```\n# [1, 3] (sorted)\n```\n"
    only_untagged_comment = "```\n# [1, 3] = sorted(xs)\n```\n"
    verdicts = asyncio.run(
        verify_responses(
            gate,
            [
                (empty_fence, "python"),
                (blank_fence, "javascript"),
                (comments_only, "cpp"),
                (good_then_empty, "python"),
                (untagged_comment, "python"),
                (only_untagged_comment, "python"),
            ],
        )
    )
    assert [(v.passed, v.reason) for v in verdicts[:4]] == [(False, EMPTY_CODE)] * 4
    assert verdicts[0].summary().startswith("block 0 line 0: gate empty_code: no code")
    assert [b for b, _ in verdicts[3].findings] == [1]  # the empty block is named
    assert verdicts[4].passed and verdicts[4].languages == ("python",)
    assert (verdicts[5].passed, verdicts[5].reason) == (False, NO_CODE)


def test_brackets_nested_past_clangs_limit_fail_with_that_reason_and_the_rest_get_verdicts(gate):
    deep = "int x = " + "(" * 300 + "1" + ")" * 300 + ";\n"
    deep_braces = "int main() {\n" + "{" * 400 + "}" * 400 + "\n  return 0;\n}\n"
    items = [
        LintItem("deep-c", "c", deep),
        LintItem("deep-cpp", "cpp", "#include <vector>\n" + deep_braces),
        LintItem("ok", "cpp", "#include <vector>\nint f() { return 1; }\n"),
        LintItem("bad", "cpp", "#include <vector>\nint f() { return nope; }\n"),
    ]
    results = check(gate, items)
    for key in ("deep-c", "deep-cpp"):
        (finding,) = results[key].findings
        assert (finding.tool, finding.rule) == (GATE_TOOL, NESTING_TOO_DEEP), results[key].findings
        assert "bracket nesting level exceeded maximum of 256" in finding.message and finding.line >= 1
    assert results["ok"].passed
    assert [f.rule for f in results["bad"].findings] == ["clang-diagnostic-error"]
    (verdict,) = asyncio.run(verify_responses(gate, [(f"```c\n{deep}```\n", "c")]))
    assert (verdict.passed, verdict.reason) == (False, NESTING_TOO_DEEP)


# C++ samples whose verdicts the fast path (precompiled include blocks, AST-matcher checks only
# where they can match) must not change; most share an include block, so they use its header.
CPP_EQUIVALENCE = {
    "plain": "#include <vector>\n#include <numeric>\nint f(const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), 0); }\n",
    "typo": "#include <vector>\n#include <numeric>\nint g(const std::vector<int>& v) { return std::accumulate(v.begin(), v.end(), zero); }\n",
    "comment-between": "// sums\n#include <vector>\n\n#include <numeric>  // accumulate\nint h(std::vector<int> v) { return std::accumulate(v.begin(), v.end(), 0); }\n",
    "missing-include": "#include <vector>\n#include <numeric>\nstd::map<int, int> m;\n",
    "later-include": "#include <vector>\n#include <numeric>\n#include <map>\nstd::map<int, int> m;\nint k() { return static_cast<int>(m.size()); }\n",
    "macro-first": "#define _GLIBCXX_DEBUG 1\n#include <vector>\n#include <numeric>\nint f() { std::vector<int> v; return v[0]; }\n",
    "use-after-move": "#include <vector>\n#include <numeric>\n#include <utility>\nint m() { std::vector<int> a{1}; auto b = std::move(a); return static_cast<int>(a.size() + b.size()); }\n",
    "pasted-move": "#include <vector>\n#include <numeric>\n#define CAT(a, b) a##b\nint p() { std::vector<int> a{1}; auto b = std::CAT(mo, ve)(a); return static_cast<int>(a.size() + b.size()); }\n",
    "spliced-move": "#include <vector>\n#include <numeric>\n#include <utility>\nint s() { std::vector<int> a{1}; auto b = std::mo\\\nve(a); return static_cast<int>(a.size() + b.size()); }\n",
    "dangling": '#include <vector>\n#include <numeric>\n#include <string>\n#include <string_view>\nstd::string_view d() { std::string s = "x"; return s; }\n',
    "memset": "#include <vector>\n#include <numeric>\n#include <cstring>\n#include <string>\nvoid z(std::string& s) { std::memset(&s, 0, sizeof s); }\n",
    "undelegated": "#include <vector>\n#include <numeric>\nstruct A { A(int) {} A() { A(1); } };\n",
    "null-deref": "#include <vector>\n#include <numeric>\nint n() { int* p = nullptr; return *p; }\n",
    "no-such-header": "#include <vector>\n#include <no_such_header_anywhere.h>\nint q() { return 0; }\n",
    "no-such-header-2": "#include <vector>\n#include <no_such_header_anywhere.h>\nint r() { return 1; }\n",
    "assert-twice": "#include <cassert>\n#include <vector>\n#define NDEBUG\n#include <cassert>\nint t() { assert(false); return 0; }\n",
    "assert-twice-2": "#include <cassert>\n#include <vector>\nint u() { assert(1 + 1 == 2); return 0; }\n",
    "no-includes": "int w() { return 1 / 0; }\n",
}


def test_the_fast_cpp_path_gives_the_verdicts_of_plain_clang_tidy():
    fast, plain = ClangTidy(), ClangTidy(fast=False)
    items = [LintItem(name, "cpp", code) for name, code in CPP_EQUIVALENCE.items()]
    fast_results = check(LocalGate(GateSettings(workers=2), linters={"cpp": [fast]}), items)
    plain_results = check(LocalGate(GateSettings(workers=2), linters={"cpp": [plain]}), items)
    for name in CPP_EQUIVALENCE:
        assert fast_results[name] == plain_results[name], (name, fast_results[name].findings, plain_results[name].findings)
    # The cases above exercise what they are meant to: shared headers were precompiled, a header
    # that does not exist was not, and the bug checks still fire.
    assert any(path is not None for path in fast._pch.values()) and None in fast._pch.values()
    for name in ("use-after-move", "pasted-move", "spliced-move", "memset", "undelegated"):
        assert fast_results[name].findings[0].rule.startswith("bugprone-"), (name, fast_results[name].findings)
    assert not fast_results["missing-include"].passed and fast_results["later-include"].passed


def test_sql_passes_in_any_of_its_dialects_and_reports_ansi_when_none_parses(gate):
    items = [
        LintItem("ansi", "sql", "SELECT a, b FROM t WHERE a IN (1, 2) ORDER BY b;\n"),
        LintItem("tsql", "sql", "SELECT TOP 5 name FROM users ORDER BY name;\n"),
        LintItem("mysql", "sql", "SELECT `name` FROM `users` LIMIT 1;\n"),
        LintItem("postgres", "sql", "SELECT '1'::int AS one;\n"),
        LintItem("bigquery", "sql", "SELECT * FROM `project.dataset.table` WHERE _PARTITIONTIME IS NOT NULL;\n"),
        LintItem("broken", "sql", "SELECT a FROM t WHERE a > 1 AND\nGROUP BY a;\n"),
        LintItem("broken-2", "sql", "INSERT INTO VALUES (1);\n"),
    ]
    results = check(gate, items)
    for key in ("ansi", "tsql", "mysql", "postgres", "bigquery"):
        assert results[key].passed, (key, results[key].findings)
    for key in ("broken", "broken-2"):
        assert not results[key].passed
        assert all(f.tool == "sqlfluff" and f.message.startswith("ansi: ") for f in results[key].findings), results[key].findings


def test_a_5_mb_response_is_rejected_as_too_large_without_losing_the_others(gate):
    huge = "```python\n" + "x = 1\n" * (5 * 1024 * 1024 // 6) + "```\n"
    verdicts = asyncio.run(verify_responses(gate, [(huge, "python"), ("```python\nprint(1)\n```\n", "python")]))
    assert (verdicts[0].passed, verdicts[0].reason) == (False, CODE_TOO_LARGE)
    assert verdicts[1].passed


def test_a_fence_claiming_the_wrong_language_fails(gate):
    python_as_js = "```javascript\ndef add(a, b):\n    return a + b\n```\n"
    js_as_python = "```python\nconst add = (a, b) => a + b;\n```\n"
    verdicts = asyncio.run(verify_responses(gate, [(python_as_js, "javascript"), (js_as_python, "python")]))
    assert [v.reason for v in verdicts] == ["lint_error", "lint_error"]
    assert verdicts[0].findings[0][1].tool == "eslint" and verdicts[0].languages == ("javascript",)
    assert verdicts[1].findings[0][1].rule == "syntax-error" and verdicts[1].languages == ("python",)


def test_path_tricks_never_become_file_names_or_leak_host_files(gate, tmp_path):
    items = [
        LintItem("../../../../tmp/evil.py", "python", "print(1)\n"),
        LintItem("/etc/passwd", "javascript", "console.log(1);\n"),
        LintItem("inc-rel", "c", '#include "../../../../../../etc/passwd"\nint main(void) { return 0; }\n'),
        LintItem("inc-abs", "cpp", "#include </etc/passwd>\nint main() { return 0; }\n"),
        LintItem("inc-digraph", "c", '%:include "/etc/passwd"\nint main(void) { return 0; }\n'),
        LintItem("inc-macro", "c", '#define P "/etc/passwd"\n#include P\nint main(void) { return 0; }\n'),
        LintItem("embed", "c", 'const char d[] = {\n#embed "/etc/shadow"\n};\n'),
        LintItem("java-pkg", "java", "package etc.passwd;\npublic class Evil { }\n"),
    ]
    results = check(gate, items)
    assert results["../../../../tmp/evil.py"].passed and results["/etc/passwd"].passed
    for key in ("inc-rel", "inc-abs", "inc-digraph", "inc-macro", "embed"):
        messages = " ".join(f.message for f in results[key].findings)
        assert not results[key].passed and "root:" not in messages, (key, messages)
        # clang 14 does not know #embed at all; every include is pointed at a header that is not there.
        assert key == "embed" or "gate-blocked-include.h" in messages, (key, messages)
    assert results["java-pkg"].passed
    assert not Path("/tmp/evil.py").exists()

    # Fence info strings are read as a language word, never as a path.
    responses = [
        ("```../../../tmp/evil_fence.py\nprint(1)\n```\n", "python"),
        ('```python title="../../x.py" file=/etc/passwd\nprint(undefined)\n```\n', "python"),
    ]
    blocks = code_blocks(responses[1][0])
    assert blocks[0][0] == "python"
    verdicts = asyncio.run(verify_responses(gate, responses, temp_dir=str(tmp_path)))
    assert verdicts[0].passed and verdicts[0].languages == ("python",)  # detected from the code
    assert verdicts[1].reason == "lint_error"
    assert not Path("/tmp/evil_fence.py").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_flooding_sample_fails_alone_and_the_rest_of_the_batch_gets_verdicts():
    # 4,000 undefined names: pylint writes about a megabyte of findings for this one file.
    flood = "\n".join(f"print(undefined_{i})" for i in range(4000)) + "\n"
    gate = LocalGate(GateSettings(workers=1, max_output_bytes=32 * 1024, max_output_per_file=8 * 1024))
    items = [
        LintItem("a", "python", "print(1)\n"),
        LintItem("flood", "python", flood),
        LintItem("b", "python", "print(nope)\n"),
        LintItem("c", "python", "x = 2\n"),
    ]
    results = check(gate, items)
    assert results["flood"].gate_reason == LINT_OUTPUT_LIMIT and not results["flood"].passed
    assert "pylint" in results["flood"].findings[0].message
    assert results["a"].passed and results["c"].passed
    assert [f.rule for f in results["b"].findings] == ["undefined-variable"]


def test_a_hanging_sample_times_out_alone_and_the_rest_of_the_batch_gets_verdicts():
    # A 1 KB preprocessor bomb: 2^32 macro expansions, minutes of work for clang.
    bomb = "#define X\n#define A0 X X\n" + "".join(f"#define A{i} A{i - 1} A{i - 1}\n" for i in range(1, 32)) + "int y = 0 A31;\n"
    gate = LocalGate(GateSettings(workers=2, timeout_scale=0.4))
    items = [
        LintItem("ok", "c", "int main(void) { return 0; }\n"),
        LintItem("bomb", "c", bomb),
        LintItem("bad", "c", "int main(void) { return missing; }\n"),
    ]
    results = check(gate, items)
    assert results["bomb"].gate_reason == LINT_TIMEOUT and "no answer within" in results["bomb"].findings[0].message
    assert results["ok"].passed
    assert [f.rule for f in results["bad"].findings] == ["clang-diagnostic-error"]


def test_equal_samples_share_one_verdict_and_the_order_is_kept(gate):
    items = [LintItem(str(n), "python", "print(undefined_x)\n" if n % 2 else "print(1)\n") for n in range(6)]
    results = asyncio.run(gate.check(items))
    assert [r.passed for r in results] == [True, False] * 3
    assert len({r.findings for r in results if not r.passed}) == 1


def test_unknown_language_is_a_clear_error(gate):
    with pytest.raises(ValueError, match="no checker for language 'klingon'"):
        asyncio.run(gate.check([LintItem("x", "klingon", "qapla'")]))


def test_a_missing_linter_is_a_setup_error_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java, checkstyle or clang-tidy
    with pytest.raises(LinterUnavailable, match="apt-get install checkstyle"):
        _ = Checkstyle().version
    with pytest.raises(LinterUnavailable, match="apt-get install clang-tidy"):
        _ = ClangTidy().version
    gate = LocalGate(linters={"java": [Checkstyle()]})
    with pytest.raises(LinterUnavailable, match="make setup"):
        asyncio.run(gate.check([LintItem("x", "java", "class A {}")]))


def test_the_fingerprint_changes_with_the_limits_and_names_the_tools():
    assert LocalGate().fingerprint() == LocalGate().fingerprint()
    assert LocalGate(GateSettings(max_code_bytes=1000)).fingerprint() != LocalGate().fingerprint()
    assert "astroid" in Pylint().version


# -- whole responses ----------------------------------------------------------------------------


def test_a_response_passes_only_if_every_block_passes(gate):
    two_good = (
        "Here:\n\n```python\ndef f(x):\n    return x + 1\n```\n\na usage example\n\n```python\nimport math\nprint(math.sqrt(4))\n```\n"
    )
    one_bad = "```python\ndef f(x):\n    return x + 1\n```\n\n```js\nconsole.log(missingName);\n```\n"
    output_blocks = "```python\nprint(2 + 2)\n```\n\nOutput:\n\n```\n4\n```\n\n```text\nwhatever ( { [\n```\n"
    verdicts = asyncio.run(verify_responses(gate, [(two_good, "python"), (one_bad, "python"), (output_blocks, "python")]))
    assert verdicts[0].passed and verdicts[0].languages == ("python", "python") and verdicts[0].reason == "ok"
    assert not verdicts[1].passed and verdicts[1].reason == "lint_error"
    assert verdicts[1].languages == ("python", "javascript")
    ((block, finding),) = verdicts[1].findings
    assert (block, finding.tool, finding.rule, finding.line) == (1, "eslint", "no-undef", 1)
    assert "block 1 line 1: eslint no-undef" in verdicts[1].summary()
    assert verdicts[2].passed and verdicts[2].languages == ("python",)


def test_a_block_may_use_names_an_earlier_block_of_the_response_defines(gate):
    solution_then_usage = "```python\ndef total(xs):\n    return sum(xs)\n```\n\nUsage:\n\n```python\nprint(total([1, 2]))\n```\n"
    usage_with_a_typo = "```python\ndef total(xs):\n    return sum(xs)\n```\n\n```python\nprint(totl([1, 2]))\nprint(total([3]))\n```\n"
    usage_first = "```python\nprint(total([1, 2]))\n```\n\n```python\ndef total(xs):\n    return sum(xs)\n```\n"
    javascript = "```js\nfunction total(xs) {\n  return xs.reduce((a, b) => a + b, 0);\n}\n```\n\n```js\nconsole.log(total([1]));\n```\n"
    other_language = "```js\nfunction total(xs) { return xs.length; }\n```\n\n```python\nprint(total([1]))\n```\n"
    verdicts = asyncio.run(
        verify_responses(
            gate,
            [
                (solution_then_usage, "python"),
                (usage_with_a_typo, "python"),
                (usage_first, "python"),
                (javascript, "javascript"),
                (other_language, "python"),
            ],
        )
    )
    assert verdicts[0].passed and verdicts[3].passed
    ((block, finding),) = verdicts[1].findings
    assert (block, finding.rule, finding.line, finding.message) == (1, "undefined-variable", 1, "Undefined variable 'totl'")
    assert not verdicts[2].passed  # only earlier blocks count: that is the order a reader runs them in
    assert not verdicts[4].passed  # and only blocks of the same language


def test_a_response_without_code_is_rejected_as_no_code(gate):
    prose = "You could loop over the list and add the numbers up; that is all there is to it."
    only_output = "```text\n4\n```\n"
    verdicts = asyncio.run(verify_responses(gate, [(prose, "python"), (only_output, "python"), ("", "python")]))
    assert [(v.passed, v.reason) for v in verdicts] == [(False, NO_CODE)] * 3
    assert verdicts[0].summary() == "the response contains no code block"


def test_untagged_blocks_get_their_language_from_the_code(gate):
    python = "```\nimport sys\n\ndef main(argv):\n    return len(argv)\n\nprint(main(sys.argv))\n```\n"
    java = "    public class A {\n        int f() { return 1; }\n    }\n"  # an indented block
    broken_go = "```\npackage main\nfunc main() { fmt.Println(1 }\n```\n"
    verdicts = asyncio.run(verify_responses(gate, [(python, None), (java, "java"), (broken_go, "go")]))
    assert verdicts[0].passed and verdicts[0].languages == ("python",)
    assert verdicts[1].passed and verdicts[1].languages == ("java",)
    # Nothing parses the broken Go cleanly: it is not taken for code, so the row has none.
    assert verdicts[2].reason == NO_CODE


def test_verdict_columns_round_trip_through_parquet(gate, tmp_path):
    import pyarrow.parquet as pq

    verdicts = asyncio.run(verify_responses(gate, [("```python\nprint(nope)\n```\n", "python"), ("```python\nprint(1)\n```\n", "python")]))
    schema = pa.schema(VERDICT_FIELDS)
    pq.write_table(pa.Table.from_pylist([v.columns() for v in verdicts], schema=schema), tmp_path / "v.parquet")
    rows = pq.read_table(tmp_path / "v.parquet").to_pylist()
    assert rows[0]["lint_passed"] is False and rows[0]["lint_reason"] == "lint_error"
    assert rows[0]["lint_findings"][0] | {"message": ""} == {
        "block": 0,
        "tool": "pylint",
        "rule": "undefined-variable",
        "line": 1,
        "message": "",
    }
    assert rows[1]["lint_passed"] is True and rows[1]["lint_findings"] == []
    assert {t["tool"] for t in rows[1]["lint_tools"]} == {"pylint"} and json.dumps(rows[1]["lint_tools"])
    assert os.path.getsize(tmp_path / "v.parquet") > 0


# -- the pipeline stage ---------------------------------------------------------------------------


def test_the_verify_stage_passes_rejects_and_counts_per_language(gate, tmp_path):
    from infinisynth.runner import Passed, Rejected
    from infinisynth.settings import store_for
    from infinisynth.shards import run_batch_shard
    from infinisynth.stages.verify import VERIFIED_SCHEMA, StaticVerification, discard_rates

    def row(n: int, lang: str, response: str) -> dict:
        return {
            "id": f"r{n}",
            "parent_ids": [],
            "origin": "reverse",
            "lang": lang,
            "problem": "p",
            "response": response,
            "provenance": "{}",
        }

    rows = [
        row(0, "python", "```python\nprint(1)\n```"),
        row(1, "python", "```python\nprint(nope)\n```"),
        row(2, "javascript", "Just call it."),
        row(3, "javascript", "```js\nconsole.log([1].map((x) => x + 1));\n```"),
    ]
    outcomes = asyncio.run(StaticVerification(gate).process_batch(rows))
    assert [type(o) for o in outcomes] == [Passed, Rejected, Rejected, Passed]
    assert (outcomes[1].reason, outcomes[2].reason) == ("lint_error", "no_code")
    assert outcomes[1].evidence["lint_findings"][0]["rule"] == "undefined-variable"
    kept = outcomes[0].rows[0]
    assert kept["lint_passed"] and kept["lint_tools"][0]["tool"] == "pylint"
    assert json.loads(kept["provenance"])["verify"]["gate"] == gate.fingerprint()

    # A shard written like any stage's, with per-language counts for the funnel.
    store = store_for(f"file://{tmp_path}")
    result = run_batch_shard(store, "test", "2026-01-01", 0, rows, StaticVerification(gate)).to_dict()
    assert (result["rows_in"], result["output"]["rows"], result["rejected"]["rows"]) == (4, 2, 2)
    assert result["rejected_by_reason"] == {"lint_error": 1, "no_code": 1}
    assert discard_rates([result, result]) == {
        "javascript": {"in": 4, "failed": 2, "rate": 0.5},
        "python": {"in": 4, "failed": 2, "rate": 0.5},
    }

    # Switched off: every row passes, marked as not checked.
    unchecked = asyncio.run(StaticVerification(gate, enabled=False).process_batch(rows))
    assert all(isinstance(o, Passed) and o.rows[0]["lint_passed"] is None and o.rows[0]["lint_reason"] == "not_checked" for o in unchecked)
    pa.Table.from_pylist([o.rows[0] for o in unchecked], schema=VERIFIED_SCHEMA)  # the schema holds them


def test_the_verify_stage_rejects_empty_code_with_its_reason(gate):
    from infinisynth.runner import Passed, Rejected
    from infinisynth.stages.verify import StaticVerification

    answers = {
        "python": "```python\n# def solve(): ...\n```",
        "javascript": "```js\n```",
        "java": "```java\n   \n```",
        "sql": "```sql\n-- SELECT 1;\n```",
        "go": "```go\n// package main\n```",
        "jsx": "```jsx\n/* <App /> */\n```",
        "typescript": "```ts\n// export const x: number = 1;\n```",
        "tsx": "```tsx\n\n```",
        "c": "```c\n/* int main(void) { return 0; } */\n```",
        "rust": "```rust\n// fn main() {}\n```",
        "cpp": "```cpp\nint main() { return 0; }\n```",
    }
    rows = [
        {"id": f"r{n}", "parent_ids": [], "origin": "reverse", "lang": lang, "problem": "p", "response": answer, "provenance": "{}"}
        for n, (lang, answer) in enumerate(answers.items())
    ]
    outcomes = asyncio.run(StaticVerification(gate).process_batch(rows))
    assert [type(o) for o in outcomes] == [Rejected] * (len(answers) - 1) + [Passed]
    for outcome in outcomes[:-1]:
        assert isinstance(outcome, Rejected) and outcome.reason == EMPTY_CODE
        assert outcome.evidence["lint_findings"][0]["rule"] == EMPTY_CODE
