"""Test-gate throughput: small Python and JavaScript tasks run with their tests in the sandbox.

    python benchmarks/bench_sandbox.py [--samples 120] [--startup-runs 20] [--slots 0]

1. ``--samples`` small tasks per language (a function and 2-4 assertions; a quarter of them fail
   an assertion, a tenth raise) through :class:`~infinisynth.verify.execute.Sandbox` with one run
   per available core: samples per second, wall and CPU per sample, and every verdict checked
   against what the task was built to do.
2. Start-up cost per sample: ``--startup-runs`` empty samples one after another, each in its own
   sandbox, against the bare interpreter starting outside one (``python3 -I -S -c pass``,
   ``node -e 0``: our own constant commands, nothing generated runs outside the sandbox). The
   difference is what the sandbox (bubblewrap's namespaces and mounts, setpriv, prlimit, the run's
   folder, the harness) adds to every sample.
3. Batched vs one sandbox per sample: the gate runs one sandbox per sample (see docs/SANDBOX.md for
   why); the start-up figure bounds what sharing one sandbox between samples could save.

Exits non-zero if a verdict is not the one the task was built for. Results go into docs/SANDBOX.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter

from infinisynth.verify.execute import ERROR, FAILED, PASSED, ExecItem, ExecLimits, Sandbox

# Per language: the id prefix, the task's function, the tests every task has, the extra test of a
# task built to fail an assertion and of one built to raise ({n}: the task's number, {k} its factor).
TASKS = {
    "python": (
        "py",
        "def scale_{n}(values, k={k}):\n    out = []\n    for v in values:\n        out.append(v * k)\n    return out\n",
        "assert scale_{n}([1, 2]) == [{k}, {k2}]\nassert scale_{n}([]) == []\n",
        "assert scale_{n}([3]) == [{k3}], 'off by one'\n",
        "assert scale_{n}(None) == []\n",
    ),
    "javascript": (
        "js",
        "function scale{n}(values, k = {k}) {{\n  return values.map((v) => v * k);\n}}\n",
        "const assert = require('node:assert');\nassert.deepStrictEqual(scale{n}([1, 2]), [{k}, {k2}]);\n",
        "assert.deepStrictEqual(scale{n}([3]), [{k3}]);\n",
        "assert.deepStrictEqual(scale{n}(null), []);\n",
    ),
}


def task(language: str, n: int, kind: str) -> ExecItem:
    """Task ``n`` in ``language``, built to end in verdict ``kind`` (passed, failed or error)."""
    k = n % 7 + 2
    prefix, code, tests, failing, raising = (text.format(n=n, k=k, k2=2 * k, k3=3 * k + 1) for text in TASKS[language])
    tests += {FAILED: failing, ERROR: raising}.get(kind, "")
    return ExecItem(f"{prefix}-{n}", language, code, tests)


def throughput(sandbox: Sandbox, language: str, samples: int) -> dict[str, object]:
    rng = random.Random(15)
    kinds = [FAILED if r < 0.25 else ERROR if r < 0.35 else PASSED for r in (rng.random() for _ in range(samples))]
    items = [task(language, n, kind) for n, kind in enumerate(kinds)]
    started = time.perf_counter()
    results = asyncio.run(sandbox.run(items))
    wall = time.perf_counter() - started
    wrong = [(r.id, kind, r.verdict, r.detail) for r, kind in zip(results, kinds, strict=True) if r.verdict != kind]
    return {
        "language": language,
        "samples": samples,
        "wall_s": round(wall, 2),
        "samples_per_s": round(samples / wall, 2),
        "median_run_ms": round(1000 * statistics.median(r.seconds for r in results), 1),
        "verdicts": dict(Counter(r.verdict for r in results)),
        "wrong": wrong,
    }


def startup(sandbox: Sandbox, language: str, runs: int) -> dict[str, float]:
    bare_argv = ["/usr/bin/python3", "-I", "-S", "-c", "pass"] if language == "python" else ["/usr/bin/node", "-e", "0"]
    bare = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(bare_argv, check=True, env={"PATH": "/usr/bin:/bin"})
        bare.append(time.perf_counter() - started)
    empty = ExecItem("empty", language, "", "")
    sandboxed, cycles = [], []
    for _ in range(runs):
        started = time.perf_counter()
        [result] = asyncio.run(sandbox.run([empty]))
        cycles.append(time.perf_counter() - started)
        sandboxed.append(result.seconds)
        assert result.verdict == PASSED, result
    bare_ms, sandboxed_ms = 1000 * statistics.median(bare), 1000 * statistics.median(sandboxed)
    return {
        "language": language,
        "bare_interpreter_ms": round(bare_ms, 1),
        "sandboxed_empty_sample_ms": round(sandboxed_ms, 1),
        "sandbox_startup_ms": round(sandboxed_ms - bare_ms, 1),
        # the run plus waiting for the uid's processes to be reaped (overlapped with other runs in a shard)
        "with_cleanup_ms": round(1000 * statistics.median(cycles), 1),
    }


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--startup-runs", type=int, default=20)
    parser.add_argument("--slots", type=int, default=0, help="runs at once (0 = the CPUs available)")
    args = parser.parse_args(argv)
    slots = args.slots or len(os.sched_getaffinity(0))
    sandbox = Sandbox(ExecLimits(), slots=slots)
    print(f"bubblewrap {sandbox.version}, {slots} slots, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")

    runs = [throughput(sandbox, language, args.samples) for language in ("python", "javascript")]
    print(table(runs, ["language", "samples", "wall_s", "samples_per_s", "median_run_ms", "verdicts"]))
    costs = [startup(Sandbox(ExecLimits(), slots=1), language, args.startup_runs) for language in ("python", "javascript")]
    print(table(costs, ["language", "bare_interpreter_ms", "sandboxed_empty_sample_ms", "sandbox_startup_ms", "with_cleanup_ms"]))
    wrong = [w for run in runs for w in run["wrong"]]  # type: ignore[attr-defined]
    for item in wrong:
        print("WRONG VERDICT", item, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
