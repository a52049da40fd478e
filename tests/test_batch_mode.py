"""Batch mode (``mode: batch`` in a role's connection): a stage's shard sends its requests as
provider batches (``/v1/files`` + ``/v1/batches``) of the scripted server, and the outcome is the
online one. Real HTTP, the real checkpoints, batch state and commit.

- the passed, rejected and re-asked rows are those of an online run (an invalid answer is asked
  again in a second batch round), and the usage says the answers came through batches;
- a batch that failed or expired leaves its rows pending (transient), never rejected, and the
  next attempt asks again in a new batch;
- a shard run again while its batch runs (a restarted or killed task) resumes that batch: the
  server saw one batch created, not two; a task that died between uploading the file and saving
  the batch id adopts the batch made from that file.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any

import pytest

from infinisynth.llm.batch import BatchPending
from infinisynth.settings import role_config, store_for
from infinisynth.steps import RunContext, commit_step, run_global_step, run_step_shard
from tests.support.scripted_batches import batch_stats, configure_batches
from tests.support.servers import ScriptedOpenAI
from tests.test_stage_contract import DS, SPEC, TinySettings

RULES = [
    {"match": "Article 3:", "actions": [{"json": {"headline": "one two three four five six seven eight nine ten"}}]},
    # Article 1's first answer is not JSON; the re-ask (which shows it) gets a valid one.
    {"match": ["Article 1:", "That answer was invalid"], "actions": [{"json": {"headline": "Council fixes its headline"}}]},
    {"match": "Article 1:", "actions": [{"content": "{not json"}]},
    {"match": "Write a headline", "actions": [{"json": {"headline": "Council votes on bike lanes"}}]},
]


def context(server: ScriptedOpenAI, root: str, **extra: Any) -> RunContext:
    settings = {k: extra.pop(k) for k in ("max_transient_share",) if k in extra}
    connection = {"host": server.base_url, "password": "sk-batch-SECRET", "extra": {"model": "scripted", "max_retries": 1, **extra}}
    return RunContext(SPEC, store_for(root), DS, TinySettings(**settings), roles=lambda r: role_config(r, lambda _: connection))


def run_until_done(ctx: RunContext, shard: dict[str, Any], timeout: float = 30.0) -> tuple[dict[str, Any], list[str]]:
    """What a deferring task does: run, wait while the batch runs, run again; (result, batch ids)."""
    waited: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            return run_step_shard(ctx, "headline", shard), waited
        except BatchPending as pending:
            waited.append(pending.batch_id)
            assert "SECRET" not in json.dumps(pending.trigger_kwargs())  # the trigger gets no key
            assert time.monotonic() < deadline, f"still waiting for {pending.batch_id}"
            time.sleep(0.2)


def published(ctx: RunContext) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    kept = sorted((r["id"], r["headline"]) for r in ctx.partition("headline").read().to_pylist())
    rejected = sorted((r["id"], r["reason"]) for r in ctx.store.rejected("tiny", "headline", DS).read().to_pylist())
    return kept, rejected


def test_a_batch_mode_shard_publishes_what_an_online_one_does(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(RULES)
    online = context(fresh_scripted, f"file://{tmp_path / 'online'}", max_invalid_retries=1)
    shards = run_global_step(online, "articles")
    commit_step(online, "headline", [run_step_shard(online, "headline", s) for s in shards])
    assert batch_stats(fresh_scripted)["created"] == 0

    fresh_scripted.script(RULES)
    configure_batches(fresh_scripted, delay=0.3)
    batch = context(fresh_scripted, f"file://{tmp_path / 'batch'}", max_invalid_retries=1, mode="batch", batch_poll_seconds=0.2)
    shards = run_global_step(batch, "articles")
    online_requests = fresh_scripted.stats()["total"]
    runs = [run_until_done(batch, s) for s in shards]
    commit_step(batch, "headline", [result for result, _ in runs])

    assert published(batch) == published(online)
    kept, rejected = published(batch)
    assert ("a1", "Council fixes its headline") in kept and rejected == [("a3", "too_long")]
    assert fresh_scripted.stats()["total"] == online_requests  # not one online request
    stats = batch_stats(fresh_scripted)
    # Shard [a0, a1]: the first batch, then the re-ask of a1's invalid answer in a second round.
    assert [len(set(waited)) for _, waited in runs] == [2, 1, 1]
    assert stats["created"] == 4 and stats["lines"] == 5 + 1
    assert set(stats["statuses"].values()) == {"completed"}
    usage = batch.partition("headline").manifest().meta["funnel"]["usage"]["generator/headline"]
    assert usage["requests"] == usage["batch_requests"] == 6
    assert usage["prompt_tokens"] > 0


def test_after_batch_max_rounds_the_rest_goes_online(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(RULES)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", max_invalid_retries=1, mode="batch", batch_max_rounds=1)
    shard = run_global_step(ctx, "articles")[0]  # [a0, a1]: a1's first answer is invalid

    result, waited = run_until_done(ctx, shard)
    assert len(set(waited)) == 1 and result["headline"]["output"]["rows"] == 2
    assert fresh_scripted.stats()["total"] == 1  # a1's re-ask, online
    usage = result["headline"]["usage"]["generator/headline"]
    assert (usage["requests"], usage["batch_requests"]) == (3, 2)


@pytest.mark.parametrize("outcome", ["failed", "expired"])
def test_a_failed_or_expired_batch_leaves_its_rows_pending_and_the_retry_asks_again(fresh_scripted, headline_prompt, tmp_path, outcome):
    fresh_scripted.script(RULES[-1:])
    configure_batches(fresh_scripted, delay=0.2, outcome=outcome, times=1)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", mode="batch", max_transient_share=1.0)
    shard = run_global_step(ctx, "articles")[0]

    result, waited = run_until_done(ctx, shard)
    result = result["headline"]
    assert result["pending"] == 2 and result["pending_by_reason"] == {"batch_failed": 2}
    assert result["rejected"]["rows"] == 0 and result["output"]["rows"] == 0
    assert {"failed": "the batch failed", "expired": "batch_expired"}[outcome] in result["pending_errors"]["batch_failed"]

    # The next attempt (a retry, or a re-run of the date) asks again, in a new batch.
    again, waited_again = run_until_done(ctx, shard)
    again = again["headline"]
    assert again["pending"] == 0 and again["output"]["rows"] == 2
    assert waited_again[0] != waited[0] and batch_stats(fresh_scripted)["created"] == 2


def test_a_restarted_shard_resumes_its_batch_instead_of_paying_twice(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(RULES[-1:])
    configure_batches(fresh_scripted, delay=1.5)
    ctx = context(fresh_scripted, f"file://{tmp_path / 'data'}", mode="batch")
    shards = run_global_step(ctx, "articles")

    with pytest.raises(BatchPending) as first:
        run_step_shard(ctx, "headline", shards[0])
    with pytest.raises(BatchPending) as restarted:  # the task killed and started again: same batch
        run_step_shard(ctx, "headline", shards[0])
    assert restarted.value.batch_id == first.value.batch_id
    result, waited = run_until_done(ctx, shards[0])
    assert set(waited) == {first.value.batch_id} and result["headline"]["output"]["rows"] == 2
    assert batch_stats(fresh_scripted)["created"] == 1

    # A task that died after uploading its file but before saving the batch id adopts that batch.
    with pytest.raises(BatchPending) as second:
        run_step_shard(ctx, "headline", shards[1])
    work = ctx.store.work_dir("tiny", "headline", DS, shards[1]["shard"])
    (state_path,) = ctx.store.fs.glob(posixpath.join(work, "batch", "*", "state.json"))
    state = json.loads(ctx.store.fs.cat_file(state_path))
    del state["rounds"][-1]["batch_id"]
    ctx.store.fs.pipe_file(state_path, json.dumps(state).encode())
    result, waited = run_until_done(ctx, shards[1])
    assert set(waited) == {second.value.batch_id} and result["headline"]["output"]["rows"] == 2
    assert batch_stats(fresh_scripted)["created"] == 2


# -- through Airflow --------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_code_instruct_dag_in_batch_mode_publishes_what_an_online_run_does(airflow_home, fresh_scripted, tmp_path):
    """``airflow dags test`` runs the deferred tasks' triggers in-process: every model task defers
    while its batch runs, resumes, and the night publishes what an online night does."""
    from tests.support.fixtures import connection_env
    from tests.test_code_instruct_dag import GOOD_ANSWERS, write_seed_file

    rules = [{"match": "BROKEN_marker", "actions": [{"content": "{this is not json"}]}, *GOOD_ANSWERS]
    conf = {"seed_source": str(write_seed_file(tmp_path)), "max_seeds": 100, "shard_size": 4, "holdout_fraction": 0}

    def night(root: str, **extra: Any) -> dict[str, Any]:
        env = {**connection_env(fresh_scripted.base_url, max_invalid_retries=1, **extra), "INFINISYNTH_ROOT": root}
        output = airflow_home.dags_test("code_instruct", "2026-01-05", conf, env)
        store = store_for(root)
        counts = {}
        for stage in ("reverse", "keywords", "backfeed", "quality", "respond", "verify", "dataset"):
            counts[stage] = store.partition("code_instruct", stage, "2026-01-05").manifest().rows
        counts["rejected_reverse"] = sorted(
            r["reason"] for r in store.rejected("code_instruct", "reverse", "2026-01-05").read().to_pylist()
        )
        meta = store.partition("code_instruct", "quality", "2026-01-05").manifest().meta["funnel"]
        return {"counts": counts, "output": output, "quality_usage": meta["usage"], "pending": meta["pending"]}

    fresh_scripted.script(rules)
    online = night(f"file://{tmp_path / 'online'}")
    assert batch_stats(fresh_scripted)["created"] == 0

    fresh_scripted.reset()
    fresh_scripted.script(rules)
    configure_batches(fresh_scripted, delay=0.3)
    batch = night(f"file://{tmp_path / 'batch'}", mode="batch", batch_poll_seconds=0.2)

    assert batch["counts"] == online["counts"] and batch["counts"]["dataset"] > 0
    assert batch["counts"]["rejected_reverse"] == ["invalid_output"]  # the broken seed, after its re-ask round
    assert fresh_scripted.stats()["total"] == 0  # not one online request
    stats = batch_stats(fresh_scripted)
    assert stats["created"] >= 6 and set(stats["statuses"].values()) == {"completed"}
    assert "running trigger in line" in batch["output"] and "sk-test-SECRET-dag" not in batch["output"]
    usage = batch["quality_usage"]["judge/quality"]
    assert usage["batch_requests"] == usage["requests"] > 0 and batch["pending"] == 0


TINY_DAG = """
from infinisynth.airflow_dag import pipeline_dag
from tests.test_stage_contract import SPEC

