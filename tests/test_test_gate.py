"""The test gate (issue 15): tests written for the code pipeline's answers run in the sandbox.

The code_instruct DAG runs for real (``airflow dags test``) against the scripted server, whose
answers are real programs (plain text, a fenced solution, the same with the gate on or off) and
whose test-writing answers are tests that pass, fail on an assertion, raise, or are missing, in
Python and JavaScript; the tests run in real bubblewrap sandboxes, in-process and in the
lint sidecar. ``enforce`` rejects the failing pairs with their verdict, ``report`` keeps them with
it, ``off`` runs nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from infinisynth.errors import InputError
from infinisynth.settings import store_for
from infinisynth.stages.execute import DynamicVerification, LocalRunner
from tests.support.fixtures import connection_env

pytestmark = pytest.mark.slow

DS = "2026-01-07"
SEEDS = [{"lang": "python", "seed": f"def add_{i}(a, b):\n    return a + b  # step {i}\n", "index": i} for i in range(4)] + [
    {"lang": "javascript", "seed": f"function mul_{i}(a, b) {{\n  return a * b;\n}}\n", "index": i} for i in (4, 5)
]
# Each seed's problem carries a mark; the test-writing rule for that mark picks the tests' outcome.
WRITE_TESTS = "Write tests for this solution"
MARKS = {"def add_1(": "FAILING_PY", "def add_2(": "RAISING_PY", "def add_3(": "UNTESTED_PY", "function mul_5(": "FAILING_JS"}
RULES = [
    *(
        {"match": seed, "actions": [{"json": {"problem": f"{mark}: write total(values), the sum of a list of integers."}}]}
        for seed, mark in MARKS.items()
    ),
    # Every response: the same plain-text answer, an explanation and the solution in a fenced block.
    {"match": "Solve the following programming problem", "actions": [{"solution": True}]},
    {"match": ["FAILING_PY", WRITE_TESTS], "actions": [{"tests": "fail"}]},
    {"match": ["RAISING_PY", WRITE_TESTS], "actions": [{"tests": "error"}]},
    {"match": ["UNTESTED_PY", WRITE_TESTS], "actions": [{"tests": "none"}]},
    {"match": ["FAILING_JS", WRITE_TESTS], "actions": [{"tests": "fail"}]},
    # Everything else: the scripted server's default test-writing answer, tests that pass.
]


def night(airflow_home: Any, scripted: Any, tmp_path: Path, gate: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    scripted.reset()
    scripted.script(RULES)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(scripted.base_url), "INFINISYNTH_ROOT": root, **(extra_env or {})}
    conf = {"seed_source": str(seeds), "max_seeds": 100, "shard_size": 3, "backfeed_ratio": 0, "holdout_fraction": 0, "test_gate": gate}
    output = airflow_home.dags_test("code_instruct", DS, conf, env)
    store = store_for(root)
    rejected = store.rejected("code_instruct", "execute", DS)
    funnel = {e["stage"]: e for e in store.partition("code_instruct", "dataset", DS).manifest().meta["funnel"]}
    return {
        "output": output,
        "responded": store.partition("code_instruct", "respond", DS).read().to_pylist(),
        "written": store.partition("code_instruct", "write_tests", DS).read().to_pylist(),
        "tested": store.partition("code_instruct", "execute", DS).read().to_pylist(),
        "rejected": rejected.read().to_pylist() if rejected.exists() else [],
        "dataset": store.partition("code_instruct", "dataset", DS).read().to_pylist(),
        "funnel": funnel,
        "meta": store.partition("code_instruct", "execute", DS).manifest().meta,
    }


def mark_of(row: dict[str, Any]) -> str:
    problem = row["problem"] if "problem" in row else json.loads(row["input_json"])["problem"]
    return next((mark for mark in MARKS.values() if problem.startswith(mark)), "PASSING")


def test_enforce_rejects_pairs_whose_tests_fail_with_the_verdict_and_the_failing_assertion(airflow_home, scripted, tmp_path):
    run = night(airflow_home, scripted, tmp_path, "enforce")

    # The answers are the plain-text ones (no tests in them); the generator then wrote tests for
    # each lint-clean answer in a stage of its own, and they are kept with the row.
    assert len(run["responded"]) == len(SEEDS) and all("tests" not in r for r in run["responded"])
    assert all(r["response"].startswith("Add the values one by one.\n\n```") for r in run["responded"])
    assert len(run["written"]) == len(SEEDS)
    by_mark = {(mark_of(r), r["lang"]): r for r in run["written"]}
    assert "assert total([1, 2, 3]) == 6" in by_mark["PASSING", "python"]["tests"] and by_mark["UNTESTED_PY", "python"]["tests"] == ""
    assert "assert.strictEqual(total([1, 2, 3]), 6);" in by_mark["PASSING", "javascript"]["tests"]
    assert "```python\ndef total(values):" in by_mark["PASSING", "python"]["response"]  # the solution, fenced for the lint gate

    rejected = {mark_of(r): r for r in run["rejected"]}
    assert set(rejected) == {"FAILING_PY", "RAISING_PY", "FAILING_JS"}
    assert rejected["FAILING_PY"]["reason"] == "tests_failed"
    assert rejected["FAILING_PY"]["detail"] == "tests.py line 2: assert total([2, 2]) == 5, 'two and two': two and two"
    evidence = json.loads(rejected["FAILING_PY"]["evidence_json"])
    assert evidence["test_verdict"] == "failed" and "assert total([2, 2]) == 5" in evidence["tests"]
    assert rejected["RAISING_PY"]["reason"] == "tests_error" and rejected["RAISING_PY"]["detail"].startswith("TypeError")
    assert rejected["FAILING_JS"]["reason"] == "tests_failed"
    assert rejected["FAILING_JS"]["detail"].startswith("tests.js line 3: assert.strictEqual(total([2, 2]), 5);")

    # Passing pairs and the unverified one (no tests) are published, each with its verdict.
    verdicts = sorted((mark_of(r), r["lang"], r["test_verdict"]) for r in run["tested"])
    assert verdicts == [
        ("PASSING", "javascript", "passed"),
        ("PASSING", "python", "passed"),
        ("UNTESTED_PY", "python", "unverified"),
    ]
    assert len(run["dataset"]) == 3

    # The funnel and the manifest: pass rates per language, the gate's mode, the log's table.
    entry = run["funnel"]["execute"]
    assert entry["rows_in"] == len(SEEDS) and entry["rejected"] == 3
    assert entry["rejected_by_reason"] == {"tests_failed": 2, "tests_error": 1}
    rates = entry["test_pass_by_language"]
    assert rates["python"] == {
        "in": 4,
        "run": 3,
        "passed": 1,
        "failed": 1,
        "error": 1,
        "timeout": 0,
        "killed": 0,
        "unverified": 1,
        "rate": 0.3333,
    }
    assert rates["javascript"]["run"] == 2 and rates["javascript"]["passed"] == 1 and rates["javascript"]["rate"] == 0.5
    assert run["meta"]["test_gate"] == {"mode": "enforce", "where": "in-process"}
    assert "test gate (enforce) pass rate by language" in run["output"]


def test_report_keeps_every_pair_with_its_verdict_through_the_lint_sidecar(airflow_home, scripted, tmp_path):
    from tests.test_lint_service import running_service

    with running_service() as (lint_url, lint_port):
        sidecar = {"AIRFLOW_CONN_LINT_SERVICE": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": lint_port})}
        run = night(airflow_home, scripted, tmp_path, "report", sidecar)

    assert run["rejected"] == []
    verdicts = sorted((mark_of(r), r["lang"], r["test_verdict"]) for r in run["tested"])
    assert verdicts == [
        ("FAILING_JS", "javascript", "failed"),
        ("FAILING_PY", "python", "failed"),
        ("PASSING", "javascript", "passed"),
        ("PASSING", "python", "passed"),
        ("RAISING_PY", "python", "error"),
        ("UNTESTED_PY", "python", "unverified"),
    ]
    failing = next(r for r in run["tested"] if mark_of(r) == "FAILING_PY")
    assert failing["test_detail"].startswith("tests.py line 2: assert total([2, 2]) == 5")
    assert len(run["dataset"]) == len(SEEDS)
    assert run["meta"]["test_gate"] == {"mode": "report", "where": lint_url}
    assert run["funnel"]["execute"]["test_pass_by_language"]["javascript"]["failed"] == 1


def test_off_runs_nothing_and_asks_for_no_tests(airflow_home, scripted, tmp_path):
    scripted.reset()
    # With the gate off the response prompt is the plain one (as with it on), and no tests are asked for.
    scripted.script(
        [
            {"match": "Solve the following programming problem", "actions": [{"content": "Sum.\n\n```python\nprint(sum([1]))\n```\n"}]},
            {"name": "write_tests", "match": WRITE_TESTS, "actions": [{"tests": "pass"}]},
        ]
    )
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(row) + "\n" for row in SEEDS[:2]))
    root = f"file://{tmp_path / 'data'}"
    conf = {"seed_source": str(seeds), "max_seeds": 100, "shard_size": 3, "backfeed_ratio": 0, "holdout_fraction": 0}
    airflow_home.dags_test("code_instruct", DS, conf, {**connection_env(scripted.base_url), "INFINISYNTH_ROOT": root})

    store = store_for(root)
    tested = store.partition("code_instruct", "execute", DS).read().to_pylist()
    assert len(tested) == 2 and all(r["test_verdict"] is None and r["tests"] is None for r in tested)
    assert store.rejected("code_instruct", "execute", DS).read().num_rows == 0
    assert store.partition("code_instruct", "execute", DS).manifest().meta["test_gate"] == {"mode": "off", "where": None}
    assert store.partition("code_instruct", "dataset", DS).manifest().rows == 2
    written = store.partition("code_instruct", "write_tests", DS).read().to_pylist()
    assert len(written) == 2 and all(r["tests"] is None and "write_tests" not in json.loads(r["provenance"]) for r in written)
    assert scripted.stats()["by_rule"].get("write_tests", 0) == 0  # the test-writing stage made no model call


def test_without_bubblewrap_the_gate_refuses_to_run_anything(monkeypatch, tmp_path):
    marker = tmp_path / "ran"
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, setpriv or prlimit to be found
    with pytest.raises(InputError, match="bwrap.*never runs code unsandboxed"):
        LocalRunner()
    with pytest.raises(InputError, match="needs a sandbox"):
        DynamicVerification(None, "enforce")
    assert not marker.exists()


def test_rows_without_a_runner_or_tests_pass_through_unverified():
    from infinisynth.verify.execute import ExecLimits

    stage = DynamicVerification(LocalRunner(ExecLimits(wall_seconds=5)), "enforce")
    rows = [
        {"id": "go", "lang": "go", "response": "```go\nfunc main() {}\n```", "tests": "x"},
        {"id": "none", "lang": "python", "response": "```python\nx = 1\n```", "tests": None},
        {"id": "ok", "lang": "python", "response": "```python\nx = 1\n```", "tests": "assert x == 1"},
    ]
    outcomes = asyncio.run(stage.process_batch(rows))
    verdicts = [(o.rows[0]["test_verdict"], o.rows[0]["test_detail"]) for o in outcomes]  # type: ignore[union-attr]
    assert verdicts == [
        ("unverified", "no sandboxed runner for go"),
        ("unverified", "the answer came without tests"),
        ("passed", "every test ran"),
    ]
