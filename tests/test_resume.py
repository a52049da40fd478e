"""A stage killed mid-shard and run again pays only for the rows that had not finished: in a
streamed chain (reverse construction -> keywords), each step's finished rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from infinisynth.pipelines.code_instruct import KEYWORD_STAGE, PIPELINE, REVERSE_STAGE, SEED_STAGE
from infinisynth.records import content_id
from infinisynth.runner import Checkpoint
from infinisynth.seeds import SEED_SCHEMA
from infinisynth.settings import store_for
from tests.support.servers import scripted_openai

REPO = Path(__file__).resolve().parents[1]
ROWS = 60
DS = "2026-03-04"


def seed_rows() -> pa.Table:
    rows = []
    for i in range(ROWS):
        code = f"def step_{i}(values):\n    return [v * {i} for v in values if v > {i}]\n"
        rows.append(
            {
                "id": content_id("seed", "python", code),
                "parent_ids": [],
                "origin": "seed",
                "lang": "python",
                "seed": code,
                "source": f"test:{i}",
                "seed_problem": None,
                "seed_solution": None,
            }
        )
    return pa.Table.from_pylist(rows, schema=SEED_SCHEMA)


def run_shard_process(root: str, shard: dict, base_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests/support/run_chain_shard.py"), root, DS, json.dumps(shard), base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> dict:
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


def prepare(root: str) -> dict:
    partition = store_for(root).partition(PIPELINE, SEED_STAGE, DS)
    data_file = partition.write_table(0, seed_rows())
    partition.commit([data_file], SEED_SCHEMA)
    return {"stage": SEED_STAGE, "shard": 0, "file": data_file.name, "rows": data_file.rows}


CHAIN = (REVERSE_STAGE, KEYWORD_STAGE)  # one mapped task: each problem's keywords as soon as it is made


def from_cache(result: dict) -> int:
    return sum(entry["cached_requests"] for entry in result["usage"].values())


@pytest.mark.slow
def test_killed_shard_resumes_without_paying_twice(tmp_path):
    killed_root, clean_root = f"file://{tmp_path / 'killed'}", f"file://{tmp_path / 'clean'}"
    # 100 ms per answer, 2 in flight per step: about 20 rows/s, so the kill lands mid-shard.
    with scripted_openai(latency=0.1) as server:
        shard = prepare(killed_root)
        process = run_shard_process(killed_root, shard, server.base_url)
        store = store_for(killed_root)
        checkpoints = {stage: Checkpoint(store, store.work_dir(PIPELINE, stage, DS, 0)) for stage in CHAIN}
        deadline = time.monotonic() + 60
        while not checkpoints[KEYWORD_STAGE].load()[0]:  # wait for a saved chunk of the second step
            assert time.monotonic() < deadline and process.poll() is None, "no checkpoint was written"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        saved = {stage: len(checkpoint.load()[0]) for stage, checkpoint in checkpoints.items()}
        paid_before_kill = server.stats()["total"]
        assert 0 < saved[REVERSE_STAGE] < ROWS and 0 < saved[KEYWORD_STAGE] < ROWS, f"the kill should land mid-shard ({saved})"

        server.reset()
        resumed = finish(run_shard_process(killed_root, shard, server.base_url))
        paid_on_resume = server.stats()["total"]

        assert {stage: resumed[stage]["resumed"] for stage in CHAIN} == saved
        # Rows answered after the last checkpoint but before the kill come back from the response cache.
        cached = sum(from_cache(resumed[stage]) for stage in CHAIN)
        assert paid_on_resume + cached == 2 * ROWS - sum(saved.values()), "only unfinished rows may be paid for again"
        assert paid_before_kill + paid_on_resume < 2 * 2 * ROWS

        # The resumed shard equals an uninterrupted run's: same ids, no duplicates.
        server.reset()
        clean_shard = prepare(clean_root)
        clean = finish(run_shard_process(clean_root, clean_shard, server.base_url))
        assert server.stats()["total"] == 2 * ROWS

    for stage in CHAIN:
        resumed_rows = store.partition(PIPELINE, stage, DS).read_file(resumed[stage]["output"]["name"])
        clean_rows = store_for(clean_root).partition(PIPELINE, stage, DS).read_file(clean[stage]["output"]["name"])
        assert resumed_rows.num_rows == ROWS
        assert resumed_rows.column("id").to_pylist() == clean_rows.column("id").to_pylist()
        assert len(set(resumed_rows.column("id").to_pylist())) == ROWS
        # Token usage spent before the kill is still reported for the shard (answers reused from the cache apart).
        usage = resumed[stage]["usage"][f"generator/{stage}"]
        assert usage["requests"] + usage["cached_requests"] >= ROWS


def test_changed_prompt_does_not_reuse_checkpointed_answers(tmp_path, monkeypatch):
    """The cache key holds the prompt's version: an edited prompt invalidates saved rows."""
    from infinisynth.llm import LLMClient, RoleConfig
    from infinisynth.prompts import load_prompt
    from infinisynth.stages.reverse import ReverseConstruction, ReverseSettings

    config = RoleConfig(role="generator", base_url="http://127.0.0.1:9/v1", model="m")
    client = LLMClient(config)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    text = (REPO / "include/prompts/reverse_construction.toml").read_text()
    (prompts / "reverse_construction.toml").write_text(text + "\n# edited\n")
    row = seed_rows().to_pylist()[0]
    assert load_prompt("reverse_construction").version != load_prompt("reverse_construction", str(prompts)).version
    assert ReverseConstruction(client).cache_key(row) != ReverseConstruction(client, prompt_dir=str(prompts)).cache_key(row)
    assert ReverseConstruction(client).cache_key(row) == ReverseConstruction(client).cache_key(row)
    changed_model = LLMClient(config.with_overrides(model="other"))
    assert ReverseConstruction(changed_model).cache_key(row) != ReverseConstruction(client).cache_key(row)
    assert ReverseConstruction(client, ReverseSettings(problems_per_seed=2)).cache_key(row) != ReverseConstruction(client).cache_key(row)


def test_a_checkpoint_keeps_verdicts_but_never_calls_that_did_not_complete(tmp_path):
    """A transient rejection (a 5xx, a timeout, ...) is no outcome: even one an older version saved
    is not resumed, so a retried task asks again for exactly those rows."""
    from infinisynth.runner import Passed, Rejected

    store = store_for(f"file://{tmp_path}")
    checkpoint = Checkpoint(store, store.work_dir(PIPELINE, REVERSE_STAGE, DS, 0))
    checkpoint.save(
        [
            ("a:k", Passed([{"id": "a-out"}])),
            ("b:k", Rejected("invalid_output", "no valid answer after 3 answers", raw_answer="{")),
            ("c:k", Rejected("server_error", "HTTP 500 after 6 attempts")),
            ("d:k", Rejected("broken_response", "HTTP 200 with a body that is not JSON")),
        ],
        {},
    )
    outcomes, _ = checkpoint.load()
    assert set(outcomes) == {"a:k", "b:k"}
    assert outcomes["b:k"] == Rejected("invalid_output", "no valid answer after 3 answers", raw_answer="{")
