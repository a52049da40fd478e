"""The deficiency-diagnosis DAG, run for real with ``airflow dags test`` against the scripted server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from infinisynth.settings import store_for
from tests.support.fixtures import connection_env

pytestmark = pytest.mark.slow

# Prompts far from any HumanEval problem (the benchmark check would refuse them otherwise).
DIAGNOSIS_SET = [
    {
        "id": "rooms",
        "lang": "python",
        "prompt": "Write a Python function `min_rooms(bookings)` that takes a list of meeting bookings (start, end) and returns the minimum number of rooms so that no two overlapping bookings share a room. MARK_A",
        "reference": "def min_rooms(bookings): ...",
    },
    {
        "id": "shipments",
        "lang": "python",
        "prompt": "Given a log of warehouse shipments as (sku, quantity) pairs, write a Python function that returns the sku with the largest total quantity, breaking ties by the sku that appears first. MARK_B",
        "reference": "def top_sku(log): ...",
    },
    {
        "id": "csv",
        "lang": "python",
        "prompt": "Write a Python function that parses a CSV line with quoted fields, where a quoted field may contain commas and escaped double quotes. MARK_A2",
        "reference": "def parse_line(line): ...",
    },
    {
        "id": "duration",
        "lang": "python",
        "prompt": "Write a Python function that converts a duration in seconds into a human readable string like 1h 02m 03s, omitting leading zero units.",
        "reference": "def human(seconds): ...",
    },
]
EDGE = {
    "skill": "handling boundary conditions of interval input",
    "knowledge_area": "interval scheduling",
    "error_type": "missed_edge_case",
    "description": "ignores touching intervals in min_rooms",
}
TIES = {
    "skill": "breaking ties deterministically",
    "knowledge_area": "aggregation",
    "error_type": "wrong_logic",
    "severity": "minor",
    "description": "picks an arbitrary key on ties",
}
TIES_PROBLEM = "TIESMARK: Write a Python function that ranks chess players by rating and, when two ratings are equal, orders them by registration date, returning the names in order."
PARAPHRASE = "Write a Python function that receives a list of meeting reservations as (start, end) pairs and computes the smallest number of rooms needed so no two overlapping reservations share a room."


def wrong(*deficiencies: dict) -> dict:
    return {"correct": False, "deficiencies": list(deficiencies), "rationale": "misses what the reference handles"}


RULES = [
    # The oracle: two prompts fail on the same (abstract) edge-case weakness, one on ties; the rest pass.
    {"match": ["MARK_A2", "Candidate answer"], "actions": [{"json": wrong({**EDGE, "severity": "critical"})}]},
    {"match": ["MARK_A", "Candidate answer"], "actions": [{"json": wrong({**EDGE, "severity": "major"})}]},
    {"match": ["MARK_B", "Candidate answer"], "actions": [{"json": wrong(TIES)}]},
    {"match": "Candidate answer", "actions": [{"json": {"correct": True, "deficiencies": [], "rationale": "matches"}}]},
    # Targeted synthesis: one instruction for the edge-case group paraphrases a diagnosis prompt.
    {"match": ["Skill: handling boundary conditions", "This is variant 1:"], "actions": [{"json": {"problem": PARAPHRASE}}]},
    # The ties group's instruction gets an answer whose code the static gate rejects; the rest pass.
    {"match": "Skill: breaking ties", "actions": [{"json": {"problem": TIES_PROBLEM}}]},
    {
        "match": ["TIESMARK", "Solve the following programming problem"],
        "actions": [{"content": "```python\ndef rank(players):\n    return sorted(players, key=ratingz)\n```\n"}],
    },
    {
        "match": "Solve the following programming problem",
        "actions": [{"content": "Sort, then scan.\n\n```python\ndef solve(items):\n    return sorted(items)\n```\n"}],
    },
]


def write_set(directory: Path) -> Path:
    path = directory / "diagnosis.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in DIAGNOSIS_SET))
    return path


def test_diagnosis_run_ranks_known_deficiencies_and_publishes_targeted_rows(airflow_home, scripted, tmp_path):
    scripted.reset()
    scripted.script(RULES)
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(scripted.base_url), "INFINISYNTH_ROOT": root}
    conf = {
        "target_base_url": scripted.base_url,
        "target_model": "model-under-test",
        "diagnosis_source": str(write_set(tmp_path)),
        "max_targeted": 6,
        "shard_size": 2,
        "merge_similarity": 1.0,
    }

    output = airflow_home.dags_test("deficiency_diagnosis", "2026-04-01", conf, env)

    store = store_for(root)
    [iteration] = store.partition("diagnosis", "iterations", "2026-04-01.iter0001").read().to_pylist()
    part = iteration["partition"]
    table = lambda stage: store.partition("diagnosis", stage, part).read().to_pylist()  # noqa: E731
    rejected = lambda stage: store.rejected("diagnosis", stage, part).read().to_pylist()  # noqa: E731

    # Diagnosis: every prompt answered by the target and judged by the oracle.
    assert len(table("answer")) == 4 and all(r["target_model"] == "model-under-test" for r in table("answer"))
    verdicts = {r["id"]: r for r in table("verdict")}
    assert {k for k, v in verdicts.items() if not v["correct"]} == {"rooms", "shipments", "csv"}
    # The prompt's concrete entity (the function name) is abstracted out of the deficiency.
    rooms = verdicts["rooms"]["deficiencies"][0]
    assert "min_rooms" not in rooms["skill"] + rooms["description"] and verdicts["rooms"]["abstracted_entities"] == 1

    # Aggregation: two groups, the edge-case one first (2 failures, major + critical = 5).
    groups = table("deficiencies")
    assert [(g["knowledge_area"], g["error_type"], g["failures"], g["weight"]) for g in groups] == [
        ("interval scheduling", "missed_edge_case", 2, 5.0),
        ("aggregation", "wrong_logic", 1, 1.0),
    ]
    assert iteration["accuracy"] == 0.25 and iteration["judged"] == 4 and iteration["status"] == "complete"
    assert iteration["target_model"] == "model-under-test" and iteration["trigger"] == "params"

    # Targeted synthesis: 6 in proportion 5:1; the paraphrase of a diagnosis prompt is rejected.
    plan = table("targets")
    assert [p["deficiency"]["rank"] for p in plan] == [1] * 5 + [2]
    assert len(table("targeted")) == 6
    [leak] = rejected("leakage")
    assert leak["reason"] == "too_close_to_diagnosis" and "diagnosis:rooms" in leak["detail"]
    assert PARAPHRASE in leak["input_json"]

    # Published: origin diagnosis, the deficiency each row targets, through quality, responses and
    # the static lint gate (the ties answer's undefined name discards that pair).
    dataset = table("dataset")
    assert len(table("quality")) == len(table("respond")) == 5
    [lint_reject] = rejected("verify")
    assert (
        lint_reject["reason"] == "lint_error" and "TIESMARK" in lint_reject["input_json"] and "undefined-variable" in lint_reject["detail"]
    )
    assert len(dataset) == 4 == len(table("verify"))
    assert all(r["origin"] == "diagnosis" and r["iteration"] == 1 for r in dataset)
    assert sorted(r["deficiency"]["rank"] for r in dataset) == [1, 1, 1, 1]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in dataset)
    meta = store.partition("diagnosis", "dataset", part).manifest().meta
    assert [e["stage"] for e in meta["funnel"]] == [
        "diagnosis_set",
        "answer",
        "verdict",
        "targeted",
        "leakage",
        "quality",
        "respond",
        "verify",
        "write_tests",
        "execute",
    ]
    for entry in meta["funnel"]:
        assert entry["inputs_passed"] + entry["rejected"] == entry["rows_in"]

    # The report: ranking, accuracy, a plot; the key never leaks.
    report_dir = tmp_path / "data" / "diagnosis" / "reports" / part
    assert "interval scheduling" in (report_dir / "report.md").read_text() and "25.0%" in (report_dir / "report.md").read_text()
    assert (report_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Deficiency ranking" in output and "sk-test-SECRET-dag" not in output


def queued_for(airflow_home, dag_id: str) -> int:
    with sqlite3.connect(Path(airflow_home.env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute("select count(*) from asset_dag_run_queue where target_dag_id = ?", (dag_id,)).fetchone()[0]


def test_two_iterations_chained_through_model_registration_events(airflow_home, scripted, tmp_path):
    """register_model emits the asset event; each diagnosis run takes its target from it.

    ``airflow dags test`` runs one DAG and starts no scheduler, so it never creates the
    asset-triggered run itself. The test checks that the event is queued for the diagnosis DAG
    (what the scheduler turns into a run) and then runs the diagnosis DAG, whose first task reads
    the registration from the asset's events - the extra the scheduler would have handed over.
    """
    scripted.reset()
    scripted.script(RULES)
    root = f"file://{tmp_path / 'data'}"
    env = {**connection_env(scripted.base_url), "INFINISYNTH_ROOT": root}
    for args in (("dags", "reserialize"), ("dags", "unpause", "deficiency_diagnosis")):
        result = airflow_home.run(*args, extra_env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    conf = {"diagnosis_source": str(write_set(tmp_path)), "max_targeted": 2, "shard_size": 4, "merge_similarity": 1.0, "quality_samples": 1}

    for number, model in ((1, "model-v1"), (2, "model-v2")):
        before = queued_for(airflow_home, "deficiency_diagnosis")
        airflow_home.dags_test(
            "register_model", "2026-04-02", {"base_url": scripted.base_url, "model": model, "name": f"sft run {number}"}, env
        )
        assert queued_for(airflow_home, "deficiency_diagnosis") >= max(before, 1)  # the scheduler's queue has it
        output = airflow_home.dags_test("deficiency_diagnosis", f"2026-04-0{number + 1}", conf, env)
        assert f"iteration {number}" in output

    store = store_for(root)
    from infinisynth.diagnosis.iterations import history

    first, second = history(store)
    assert (first["iteration"], first["target_model"], first["trigger"]) == (1, "model-v1", "latest_registration")
    assert (second["iteration"], second["target_model"], second["previous_iteration"]) == (2, "model-v2", 1)
    assert first["status"] == second["status"] == "complete"
    assert json.loads(second["event"])["source_dag_id"] == "register_model"
    assert first["accuracy"] == second["accuracy"] == 0.25
    assert json.loads(second["ranking_json"])[0]["knowledge_area"] == "interval scheduling"
    report = (tmp_path / "data" / "diagnosis" / "reports" / second["partition"] / "report.md").read_text()
    assert "model-v1" in report and "model-v2" in report  # the history spans both iterations


def test_one_iteration_on_the_embedded_model_as_target_and_oracle(airflow_home, embedded_model, tmp_path):
    """SmolLM2 answers, judges and writes; its verdicts are poor, the machinery must still hold."""
    from infinisynth.model_server import MODEL_ALIAS, embedded_connection
    from infinisynth.prompts import PROJECT_ROOT

    root = f"file://{tmp_path / 'data'}"
    env = {"AIRFLOW_CONN_LLM_DEFAULT": json.dumps(embedded_connection(embedded_model)), "INFINISYNTH_ROOT": root}
    conf = {
        "target_base_url": embedded_model,
        "target_model": MODEL_ALIAS,
        "target_max_tokens": 150,
        "diagnosis_source": str(PROJECT_ROOT / "src" / "infinisynth" / "diagnosis" / "demo_set.jsonl"),
        "max_diagnosis_rows": 2,
        "max_targeted": 2,
        "top_groups": 2,
        "quality_samples": 1,
        "quality_threshold": 1.0,
    }

    airflow_home.dags_test("deficiency_diagnosis", "2026-04-05", conf, env, timeout=900)

    from infinisynth.diagnosis.iterations import history

    store = store_for(root)
    [iteration] = history(store)
    assert iteration["status"] == "complete" and iteration["target_model"] == MODEL_ALIAS
    part = iteration["partition"]
    funnel = {e["stage"]: e for e in store.partition("diagnosis", "dataset", part).manifest().meta["funnel"]}
    assert funnel["diagnosis_set"]["rows_out"] == 2 and funnel["answer"]["rows_in"] == 2
    for entry in funnel.values():  # every stage accounts for every input row
        assert entry["inputs_passed"] + entry["rejected"] == entry["rows_in"]
    assert funnel["verdict"]["usage"]["oracle/verdict"]["requests"] >= 2
    judged = iteration["judged"]
    assert judged == funnel["verdict"]["rows_out"] and (iteration["accuracy"] is None) == (judged == 0)
    groups = store.partition("diagnosis", "deficiencies", part).read()
    planned = store.partition("diagnosis", "targets", part).manifest().rows
    assert planned == (min(2, 2) if groups.num_rows else 0)
    for row in store.partition("diagnosis", "dataset", part).read().to_pylist():
        assert row["origin"] == "diagnosis" and row["deficiency"]["group_id"] and row["messages"][1]["content"].strip()
