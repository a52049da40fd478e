"""Lint gate throughput: batched linter processes versus one linter process per sample.

    python benchmarks/bench_lint_gate.py [--samples 2000] [--subset 200] [--per-language 200] [--reference-subset 40]

1. 2,000 generated Python samples (functions, classes, stdlib imports; about 12% broken: syntax
   errors, undefined names) through :class:`LocalGate`, then one pylint process per sample with
   the very same command line, rcfile and file preparation (``Pylint.lint`` on a one-file batch),
   in the same run. The per-process way costs about 0.4 s a sample, so it is timed on a random
   subset (``--subset``, default 200; ``--subset 0`` = all) and its throughput extrapolated;
   verdicts (pass/fail and every (rule, line)) are compared on that subset and must be identical.
   Both ways use the same parallelism (one process per core). PyLint must be at least 100 times
   faster (wall clock or CPU per sample), ESLint at least 50.
2. The same for ESLint over generated JavaScript.
3. Samples per second and linter CPU per sample through the gate for every other language it
   checks. For C++ and SQL also the gate as it was before issue 17 (plain clang-tidy, one
   ``sqlfluff lint`` process per dialect with the Python parser: ``ClangTidy(fast=False)``,
   :class:`ReferenceSQLFluff`) over the same samples, with every verdict compared, and one reference
   process per sample on a random subset (``--reference-subset``), verdicts compared too. Both
   must be identical, and the gate at least 3 times faster than before.

Exits non-zero if verdicts differ or a ratio is under its floor. Results go into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from infinisynth.verify import sandbox  # noqa: E402
from infinisynth.verify.gate import GateSettings, LocalGate  # noqa: E402
from infinisynth.verify.linters import (  # noqa: E402
    CONFIG_DIR,
    Batch,  # noqa: E402
    BatchFindings,
    ClangTidy,
    ESLint,
    Linter,
    LinterError,
    Pylint,
    Runner,
    SQLFluff,
    _json,
    _message,
)
from infinisynth.verify.model import Finding, LintItem  # noqa: E402

MIN_RATIO = {"pylint (python)": 100.0, "eslint (javascript)": 50.0}
MIN_SPEEDUP = 3.0  # C++ and SQL against the gate before issue 17
NAMES = ["values", "items", "data", "records", "numbers", "words", "rows", "entries"]


# -- sample generators (seeded, a realistic mix, some broken) -----------------------------------


Template = Callable[[str, str, int], str]  # (function name, argument name, n) -> a program
Breakage = Callable[[str, str], str]  # (program, function name) -> the program, broken

PYTHON_TEMPLATES: list[Template] = [
    lambda name, arg, n: (
        f'import math\n\n\ndef {name}({arg}):\n    """Root mean square."""\n    if not {arg}:\n        return 0.0\n'
        f"    return math.sqrt(sum(x * x for x in {arg}) / len({arg}))\n"
    ),
    lambda name, arg, n: (
        f"from collections import Counter, defaultdict\n\n\ndef {name}({arg}):\n    counts = Counter({arg})\n"
        f"    groups = defaultdict(list)\n    for key, value in counts.items():\n        groups[value].append(key)\n"
        f"    return {{k: sorted(v) for k, v in groups.items()}}\n"
    ),
    lambda name, arg, n: (
        f"from dataclasses import dataclass, field\n\n\n@dataclass\nclass Stack{n}:\n    items: list = field(default_factory=list)\n\n"
        f"    def push(self, value):\n        self.items.append(value)\n\n    def pop(self):\n        if not self.items:\n"
        f"            raise IndexError('pop from an empty stack')\n        return self.items.pop()\n\n    def __len__(self):\n        return len(self.items)\n"
    ),
    lambda name, arg, n: (
        f"import json\nimport re\n\nWORD = re.compile(r'[a-z]+')\n\n\ndef {name}(text):\n    words = WORD.findall(text.lower())\n"
        f"    return json.dumps({{'count': len(words), 'unique': len(set(words))}})\n\n\nif __name__ == '__main__':\n    print({name}('a b a'))\n"
    ),
    lambda name, arg, n: (
        f"import itertools\n\n\ndef {name}({arg}, size):\n    it = iter({arg})\n    while True:\n        chunk = list(itertools.islice(it, size))\n"
        f"        if not chunk:\n            return\n        yield chunk\n"
    ),
    lambda name, arg, n: (
        f"class Node{n}:\n    def __init__(self, value, children=None):\n        self.value = value\n        self.children = children or []\n\n"
        f"    def depth(self):\n        return 1 + max((c.depth() for c in self.children), default=0)\n\n\n"
        f"def {name}(root):\n    return root.depth() if root else 0\n"
    ),
]
PYTHON_BREAKAGES: list[Breakage] = [
    lambda code, name: code.replace("):\n", ")\n", 1),  # syntax error: a missing colon
    lambda code, name: code.rstrip("\n") + f"\n\n\nRESULT = {name}_typo(None)\n",  # undefined name: a typo in a use
    lambda code, name: code.rstrip("\n") + "\nprint((1, 2)\n",  # unbalanced bracket
]
JAVASCRIPT_TEMPLATES: list[Template] = [
    lambda name, arg, n: f"export function {name}({arg}) {{\n  return {arg}.filter((x) => x > 0).map((x) => x * 2);\n}}\n",
    lambda name, arg, n: (
        f"class Queue{n} {{\n  constructor() {{\n    this.items = [];\n  }}\n\n  push(value) {{\n    this.items.push(value);\n  }}\n\n"
        f"  shift() {{\n    if (this.items.length === 0) throw new Error('empty');\n    return this.items.shift();\n  }}\n}}\n\nmodule.exports = {{ Queue{n} }};\n"
    ),
    lambda name, arg, n: (
        f"const fs = require('fs');\n\nasync function {name}(path) {{\n  const text = await fs.promises.readFile(path, 'utf8');\n"
        f"  const counts = {{}};\n  for (const word of text.split(/\\s+/)) {{\n    counts[word] = (counts[word] || 0) + 1;\n  }}\n  return counts;\n}}\n\nmodule.exports = {{ {name} }};\n"
    ),
    lambda name, arg, n: f"const {name} = ({arg}) => {arg}.reduce((acc, x) => acc + x, 0);\nconsole.log({name}([1, 2, 3]));\n",
]
JAVASCRIPT_BREAKAGES: list[Breakage] = [
    lambda code, name: code.replace(") {", ") {{", 1) if ") {" in code else code + "}\n",  # unbalanced brace
    lambda code, name: code + f"console.log({name}Typo(1));\n",  # undefined name
    lambda code, name: code + "const x = ;\n",  # syntax error
]
BROKEN_SHARES = (0.05, 0.10, 0.12)  # cumulative: 5% broken the first way, 5% the second, 2% the third


def sample(rng: random.Random, name: str, n: int, templates: list[Template], breakages: list[Breakage]) -> str:
    """A program from one of ``templates`` with a name, an argument and maybe a breakage drawn from ``rng``."""
    arg = rng.choice(NAMES)
    code = templates[rng.randrange(len(templates))](name, arg, n)
    roll = rng.random()
    for share, breakage in zip(BROKEN_SHARES, breakages, strict=True):
        if roll < share:
            return breakage(code, name)
    return code


def python_sample(rng: random.Random, n: int) -> str:
    return sample(rng, f"process_{n}", n, PYTHON_TEMPLATES, PYTHON_BREAKAGES)


def javascript_sample(rng: random.Random, n: int) -> str:
    return sample(rng, f"process{n}", n, JAVASCRIPT_TEMPLATES, JAVASCRIPT_BREAKAGES)


OTHER_SAMPLES = {
    "typescript": lambda n, bad: (
        f"export function f{n}(xs: number[]): number {{\n  return xs.reduce((a, b) => a + b, {'missing' if bad else 0});\n}}\n"
    ),
    "java": lambda n, bad: (
        f"import java.util.*;\n\nclass Sum{n} {{\n  static int sum(List<Integer> xs) {{\n    int total = 0;\n    for (int x : xs) total += x;\n    return {'totl' if bad else 'total'};\n  }}\n}}\n"
    ),
    "c": lambda n, bad: (
        f"#include <stdio.h>\n\nint sum{n}(const int *xs, int n) {{\n  int total = 0;\n  for (int i = 0; i < n; i++) total += xs[i];\n  return {'totl' if bad else 'total'};\n}}\n"
    ),
    "cpp": lambda n, bad: (
        f"#include <vector>\n#include <numeric>\n\nint sum{n}(const std::vector<int>& xs) {{\n  return std::accumulate(xs.begin(), xs.end(), {'zero' if bad else '0'});\n}}\n"
    ),
    "sql": lambda n, bad: (
        f"SELECT customer_id, SUM(amount) AS total_{n}\nFROM orders\nWHERE amount > {n}{' AND' if bad else ''}\nGROUP BY customer_id\nHAVING SUM(amount) > 100;\n"
    ),
    "go": lambda n, bad: (
        f'package main\n\nimport "fmt"\n\nfunc sum{n}(xs []int) int {{\n\ttotal := 0\n\tfor _, x := range xs {{\n\t\ttotal += x\n\t}}\n\treturn total\n}}\n\nfunc main() {{ fmt.Println(sum{n}([]int{{1, 2}}){"" if bad else ")"} }}\n'
    ),
}


# -- the two ways -------------------------------------------------------------------------------


def verdict(passed: bool, findings) -> tuple[bool, tuple[tuple[str, int], ...]]:
    return passed, tuple(sorted((f.rule, f.line) for f in findings))


def children_cpu() -> float:
    """CPU seconds used so far by finished child processes (the linters)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def through_gate(gate: LocalGate, items: list[LintItem]) -> tuple[float, dict[str, tuple]]:
    started = time.perf_counter()
    results = await gate.check(items)
    elapsed = time.perf_counter() - started
    return elapsed, {r.id: verdict(r.passed, r.findings) for r in results}