dag = pipeline_dag(SPEC, dag_id="tiny_batch", schedule=None, tags=["test"])
"""


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """A call to the running api-server's REST API (simple auth manager, everyone an admin)."""
    import urllib.request

    base = f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}"
    with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    request = urllib.request.Request(
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def wait_for(done: Any, seconds: float, failure: Any) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, failure()
        time.sleep(1)


def deferred(tis: list[dict[str, Any]], try_number: int) -> int:
    return sum(1 for t in tis if t["state"] == "deferred" and t["try_number"] == try_number)


def deferral_reported(scheduler_log: Any, ti_ids: list[str]) -> bool:
    """The scheduler has processed each task's exit into ``deferred`` (a trigger firing before that
    makes Airflow take the resumed run for a stray: see ``BatchTrigger.run``)."""
    lines = [
        line
        for line in scheduler_log.read_text(errors="replace").splitlines()
        if "TaskInstance Finished" in line and "state=deferred" in line
    ]
    return all(any(f"ti_id={ti_id}" in line for line in lines) for ti_id in ti_ids)


def polled_in_triggerer(logs: Any) -> bool:
    """A trigger's own poll line (logger BatchTrigger) in a task's trigger log."""
    return any(
        "infinisynth.llm.batch_trigger.BatchTrigger" in p.read_text(errors="replace")
        for p in logs.glob("**/task_id=headline/map_index=*/attempt=*.log.trigger.*.log")
    )


@pytest.mark.slow
def test_deferred_tasks_wait_in_a_real_triggerer_and_a_cleared_task_resumes_its_batch(tmp_path):
    """A scheduler stack with a triggerer (PostgreSQL metadata DB): the mapped model tasks defer
    while their batches run, the triggerer polls them, the tasks resume and the run succeeds. A
    task cleared while its batch runs (a killed task, run again) resumes the same batch."""
    from tests.support.airflow import make_airflow_home, running_scheduler
    from tests.support.fixtures import connection_env
    from tests.support.servers import scripted_openai
    from tests.support.services import running_postgres
    from tests.test_stage_contract import PROMPT

    dags, prompts = tmp_path / "dags", tmp_path / "prompts"
    dags.mkdir(), prompts.mkdir()
    (dags / "tiny_batch.py").write_text(TINY_DAG)
    (prompts / "test_headline.toml").write_text(PROMPT)
    root = f"file://{tmp_path / 'data'}"
    logs = tmp_path / "airflow" / "logs" / "dag_id=tiny_batch"
    with running_postgres() as database_url, scripted_openai() as server:
        home = make_airflow_home(tmp_path / "airflow", database_url)
        server.script(RULES[-1:])
        configure_batches(server, delay=3600)  # until the test says so: each phase below waits for what it checks
        env = {
            **connection_env(server.base_url, mode="batch", batch_poll_seconds=1),
            "INFINISYNTH_ROOT": root,
            "INFINISYNTH_PROMPTS_DIR": str(prompts),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        }
        for args in (("dags", "reserialize"), ("dags", "unpause", "tiny_batch")):
            result = home.run(*args, extra_env=env)
            assert result.returncode == 0, f"airflow {' '.join(args)}: {result.stderr[-2000:]}"
        tis = "select task_id, map_index, state, try_number from task_instance where dag_id = 'tiny_batch' and task_id = 'headline'"

        with running_scheduler(home, env, tmp_path, triggerer=True) as scheduler_env:
            result = home.run("dags", "trigger", "tiny_batch", "-l", "2026-05-01T00:00:00+00:00", extra_env=scheduler_env)
            assert result.returncode == 0, result.stderr[-2000:]
            wait_for(lambda: deferred(home.query(tis), try_number=1) == 3, 180, lambda: f"no deferred tasks: {home.query(tis)}")
            first_batches = batch_stats(server)["ids"]
            assert len(first_batches) == 3  # one per shard
            wait_for(lambda: polled_in_triggerer(logs), 180, lambda: "the triggerer never polled a batch")
            # The tasks "killed" while their batches run: cleared, Airflow runs them again.
            run_id = home.query("select run_id from dag_run where dag_id = 'tiny_batch'")[0]["run_id"]
            cleared = api(scheduler_env, "POST", "/api/v2/dags/tiny_batch/clearTaskInstances", {
                "dry_run": False, "task_ids": ["headline"], "dag_run_id": run_id, "only_failed": False, "reset_dag_runs": False,
            })  # fmt: skip
            assert len(cleared["task_instances"]) == 3, cleared
            # Run again, each task finds its batch still running and defers on it, without a new one.
            wait_for(lambda: deferred(home.query(tis), try_number=2) == 3, 180, lambda: f"not deferred again: {home.query(tis)}")
            assert batch_stats(server)["ids"] == first_batches
            # ... and once the scheduler has heard of each deferral, the provider ends the batches.
            ti_ids = [
                r["id"] for r in home.query("select id::text as id from task_instance where dag_id = 'tiny_batch' and task_id = 'headline'")
            ]
            wait_for(lambda: deferral_reported(tmp_path / "scheduler.log", ti_ids), 120, lambda: f"deferrals not reported: {ti_ids}")
            configure_batches(server, finish=True)  # the triggers fire, the tasks resume
            deadline = time.monotonic() + 180
            while (run := home.query("select state from dag_run where dag_id = 'tiny_batch'")[0])["state"] not in ("success", "failed"):
                assert time.monotonic() < deadline, f"the run did not finish: {home.query(tis)}"
                time.sleep(2)

        assert run["state"] == "success", home.query(tis)
        final = home.query(tis)
        assert all(t["state"] == "success" and t["try_number"] == 2 for t in final), final  # cleared once, not failed
        stats = batch_stats(server)
        assert stats["ids"] == first_batches and set(stats["statuses"].values()) == {"completed"}  # resumed, not paid twice
        assert server.stats()["total"] == 0
        (retried,) = logs.glob("**/task_id=headline/map_index=0/attempt=2.log")
        assert "provider batch batch_" in retried.read_text() and "requests sent as provider batch" not in retried.read_text()
        assert store_for(root).partition("tiny", "headline", DS).manifest().rows == 5
