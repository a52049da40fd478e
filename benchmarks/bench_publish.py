"""Memory and time of the code pipeline's publish step as its task runs it, by night size.

    python benchmarks/bench_publish.py [--rows 2000 10000 50000] [--before-src DIR]

For each size one process commits a synthetic answered partition to a local store, as the test
gate's mapped tasks do (shards of 50 rows; problems of 200-800 bytes, code responses of 1-4 KB,
judge scores around the thresholds so that every split has rows), with the partitions the step
reads beside it (the lint gate's manifest, the judges' complexity and their rejected rows). A
fresh process then runs the step through ``run_global_step``, the publish task's own call, and
reports its wall and CPU time and its peak RSS and RssAnon above what the process held before
the step, plus a digest of the rows it committed (dataset, holdout, below_threshold).

``--before-src DIR`` also runs the step from another copy of the library (``git archive HEAD
src | tar -x -C DIR``, then ``--before-src DIR/src``) on a copy of the same input, and says
whether both committed the same rows in the same order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

DS = "2026-03-01"
SHARD_ROWS = 50
STAGES = ("dataset", "holdout", "below_threshold")
SETTINGS = {"quality_threshold": 6.0, "answer_threshold": 5.0, "holdout_fraction": 0.05, "shard_size": SHARD_ROWS}
WORDS = "items values total index result buffer count offset matrix node queue cache lines tokens".split()


def code_response(rng: Any, size: int) -> str:
    """A fenced code answer of about ``size`` bytes: a function of assignments, calls and loops."""
    lines = [f"def {rng.choice(WORDS)}_{rng.integers(10**6)}({rng.choice(WORDS)}, {rng.choice(WORDS)}):"]
    while sum(len(line) + 1 for line in lines) < size:
        a, b, c = rng.choice(WORDS, 3)
        lines.append(
            rng.choice(
                [
                    f"    {a} = {b}.get({c!r}, {rng.integers(1000)})",
                    f"    for {a} in range(len({b})):",
                    f"        {c}[{a}] += {b}[{a}] * {rng.random():.4f}",
                    f"    if {a} > {rng.integers(100)}:",
                    f"        return {b}[{rng.integers(50)}:{c}]",
                ]
            )
        )
    return "Here is an implementation.\n\n```python\n" + "\n".join(lines) + "\n```\n"


def prepare(root: str, rows: int) -> None:
    """Commit the answered partition and what the step reads beside it."""
    import numpy as np
    import pyarrow as pa

    from infinisynth.quality_dimensions import DIMENSIONS
    from infinisynth.records import REJECTED_SCHEMA, canonical_json
    from infinisynth.stages.execute import EXECUTED_SCHEMA
    from infinisynth.storage import Store

    rng = np.random.default_rng(rows)
    store = Store(f"file://{root}")

    def funnel(stage: str, n: int) -> dict[str, Any]:
        return {"funnel": {"stage": stage, "rows_in": n, "inputs_passed": n, "rows_out": n, "rejected": 0}}

    answered = store.partition("code_instruct", "execute", DS)
    files, origins, complexity = [], [], []
    for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
        batch = []
        for i in range(start, min(start + SHARD_ROWS, rows)):
            mean = round(float(rng.uniform(5.0, 9.5)), 3)
            origin = str(rng.choice(["reverse", "backfeed"]))
            origins.append(origin)
            complexity.append(float(rng.uniform(2, 9)))
            problem = " ".join(rng.choice(WORDS, int(rng.integers(30, 120))))
            batch.append(
                {
                    "id": f"{i:016x}",
                    "parent_ids": [f"{i // 2:016x}"],
                    "origin": origin,
                    "lang": "python",
                    "problem": f"Write a function that {problem}.",
                    "seed": None,
                    "combination": {"task": "t", "instruction": "i", "knowledge": "k"} if origin == "backfeed" else None,
                    "variant": 0,
                    "provenance": canonical_json({"model": "m", "prompt": "p"}),
                    "quality_scores": {d: mean for d in DIMENSIONS},
                    "quality_mean": mean,
                    "complexity": complexity[-1],
                    "quality_samples": 3,
                    "response": code_response(rng, int(rng.integers(1024, 4096))),
                    "lint_passed": True,
                    "lint_reason": "ok",
                    "lint_languages": ["python"],
                    "lint_tools": [],
                    "lint_findings": [],
                    "tests": None,
                    "test_verdict": None,
                    "test_detail": None,
                    "test_seconds": None,
                }
            )
        files.append(answered.write_table(shard, pa.Table.from_pylist(batch, schema=EXECUTED_SCHEMA), EXECUTED_SCHEMA))
    answered.commit(files, EXECUTED_SCHEMA, funnel("execute", rows))
    verified = {**funnel("verify", rows), "discard_by_language": {"python": {"in": rows, "failed": 0, "rate": 0.0}}}
    store.partition("code_instruct", "verify", DS).write_and_commit(pa.table({"id": pa.array([], pa.string())}), meta=verified)
    scored = pa.table({"id": [f"{i:016x}" for i in range(rows)], "origin": origins, "complexity": complexity})
    store.partition("code_instruct", "quality", DS).write_and_commit(scored, meta=funnel("quality", rows))
    low = [
        {
            "id": f"r{i}",
            "stage": "quality",
            "reason": "low_quality",
            "evidence_json": canonical_json({"origin": "backfeed", "complexity": 4.0}),
        }
        for i in range(rows // 4)
    ]
    store.rejected("code_instruct", "quality", DS).write_and_commit(
        pa.Table.from_pylist(low, schema=REJECTED_SCHEMA), schema=REJECTED_SCHEMA
    )


def measure(root: str) -> dict[str, Any]:
    """Run the publish step as its task does; its cost, then a digest of what it committed."""
    import gc

    import pyarrow as pa
    from _memory import Peak  # benchmarks/_memory.py

    import infinisynth
    from infinisynth.pipelines.code_instruct import SPEC, CodeInstructSettings
    from infinisynth.steps import RunContext, run_global_step
    from infinisynth.storage import Store

    ctx = RunContext(SPEC, Store(f"file://{root}"), DS, CodeInstructSettings(**SETTINGS))
    gc.collect()
    pa.default_memory_pool().release_unused()
    with Peak().measure() as cost:
        run_global_step(ctx, "dataset")
    digests = {}
    for stage in STAGES:
        digest, rows = hashlib.sha256(), 0
        for batch in ctx.partition(stage).iter_batches(batch_size=2_000):
            for row in batch.to_pylist():  # row by row: independent of how files and row groups are cut
                digest.update(json.dumps(row, sort_keys=True, default=str).encode())
                rows += 1
        digests[stage] = {"rows": rows, "sha256": digest.hexdigest()[:16]}
    return {"library": os.path.dirname(infinisynth.__file__), **cost, "committed": digests}


def run(args: list[str], src: str | None = None) -> str:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 10_000, 50_000])
    parser.add_argument("--before-src", help="another copy of src/ (the library) to run the step from, for comparison")
    parser.add_argument("--prepare", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, args.rows[0])
        print("{}")
        return
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-publish-") as scratch:
            root = os.path.join(scratch, "after")
            run(["--prepare", root, "--rows", str(rows)])
            versions = {}
            if args.before_src:
                shutil.copytree(root, os.path.join(scratch, "before"))
                versions["before"] = json.loads(run(["--measure", os.path.join(scratch, "before")], args.before_src))
            versions["after"] = json.loads(run(["--measure", root]))
            for version, result in versions.items():
                keys = ("seconds", "cpu_seconds", "peak_above_start_mb", "peak_anon_above_start_mb")
                print(f"{rows:>7} rows  {version:<6} " + "  ".join(f"{k} {result[k]}" for k in keys) + f"  ({result['library']})")
            if args.before_src:
                same = versions["before"]["committed"] == versions["after"]["committed"]
                print(f"{rows:>7} rows  committed rows identical before/after: {same}  {json.dumps(versions['after']['committed'])}")
            print(json.dumps({"rows": rows, **{v: {k: r[k] for k in r if k != "library"} for v, r in versions.items()}}), flush=True)


if __name__ == "__main__":
    main()
