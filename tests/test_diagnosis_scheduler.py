"""The diagnosis loop driven by a real Airflow scheduler: two model registrations, two asset-triggered
iterations chained through the ``models.registered`` events.

``airflow dags test`` (test_diagnosis_dag.py) never creates an asset-triggered run; here the
scheduler, dag-processor and api-server run as background processes (LocalExecutor on SQLite) in a
throwaway Airflow home, and the scripted server plays every model role. Asset-triggered runs get no
conf: their settings come from the ``deficiency_diagnosis_settings`` Variable, set through the CLI
as an operator would.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from infinisynth.diagnosis.iterations import history
from infinisynth.pipelines.diagnosis import SETTINGS_VARIABLE, DiagnosisSettings, run_settings
from infinisynth.settings import store_for
from tests.support.airflow import AirflowHome, make_airflow_home, running_scheduler
from tests.support.fixtures import connection_env
from tests.support.servers import scripted_openai
from tests.support.services import running_postgres
from tests.test_diagnosis_dag import RULES, write_set

RUN_TIMEOUT = 300  # seconds for one registration to turn into a finished diagnosis run
FINISHED = ("success", "failed")


def runs(home: AirflowHome, dag_id: str) -> list[dict]:
    return home.query("select run_id, run_type, state, logical_date, run_after, conf from dag_run where dag_id = ? order by id", dag_id)


def failure_logs(home: AirflowHome, dag_id: str, run_id: str) -> str:
    """The tail of every failed task's log in a run: what a failing test should show."""
    tasks = [
        (row["task_id"], row["map_index"], row["state"])
        for row in home.query(
            "select task_id, map_index, state from task_instance where dag_id = ? and run_id = ? and state not in ('success', 'skipped')",
            dag_id, run_id,
        )
    ]  # fmt: skip
    logs = [f"unfinished/failed tasks: {tasks}"]
    run_dir = Path(home.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    for task_id, _, _ in tasks:
        for log in sorted(run_dir.glob(f"task_id={task_id}/**/*.log"))[-1:]:
            logs.append(f"--- {log.relative_to(run_dir)}\n{log.read_text()[-3000:]}")
    return "\n".join(logs)


def wait_for_run(home: AirflowHome, dag_id: str, number: int, timeout: float = RUN_TIMEOUT) -> dict:
    """Poll the metadata DB until the DAG's ``number``-th run has finished; return it."""
    deadline = time.monotonic() + timeout
    while True:
        found = runs(home, dag_id)
        if len(found) >= number and found[number - 1]["state"] in FINISHED:
            return found[number - 1]
        if time.monotonic() > deadline:
            detail = failure_logs(home, dag_id, found[number - 1]["run_id"]) if len(found) >= number else "no such run was created"
            raise AssertionError(f"{dag_id} run {number} did not finish within {timeout:.0f}s; runs: {found}\n{detail}")
        time.sleep(2)


def tries(home: AirflowHome, dag_id: str, run_id: str) -> dict[str, int]:
    rows = home.query("select task_id, map_index, try_number from task_instance where dag_id = ? and run_id = ?", dag_id, run_id)
    return {f"{row['task_id']}[{row['map_index']}]": row["try_number"] for row in rows}


PARAMS = DiagnosisSettings().model_dump() | {"storage_root": ""}


def test_settings_precedence_defaults_then_variable_then_conf():
    settings = run_settings({**PARAMS, "max_targeted": 7}, {"max_targeted": 7}, {"max_targeted": 3, "diagnosis_source": "/sets/a.jsonl"})
    assert (settings["max_targeted"], settings["diagnosis_source"], settings["shard_size"]) == (7, "/sets/a.jsonl", 50)
    assert run_settings(PARAMS, {}, None) == PARAMS  # no Variable: the Param defaults


@pytest.mark.parametrize(
    ("standing", "message"),
    [
        ({"max_targetted": 3}, "unknown setting(s) ['max_targetted']"),
        ({"target_model": "m"}, "comes from its registration event"),
        (["holdout"], "JSON object"),
        ({"max_targeted": -1}, "max_targeted"),
    ],
)
def test_a_bad_settings_variable_is_refused_before_any_work(standing, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_settings(PARAMS, {}, standing)


@pytest.mark.slow
def test_registrations_trigger_two_chained_iterations_through_the_scheduler(tmp_path):
    with running_postgres() as database_url:
        _two_chained_iterations(tmp_path, make_airflow_home(tmp_path / "airflow", database_url))


def _two_chained_iterations(tmp_path: Path, home: AirflowHome) -> None:
    root = f"file://{tmp_path / 'data'}"
    diagnosis_set = str(write_set(tmp_path))
    standing = {"diagnosis_source": diagnosis_set, "max_targeted": 2, "shard_size": 4, "merge_similarity": 1.0, "quality_samples": 1}

    with scripted_openai() as server:
        server.script(RULES)
        env = {**connection_env(server.base_url), "INFINISYNTH_ROOT": root}
        for args in (
            ("dags", "reserialize"),
            ("dags", "unpause", "register_model"),
            ("dags", "unpause", "deficiency_diagnosis"),
            ("variables", "set", SETTINGS_VARIABLE, json.dumps(standing)),
        ):
            result = home.run(*args, extra_env=env)
            assert result.returncode == 0, f"airflow {' '.join(args)}: {result.stderr[-2000:]}"

        with running_scheduler(home, env, tmp_path) as scheduler_env:
            diagnosed = []
            for number, model in ((1, "model-v1"), (2, "model-v2")):
                conf = {"base_url": server.base_url, "model": model, "name": f"sft run {number}"}
                result = home.run("dags", "trigger", "register_model", "-c", json.dumps(conf), extra_env=scheduler_env)
                assert result.returncode == 0, result.stderr[-2000:]
                registration = wait_for_run(home, "register_model", number)
                assert registration["state"] == "success", failure_logs(home, "register_model", registration["run_id"])
                run = wait_for_run(home, "deficiency_diagnosis", number)
                assert run["state"] == "success", failure_logs(home, "deficiency_diagnosis", run["run_id"])
                diagnosed.append((run, registration))
                retried = {k: n for k, n in tries(home, "deficiency_diagnosis", run["run_id"]).items() if n != 1}
                assert not retried, f"tasks needed retries (a failure the retries hid): {retried}"

    assert len(runs(home, "deficiency_diagnosis")) == 2  # one run per registration, none by hand
    first, second = history(store_for(root))
    for iteration, (run, registration), model in zip((first, second), diagnosed, ("model-v1", "model-v2")):
        # The scheduler made the run from the event: no conf, no logical date (the date is run_after's).
        assert run["run_type"] == "asset_triggered" and run["logical_date"] is None
        assert json.loads(run["conf"] or "{}") == {}
        assert iteration["run_id"] == run["run_id"] and iteration["status"] == "complete"
        assert (iteration["target_model"], iteration["target_base_url"], iteration["trigger"]) == (model, server.base_url, "asset_event")
        event = json.loads(iteration["event"])
        assert (event["source_dag_id"], event["source_run_id"]) == ("register_model", registration["run_id"])
        assert iteration["partition"].startswith(run["run_after"][:10])
        # The settings came from the Variable, not the Param defaults ('holdout', 50 targeted).
        assert iteration["diagnosis_source"] == diagnosis_set and iteration["diagnosis_rows"] == 4
        assert iteration["accuracy"] == 0.25 and iteration["targeted_published"] >= 1

    assert (first["iteration"], second["iteration"]) == (1, 2)
    assert (first["previous_iteration"], second["previous_iteration"]) == (None, 1)

    store = store_for(root)
    for iteration in (first, second):
        part = iteration["partition"]
        dataset = store.partition("diagnosis", "dataset", part).read().to_pylist()
        assert len(dataset) == iteration["targeted_published"] <= standing["max_targeted"]
        assert all(r["origin"] == "diagnosis" and r["iteration"] == iteration["iteration"] for r in dataset)
        assert store.partition("diagnosis", "answer", part).read().column("target_model").to_pylist() == [iteration["target_model"]] * 4
    report = (tmp_path / "data" / "diagnosis" / "reports" / second["partition"] / "report.md").read_text()
    assert "model-v1" in report and "model-v2" in report  # the second report spans both iterations