async def one_process_per_sample(linter: Linter, items: list[LintItem], workers: int) -> tuple[float, dict[str, tuple]]:
    """``linter`` on each sample alone: its own process, same command line, same preparation."""
    slots = asyncio.Semaphore(workers)
    limits = sandbox.Limits(timeout=120, memory_bytes=2048 * 1024 * 1024, max_output=16 * 1024 * 1024)

    async def one(item: LintItem) -> tuple[str, tuple]:
        async with slots:
            with sandbox.batch_dir() as directory:
                name = f"s0_bench{linter.suffix(item.language)}"
                text = linter.prepare(str(item.code), item.language)
                (directory / name).write_text(text)
                env = sandbox.base_env(directory, **linter.env(2048))

                async def run(argv):
                    return await sandbox.run_bounded(argv, cwd=directory, env=env, limits=limits)

                found = await linter.lint(Batch(directory, item.language, [name], {name: text}), run)
        findings = found.by_file[name]
        return item.id, verdict(not findings, findings)

    started = time.perf_counter()
    results = dict(await asyncio.gather(*(one(item) for item in items)))
    return time.perf_counter() - started, results


async def compare(label: str, linter: Linter, items: list[LintItem], subset: int, workers: int, rng: random.Random) -> dict:
    gate = LocalGate(GateSettings(workers=workers))
    cpu = children_cpu()
    gate_seconds, gate_verdicts = await through_gate(gate, items)
    gate_cpu, cpu = children_cpu() - cpu, children_cpu()
    sample = rng.sample(items, subset) if 0 < subset < len(items) else items
    solo_seconds, solo_verdicts = await one_process_per_sample(linter, sample, workers)
    solo_cpu = children_cpu() - cpu
    # CPU time per sample does not depend on what else the machine runs; wall-clock time does.
    cpu_ratio = (solo_cpu / len(sample)) / (gate_cpu / len(items))
    differ = [item.id for item in sample if gate_verdicts[item.id] != solo_verdicts[item.id]]
    gate_rate = len(items) / gate_seconds
    solo_rate = len(sample) / solo_seconds
    broken = sum(not v[0] for v in gate_verdicts.values())
    report = {
        "tool": label,
        "samples": len(items),
        "broken": broken,
        "gate_seconds": round(gate_seconds, 2),
        "gate_samples_per_s": round(gate_rate, 1),
        "per_process_samples": len(sample),
        "per_process_seconds": round(solo_seconds, 2),
        "per_process_samples_per_s": round(solo_rate, 2),
        "per_process_extrapolated_seconds": round(len(items) / solo_rate, 1),
        "ratio": round(gate_rate / solo_rate, 1),
        "gate_cpu_ms_per_sample": round(1000 * gate_cpu / len(items), 1),
        "per_process_cpu_ms_per_sample": round(1000 * solo_cpu / len(sample), 1),
        "cpu_ratio": round(cpu_ratio, 1),
        "load_average": os.getloadavg()[0],
        "verdicts_compared": len(sample),
        "verdicts_differ": differ[:10],
    }
    print(
        f"{label}: {len(items)} samples ({broken} fail) through the gate in {gate_seconds:.1f} s = {gate_rate:.0f}/s; "
        f"one process per sample on {'a random subset of ' if len(sample) < len(items) else ''}{len(sample)}: "
        f"{solo_seconds:.1f} s = {solo_rate:.1f}/s (all {len(items)}: ~{len(items) / solo_rate:.0f} s, extrapolated); "
        f"ratio {gate_rate / solo_rate:.0f}x (CPU per sample: {1000 * gate_cpu / len(items):.0f} vs {1000 * solo_cpu / len(sample):.0f} ms, {cpu_ratio:.0f}x); "
        f"verdicts identical on {len(sample) - len(differ)}/{len(sample)}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return report


class ReferenceSQLFluff(SQLFluff):
    """The SQL linting of the gate before issue 17, kept as the reference: one ``sqlfluff lint``
    process per dialect (each loading SQLFluff, and its dialect for every file, again), always with
    SQLFluff's Python parser. The gate now tries every dialect in one process and parses with the
    Rust parser when ``sqlfluffrs`` is installed."""

    def __init__(self) -> None:
        text = (CONFIG_DIR / "sqlfluff.cfg").read_text()
        self._config = Path(tempfile.mkdtemp(prefix="bench-sqlfluff-")) / "sqlfluff.cfg"
        assert "use_rust_parser = auto" in text
        self._config.write_text(text.replace("use_rust_parser = auto", "use_rust_parser = False"))

    async def lint(self, batch: Batch, run: Runner) -> BatchFindings:
        first: dict[str, list[Finding]] = {}
        remaining = list(batch.names)
        for dialect in self.DIALECTS:
            found = await self._lint_dialect(remaining, dialect, run)
            first = first or found
            remaining = [name for name in remaining if found[name]]
            if not remaining:
                break
        return BatchFindings({name: first[name] if name in remaining else [] for name in batch.names})

    async def _lint_dialect(self, names: list[str], dialect: str, run: Runner) -> dict[str, list[Finding]]:
        done = await run(
            [sys.executable, "-I", "-m", "sqlfluff", "lint", "--config", str(self._config), "--ignore-local-config", "--dialect", dialect]
            + ["--format", "json", "--nocolor", "--disable-progress-bar", *names]
        )
        if done.returncode not in (0, 1):
            raise LinterError(f"sqlfluff exited with {done.returncode}: {done.stderr_tail()}")
        found = {
            Path(result["filepath"]).name: [
                Finding(self.tool, v["code"], int(v.get("start_line_no") or 0), _message(f"{dialect}: {v['description']}"))
                for v in result["violations"]
            ]
            for result in _json(done.stdout, self.tool)
        }
        return {name: found[name] for name in names}


# The gate before issue 17, for the languages it made faster: (reference linter, what changed).
BEFORE = {
    "cpp": (lambda: ClangTidy(fast=False), "plain clang-tidy: no precompiled headers, every check on every file"),
    "sql": (ReferenceSQLFluff, "one sqlfluff process per dialect, Python parser"),
}


async def gate_run(gate: LocalGate, items: list[LintItem]) -> tuple[float, float, dict[str, tuple]]:
    """Wall seconds, linter CPU seconds and verdicts of one gate call."""
    cpu = children_cpu()
    seconds, verdicts = await through_gate(gate, items)
    return seconds, children_cpu() - cpu, verdicts


async def other_languages(per_language: int, reference_subset: int, workers: int, rng: random.Random) -> list[dict]:
    rows = []
    for language, make in OTHER_SAMPLES.items():
        items = [LintItem(f"{language}-{n}", language, make(n, rng.random() < 0.12)) for n in range(per_language)]
        seconds, cpu, verdicts = await gate_run(LocalGate(GateSettings(workers=workers)), items)
        row: dict = {
            "language": language,
            "samples": len(items),
            "failed": sum(not v[0] for v in verdicts.values()),
            "seconds": round(seconds, 2),
            "samples_per_s": round(len(items) / seconds, 1),
            "cpu_ms_per_sample": round(1000 * cpu / len(items), 1),
            "load_average": os.getloadavg()[0],
        }
        line = f"{language}: {len(items)} samples in {seconds:.1f} s = {len(items) / seconds:.0f}/s, {row['cpu_ms_per_sample']:.0f} ms CPU each ({row['failed']} fail)"
        if language in BEFORE:
            make_reference, how = BEFORE[language]
            reference = make_reference()
            before_seconds, before_cpu, before = await gate_run(
                LocalGate(GateSettings(workers=workers), linters={language: [reference]}), items
            )
            sample = rng.sample(items, reference_subset) if 0 < reference_subset < len(items) else items
            _, solo = await one_process_per_sample(reference, sample, workers)
            row |= {
                "before": how,
                "before_seconds": round(before_seconds, 2),
                "before_samples_per_s": round(len(items) / before_seconds, 1),
                "before_cpu_ms_per_sample": round(1000 * before_cpu / len(items), 1),
                "speedup": round(before_seconds / seconds, 1),
                "cpu_speedup": round(before_cpu / cpu, 1),
                "verdicts_differ_from_before": [i.id for i in items if verdicts[i.id] != before[i.id]][:10],
                "per_process_compared": len(sample),
                "verdicts_differ_from_per_process": [i.id for i in sample if verdicts[i.id] != solo[i.id]][:10],
            }
            line += (
                f"; before: {before_seconds:.1f} s = {len(items) / before_seconds:.0f}/s, {row['before_cpu_ms_per_sample']:.0f} ms CPU each"
                f" -> {row['speedup']:.1f}x wall, {row['cpu_speedup']:.1f}x CPU; verdicts identical to before on "
                f"{len(items) - len(row['verdicts_differ_from_before'])}/{len(items)}, to one reference process per sample on "
                f"{len(sample) - len(row['verdicts_differ_from_per_process'])}/{len(sample)}"
            )
        rows.append(row)
        print(line, flush=True)
    return rows


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--subset", type=int, default=200, help="per-process runs timed (0 = all samples)")
    parser.add_argument("--per-language", type=int, default=200)
    parser.add_argument("--reference-subset", type=int, default=40, help="C++/SQL samples also run one reference process each")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workers = len(os.sched_getaffinity(0))
    print(f"{workers} cores; gate and per-process runs both use {workers} processes at a time", flush=True)

    python_items = [LintItem(f"py-{n}", "python", python_sample(rng, n)) for n in range(args.samples)]
    js_items = [LintItem(f"js-{n}", "javascript", javascript_sample(rng, n)) for n in range(args.samples)]
    reports = [
        await compare("pylint (python)", Pylint(), python_items, args.subset, workers, rng),
        await compare("eslint (javascript)", ESLint(), js_items, args.subset, workers, rng),
    ]
    languages = await other_languages(args.per_language, args.reference_subset, workers, rng)
    languages = [
        *(
            {
                "language": language,
                "samples": report["samples"],
                "failed": report["broken"],
                "seconds": report["gate_seconds"],
                "samples_per_s": report["gate_samples_per_s"],
            }
            for language, report in zip(("python", "javascript"), reports, strict=True)
        ),
        *languages,
    ]
    print(json.dumps({"comparisons": reports, "languages": languages}, indent=2))
    failures = [r["tool"] for r in reports if r["verdicts_differ"] or max(r["ratio"], r["cpu_ratio"]) < MIN_RATIO[r["tool"]]]
    failures += [
        r["language"]
        for r in languages
        if "before" in r
        and (r["verdicts_differ_from_before"] or r["verdicts_differ_from_per_process"] or max(r["speedup"], r["cpu_speedup"]) < MIN_SPEEDUP)
    ]
    if failures:
        print(
            f"FAILED: {failures} (verdicts must be identical; floors: {MIN_RATIO} against one process per sample, "
            f"{MIN_SPEEDUP:.0f}x for C++ and SQL against the gate before)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
