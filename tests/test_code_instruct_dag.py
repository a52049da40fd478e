"""The code-instruction DAG, run for real with ``airflow dags test`` against the scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infinisynth.settings import store_for
from tests.support.fixtures import connection_env
from tests.support.servers import scripted_openai

pytestmark = pytest.mark.slow

SEEDS = [
    {"lang": "python", "seed": f"def add_{i}(a, b):\n    total = a + b  # step {i}\n    return total\n", "index": i}
    for i in range(6)
] + [
    {"lang": "javascript", "seed": "function LEAKY_marker(list) {\n  return list.filter((item) => item.enabled && item.visible);\n}\n", "index": 6},
    {"lang": "python", "seed": "def BROKEN_marker(x):\n    return x * 2\n", "index": 7},
]


@pytest.fixture(scope="module")
def server():
    with scripted_openai() as handle:
        yield handle


def write_seed_file(directory: Path) -> Path:
    path = directory / "seeds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    return path


def test_reverse_construction_run_publishes_problems_and_accounts_for_every_seed(airflow_home, server, tmp_path):
    server.reset()
    server.script(
        [
            # The model copies the snippet into the "problem": a leak, rejected with that reason.
            {"match": "LEAKY_marker", "actions": [{"json": {"problem": "Solve this: " + SEEDS[6]["seed"] + " and explain what it does in detail."}}]},
            # The model never produces valid JSON: rejected after the bounded re-asks.
            {"match": "BROKEN_marker", "actions": [{"content": "{this is not json"}]},
        ]
    )
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(server.base_url, max_invalid_retries=1), "INFINISYNTH_ROOT": root}
    conf = {"seed_source": str(write_seed_file(tmp_path)), "max_seeds": 100, "shard_size": 3}

    output = airflow_home.dags_test("code_instruct", "2026-01-02", conf, env)

    store = store_for(root)
    problems = store.partition("code_instruct", "reverse", "2026-01-02").read().to_pylist()
    rejected = store.rejected("code_instruct", "reverse", "2026-01-02").read().to_pylist()
    seeds = store.partition("code_instruct", "seeds", "2026-01-02").read().to_pylist()
    assert len(seeds) == 8
    assert len(problems) == 6 and len(rejected) == 2  # every seed accounted for
    assert {r["reason"] for r in rejected} == {"leaks_snippet", "invalid_output"}
    seed_ids = {s["id"] for s in seeds}
    for row in problems:
        assert row["origin"] == "reverse" and row["lang"] == "python"
        assert row["parent_ids"][0] in seed_ids and len(row["problem"]) >= 40
    broken = next(r for r in rejected if r["reason"] == "invalid_output")
    assert broken["raw_answer"] == "{this is not json" and "BROKEN_marker" in broken["input_json"]
    # 3 shards were mapped, and the funnel is in the manifest and the task log.
    assert output.count("code_instruct.reverse shard") >= 3
    manifest = store.partition("code_instruct", "reverse", "2026-01-02").manifest()
    funnel = manifest.meta["funnel"]
    assert funnel["rows_in"] == 8 and funnel["rows_out"] == 6 and funnel["rejected_by_reason"] == {"leaks_snippet": 1, "invalid_output": 1}
    assert funnel["usage"]["generator/reverse"]["prompt_tokens"] > 0
    assert manifest.meta["prompt_versions"]["reverse_construction"].startswith("reverse_construction@")
    # The API key never reaches the log, the data or the manifest.
    assert "sk-test-SECRET-dag" not in output
    assert "sk-test-SECRET-dag" not in json.dumps(manifest.meta)
    assert "sk-test-SECRET-dag" not in json.dumps(rejected)

    # A re-run of the same date rewrites that partition: same ids, no duplicates.
    airflow_home.dags_test("code_instruct", "2026-01-02", conf, env)
    again = store.partition("code_instruct", "reverse", "2026-01-02").read().to_pylist()
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in problems)


def test_run_writes_to_s3_through_an_airflow_connection(airflow_home, server, tmp_path):
    """``storage_root=s3://...``: the task resolves the ``infinisynth_s3`` connection itself."""
    from tests.support.s3 import moto_s3

    server.reset()
    with moto_s3() as s3:
        conn = {"conn_type": "aws", **s3.connection()}
        env = {
            **connection_env(server.base_url),
            "AIRFLOW_CONN_INFINISYNTH_S3": json.dumps(conn),
            "INFINISYNTH_ROOT": "",
        }
        root = f"s3://{s3.bucket}/nightly"
        conf = {"seed_source": str(write_seed_file(tmp_path)), "max_seeds": 4, "shard_size": 2, "storage_root": root}

        output = airflow_home.dags_test("code_instruct", "2026-01-03", conf, env)

        keys = [obj["Key"] for obj in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="nightly/")["Contents"]]
        assert "nightly/code_instruct/reverse/ds=2026-01-03/_manifest.json" in keys
        store = store_for(root, lambda conn_id: s3.connection() if conn_id == "infinisynth_s3" else None)
        assert store.partition("code_instruct", "reverse", "2026-01-03").read().num_rows == 4
        assert s3.secret not in output
