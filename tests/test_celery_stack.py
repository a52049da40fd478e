"""The production stack, run for real: CeleryExecutor with two workers, PostgreSQL, Redis, S3.

What docker-compose.yaml deploys, as local processes on loopback (Debian's postgresql and
redis-server, moto's S3 server, the lint sidecar, the scripted model server): a ``code_instruct``
night runs through the scheduler with its mapped shards spread over both workers; one worker is
killed with SIGKILL while it runs a model stage; its task is found (heartbeat timeout), retried
and finished on the other worker; the published dataset is complete, with no duplicate id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from infinisynth.settings import store_for
from tests.support.airflow import AirflowHome, make_airflow_home, running_scheduler
from tests.support.celery_stack import celery_env, celery_workers
from tests.support.fixtures import connection_env
from tests.support.s3 import moto_s3
from tests.support.servers import scripted_openai
from tests.support.services import running_postgres, running_redis
from tests.test_lint_service import running_service
from tests.test_outage_drill import ANSWER, STAGE_MARKERS, write_seed_file

pytestmark = pytest.mark.slow

DAG_ID = "code_instruct"
DS = "2026-01-02"
SEEDS = 8
CONF = {
    "max_seeds": SEEDS,
    "shard_size": 2,  # four mapped tasks per model stage: enough to spread over two workers
    "quality_samples": 1,
    "holdout_fraction": 0,
    "score_seed_problems": False,
    "lint_gate": True,
}
# The reverse stage answers slowly, so a worker can be killed while it runs one.
RULES = [
    {
        "match": marker,
        "name": stage,
        "actions": [{"content": ANSWER} if stage == "respond" else {"default": True, "delay": 6.0 if stage == "reverse" else 0.0}],
    }
    for stage, marker in STAGE_MARKERS.items()
]
RUN_TIMEOUT = 480


def task_instances(home: AirflowHome, task_id: str) -> list[dict[str, Any]]:
    return home.query("select map_index, state, try_number, hostname from task_instance where dag_id = ? and task_id = ?", DAG_ID, task_id)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def test_two_celery_workers_share_a_night_and_one_lost_worker_loses_nothing(tmp_path):
    started = time.monotonic()
    figures: dict[str, Any] = {}
    with (
        running_postgres() as database_url,
        running_redis() as broker_url,
        moto_s3() as s3,
        running_service() as (_, lint_port),
        scripted_openai() as server,
    ):
        home = make_airflow_home(tmp_path / "airflow", database_url)
        server.script(RULES)
        root = f"s3://{s3.bucket}/data"
        env = {
            **connection_env(server.base_url),
            **celery_env(broker_url, database_url),
            "AIRFLOW_CONN_INFINISYNTH_S3": json.dumps({"conn_type": "aws", **s3.connection()}),
            "AIRFLOW_CONN_LINT_SERVICE": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": lint_port}),
            "INFINISYNTH_ROOT": root,
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # the triggered run only
        }
        for args in (("dags", "reserialize"), ("dags", "unpause", DAG_ID)):
            result = home.run(*args, extra_env=env)
            assert result.returncode == 0, f"airflow {' '.join(args)}: {result.stderr[-2000:]}"
        conf = {**CONF, "seed_source": str(write_seed_file(tmp_path)), "storage_root": root}

        with running_scheduler(home, env, tmp_path) as stack_env, celery_workers(stack_env, tmp_path) as workers:
            figures["setup_s"] = round(time.monotonic() - started, 1)
            result = home.run("dags", "trigger", DAG_ID, "--logical-date", DS, "-c", json.dumps(conf), extra_env=stack_env)
            assert result.returncode == 0, result.stderr[-2000:]

            # Both workers run reverse shards at once (two slots each, four shards, slow answers).
            running = wait_for(
                lambda: [ti for ti in task_instances(home, "reverse_construct") if ti["state"] == "running" and ti["hostname"]],
                RUN_TIMEOUT / 2,
                "a reverse_construct shard running on a worker",
            )
            victim = running[0]["hostname"]
            assert victim in workers, running
            workers[victim].kill()
            killed_at = time.monotonic()
            killed_shards = {ti["map_index"] for ti in running if ti["hostname"] == victim}

            run = wait_for(
                lambda: [
                    r for r in home.query("select state from dag_run where dag_id = ?", DAG_ID) if r["state"] in ("success", "failed")
                ],
                RUN_TIMEOUT,
                "the run finishing",
            )[0]
            figures["recovered_s"] = round(time.monotonic() - killed_at, 1)
            figures["total_s"] = round(time.monotonic() - started, 1)
            reverse = task_instances(home, "reverse_construct")
            print(f"\ncelery stack: {figures}; killed {victim} running shards {sorted(killed_shards)}; reverse: {reverse}")
            assert run["state"] == "success", (figures, reverse, (tmp_path / "scheduler.log").read_text()[-3000:])

        # Mapped shards ran on both workers; the killed worker's shards were retried on the other.
        survivor = next(name for name in workers if name != victim)
        tries = [
            ti
            for table in ("task_instance", "task_instance_history")  # the latest tries, and the earlier ones
            for ti in home.query(
                f"select task_id, map_index, try_number, hostname from {table} where dag_id = ? and map_index >= 0", DAG_ID
            )
        ]
        assert {ti["hostname"] for ti in tries} == set(workers), tries
        assert {ti["map_index"] for ti in tries if ti["task_id"] == "reverse_construct" and ti["hostname"] == victim} >= killed_shards
        retried = {ti["map_index"]: ti for ti in reverse if ti["map_index"] in killed_shards}
        assert all(ti["state"] == "success" and ti["try_number"] >= 2 and ti["hostname"] == survivor for ti in retried.values()), reverse

        # The dataset is complete, with no duplicate id.
        store = store_for(root, lambda conn_id: s3.connection() if conn_id == "infinisynth_s3" else None)
        manifest = store.partition(DAG_ID, "dataset", DS).manifest()
        funnel = {entry["stage"]: entry for entry in manifest.meta["funnel"]}
        dataset = store.partition(DAG_ID, "dataset", DS).read().to_pylist()
        combinations = store.partition(DAG_ID, "combinations", DS).read().num_rows
        assert funnel["seeds"]["rows_out"] == SEEDS
        assert all(e["pending"] == 0 and e["rejected"] == 0 for e in funnel.values()), funnel
        assert len(dataset) == manifest.rows == SEEDS + combinations, funnel
        ids = [row["id"] for row in dataset]
        assert len(ids) == len(set(ids))
        assert len({row["seed"] for row in dataset if row["origin"] == "reverse"}) == SEEDS
