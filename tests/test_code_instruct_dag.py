"""The code-instruction DAG, run for real with ``airflow dags test`` against the scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infinisynth.quality_dimensions import DIMENSIONS
from infinisynth.settings import store_for
from infinisynth.storage import MANIFEST
from tests.support.fixtures import connection_env
from tests.support.servers import scripted_openai

pytestmark = pytest.mark.slow

SEEDS = [
    {"lang": "python", "seed": f"def add_{i}(a, b):\n    total = a + b  # step {i}\n    return total\n", "index": i} for i in range(6)
] + [
    {
        "lang": "javascript",
        "seed": "function LEAKY_marker(list) {\n  return list.filter((item) => item.enabled && item.visible);\n}\n",
        "index": 6,
    },
    {"lang": "python", "seed": "def BROKEN_marker(x):\n    return x * 2\n", "index": 7},
]
# Magicoder-shaped seeds bring their own problems: the judge scores those too (the seed baseline).
for seed in SEEDS[4:6]:
    seed["problem"] = f"Write a Python function add_{seed['index']}(a, b) that returns the sum of two integers a and b."


@pytest.fixture(scope="module")
def server():
    with scripted_openai() as handle:
        yield handle


def write_seed_file(directory: Path) -> Path:
    path = directory / "seeds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    return path


# Answers in a fenced block of the problem's language, as the response prompt asks.
GOOD_PYTHON = "Use a loop.\n\n```python\ndef total(values):\n    result = 0\n    for value in values:\n        result += value\n    return result\n```\n"
GOOD_JS = "Reduce the list.\n\n```javascript\nfunction total(values) {\n  return values.reduce((a, b) => a + b, 0);\n}\nconsole.log(total([1, 2]));\n```\n"
BROKEN_PYTHON = "```python\ndef total(values):\n    return sum(valuez)\n```\n"
GOOD_ANSWERS = [
    {"match": "Solve the following programming problem in Python", "actions": [{"content": GOOD_PYTHON}]},
    {"match": "Solve the following programming problem in JavaScript", "actions": [{"content": GOOD_JS}]},
]
BAD_CODE = "BADCODE_MARK: write a function that returns the sum of a list of integers, handling empty lists."
NO_CODE = "NOCODE_MARK: write a function that returns the largest value in a list of integers, or None."
LOW_QUALITY = "LOWQ_MARK: write a function that adds two numbers and returns the total value."
LOW_SCORES = dict.fromkeys(DIMENSIONS, 2)


def test_full_pipeline_publishes_a_chat_dataset_and_accounts_for_every_row(airflow_home, server, tmp_path):
    server.reset()
    server.script(
        [
            # The model copies the snippet into the "problem": a leak, rejected with that reason.
            {
                "match": "LEAKY_marker",
                "actions": [{"json": {"problem": "Solve this: " + SEEDS[6]["seed"] + " and explain what it does in detail."}}],
            },
            # The model never produces valid JSON: rejected after the bounded re-asks.
            {"match": "BROKEN_marker", "actions": [{"content": "{this is not json"}]},
            # One problem the judge scores low: rejected by the quality gate with its scores.
            {"match": "def add_0(", "actions": [{"json": {"problem": LOW_QUALITY}}]},
            {
                "match": ["LOWQ_MARK", "Score the problem"],
                "name": "judge-low",
                "actions": [{"json": {**LOW_SCORES, "rationale": "trivial"}}],
            },
            # Two answers the static gate must reject: an undefined name, and no code at all.
            {"match": "def add_1(", "actions": [{"json": {"problem": BAD_CODE}}]},
            {"match": "def add_2(", "actions": [{"json": {"problem": NO_CODE}}]},
            {"match": ["BADCODE_MARK", "Solve the following programming problem"], "actions": [{"content": BROKEN_PYTHON}]},
            {
                "match": ["NOCODE_MARK", "Solve the following programming problem"],
                "actions": [{"content": "Just loop and keep the largest."}],
            },
            *GOOD_ANSWERS,
        ]
    )
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(server.base_url, max_invalid_retries=1), "INFINISYNTH_ROOT": root}
    conf = {"seed_source": str(write_seed_file(tmp_path)), "max_seeds": 100, "shard_size": 3, "holdout_fraction": 0.3}

    output = airflow_home.dags_test("code_instruct", "2026-01-02", conf, env)

    store = store_for(root)
    ds = "2026-01-02"
    table = lambda stage: store.partition("code_instruct", stage, ds).read().to_pylist()  # noqa: E731
    rejected = lambda stage: store.rejected("code_instruct", stage, ds).read().to_pylist()  # noqa: E731
    seeds, problems = table("seeds"), table("reverse")
    assert len(seeds) == 8
    assert len(problems) == 6 and len(rejected("reverse")) == 2  # every seed accounted for
    assert {r["reason"] for r in rejected("reverse")} == {"leaks_snippet", "invalid_output"}
    broken = next(r for r in rejected("reverse") if r["reason"] == "invalid_output")
    assert broken["raw_answer"] == "{this is not json" and "BROKEN_marker" in broken["input_json"]
    seed_ids = {s["id"] for s in seeds}
    assert all(p["origin"] == "reverse" and p["parent_ids"][0] in seed_ids for p in problems)

    # Backfeeding: keywords from every problem, a graph, connected triples, new problems.
    keywords = table("keywords")
    assert len(keywords) == 6 and all(k["task_keywords"] and k["knowledge_keywords"] for k in keywords)
    nodes = store.partition("code_instruct", "kg_nodes", ds).read().to_pylist()
    assert {n["kind"] for n in nodes} == {"task", "instruction", "knowledge"}
    combinations = table("combinations")
    assert len(combinations) == round(0.67 * 6)
    backfeed = table("backfeed")
    assert len(backfeed) + len(rejected("backfeed")) == len(combinations)
    assert all(b["origin"] == "backfeed" and b["combination"]["task"] for b in backfeed)

    # Quality: every problem of either direction scored 3 times; the low one rejected with scores.
    scored = table("quality")
    assert len(scored) + len(rejected("quality")) == len(problems) + len(backfeed)
    low = [r for r in rejected("quality") if r["reason"] == "low_quality"]
    assert len(low) == 1 and json.loads(low[0]["evidence_json"])["quality_mean"] == 2
    assert server.stats()["by_rule"]["judge-low"] == 3  # three independent assessments
    assert all(s["quality_mean"] >= 6 and s["quality_samples"] == 3 and s["complexity"] for s in scored)

    # Responses, the static gate and the published chat dataset.
    answered, verified = table("respond"), table("verify")
    assert len(answered) == len(scored)
    lint_rejected = rejected("verify")
    assert len(verified) + len(lint_rejected) == len(answered)
    assert sorted(r["reason"] for r in lint_rejected) == ["lint_error", "no_code"]
    broken_pair = next(r for r in lint_rejected if r["reason"] == "lint_error")
    assert broken_pair["raw_answer"] == BROKEN_PYTHON.strip() and "BADCODE_MARK" in broken_pair["input_json"]
    evidence = json.loads(broken_pair["evidence_json"])
    assert [(f["tool"], f["rule"], f["line"]) for f in evidence["lint_findings"]] == [("pylint", "undefined-variable", 2)]
    assert "undefined-variable" in broken_pair["detail"]
    assert all(v["lint_passed"] and v["lint_reason"] == "ok" and v["lint_languages"] for v in verified)
    assert all(v["lint_languages"] == [v["lang"]] for v in verified)  # each answer's block, in its language
    assert "pylint" in {t["tool"] for v in verified for t in v["lint_tools"]}
    # A held-out slice (by prompt hash) is the diagnosis loop's exam: never in the exported dataset.
    dataset, held_out = table("dataset"), table("holdout")
    assert len(dataset) + len(held_out) == len(verified) and held_out
    assert not {r["id"] for r in held_out} & {r["id"] for r in dataset}
    assert store.partition("code_instruct", "dataset", ds).manifest().meta["held_out"] == {"rows": len(held_out), "fraction": 0.3}
    for row in dataset:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][0]["content"] == row["problem"] and row["messages"][1]["content"] == row["response"]
        assert set(json.loads(row["provenance"])) >= {"quality", "respond"}
    meta = store.partition("code_instruct", "dataset", ds).manifest().meta
    stages = [entry["stage"] for entry in meta["funnel"]]
    assert stages == ["seeds", "reverse", "keywords", "backfeed", "quality", "respond", "verify", "write_tests", "execute"]
    by_language = meta["funnel"][stages.index("verify")]["discard_by_language"]
    assert by_language["python"]["failed"] == 2 and sum(v["in"] for v in by_language.values()) == len(answered)
    assert by_language["python"]["rate"] == round(2 / by_language["python"]["in"], 4)
    assert "discard rate by language" in output
    assert set(meta["complexity_by_origin"]) == {"seed", "reverse", "backfeed"}
    assert meta["complexity_by_origin"]["seed"]["problems"] == 2
    seed_scored = table("seed_quality")
    assert {r["parent_ids"][0] for r in seed_scored} == {s["id"] for s in seeds if s["seed_problem"]}
    seed_usage = store.partition("code_instruct", "seed_quality", ds).manifest().meta["funnel"]["usage"]
    assert seed_usage["judge/seed_quality"]["requests"] >= 2 * 3  # its own line in the funnel
    assert meta["sft"]["learning_rate"] == 2e-5
    assert "complexity by origin" in output and "funnel" in output
    for entry in meta["funnel"][1:]:  # the invariant, stage by stage
        assert entry["inputs_passed"] + entry["rejected"] == entry["rows_in"]
    # The API key never reaches the log, the data or the manifest.
    assert "sk-test-SECRET-dag" not in output
    assert "sk-test-SECRET-dag" not in json.dumps(meta)

    # A re-run of the same date rewrites its partitions: same ids, no duplicates.
    airflow_home.dags_test("code_instruct", ds, conf, env)
    assert sorted(r["id"] for r in table("dataset")) == sorted(r["id"] for r in dataset)


def test_run_writes_to_s3_through_an_airflow_connection(airflow_home, server, tmp_path):
    """``storage_root=s3://...``: the task resolves the ``infinisynth_s3`` connection itself."""
    import httpx

    from tests.support.s3 import moto_s3
    from tests.test_lint_service import running_service

    server.reset()
    server.script(GOOD_ANSWERS)
    # The lint gate runs in the sidecar here, reached through the `lint_service` connection.
    with moto_s3() as s3, running_service() as (lint_url, lint_port):
        conn = {"conn_type": "aws", **s3.connection()}
        env = {
            **connection_env(server.base_url),
            "AIRFLOW_CONN_INFINISYNTH_S3": json.dumps(conn),
            "AIRFLOW_CONN_LINT_SERVICE": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": lint_port}),
            "INFINISYNTH_ROOT": "",
        }
        root = f"s3://{s3.bucket}/nightly"
        conf = {
            "seed_source": str(write_seed_file(tmp_path)),
            "max_seeds": 4,
            "shard_size": 2,
            "storage_root": root,
            "backfeed_ratio": 0,
            "holdout_fraction": 0,
        }

        output = airflow_home.dags_test("code_instruct", "2026-01-03", conf, env)

        keys = [obj["Key"] for obj in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="nightly/")["Contents"]]
        assert f"nightly/code_instruct/dataset/ds=2026-01-03/{MANIFEST}" in keys
        store = store_for(root, lambda conn_id: s3.connection() if conn_id == "infinisynth_s3" else None)
        assert store.partition("code_instruct", "dataset", "2026-01-03").read().num_rows == 4  # holdout_fraction 0
        gate_meta = store.partition("code_instruct", "verify", "2026-01-03").manifest().meta["lint_gate"]
        assert gate_meta["where"] == lint_url and gate_meta["fingerprint"] == httpx.get(f"{lint_url}/healthz").json()["fingerprint"]
        assert s3.secret not in output
