"""The run report's data and web app, without Airflow: a store written through the real commit
(``shards.commit_stage``), the app behind a stand-in for Airflow's authentication."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from fastapi import HTTPException, Request
from fastapi.testclient import TestClient

from infinisynth.diagnosis import iterations
from infinisynth.records import REJECTED_SCHEMA
from infinisynth.shards import commit_stage
from infinisynth.storage import Store
from infinisynth.ui_report import data as report_data
from infinisynth.ui_report import report_url, ui_run_url
from infinisynth.ui_report.app import Backend, RunInfo, create_app

DS = "2026-03-04"
RUN_ID = "scheduled__2026-03-04T00:00:00+00:00"
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("problem", pa.string())])
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="alert(1)">'
KEY = "sk-test-SECRETKEY123456"


def usage(requests: int, prompt: int, completion: int, dollars: float) -> dict[str, Any]:
    return {"requests": requests, "prompt_tokens": prompt, "completion_tokens": completion, "dollars": dollars}


def write_stage(
    store: Store, stage: str, ds: str, rows_in: int, out: int, rejects: list[tuple[str, str]], use: dict[str, Any]
) -> dict[str, Any]:
    """One committed stage: ``out`` rows out, ``rejects`` as (reason, raw answer), through commit_stage."""
    output = store.partition("code_instruct", stage, ds).write_table(
        0, pa.Table.from_pylist([{"id": f"{stage}-{i}", "problem": "p"} for i in range(out)], schema=SCHEMA), SCHEMA
    )
    rejected_rows = [
        {
            "id": f"{stage}-r{i}",
            "stage": stage,
            "reason": reason,
            "detail": f"detail of {reason}",
            "raw_answer": raw,
            "evidence_json": json.dumps({"quality_scores": {"specificity": 2.0, "complexity": 3.0}}) if reason == "low_quality" else None,
            "input_json": json.dumps({"problem": f"input {i}", "api_key": KEY, "lang": "python"}),
        }
        for i, (reason, raw) in enumerate(rejects)
    ]
    rejected = store.rejected("code_instruct", stage, ds).write_table(
        0, pa.Table.from_pylist(rejected_rows, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    by_reason: dict[str, int] = {}
    for reason, _ in rejects:
        by_reason[reason] = by_reason.get(reason, 0) + 1
    result = {
        "shard": 0,
        "rows_in": rows_in,
        "output": output.to_dict(),
        "rejected": rejected.to_dict(),
        "rejected_by_reason": by_reason,
        "usage": use,
        "passed": rows_in - len(rejects),
    }
    return commit_stage(store, "code_instruct", stage, ds, SCHEMA, [result])


@pytest.fixture
def store(tmp_path) -> Store:
    return populate(Store(f"file://{tmp_path / 'data'}"))


def populate(store: Store) -> Store:
    """Two nights of code_instruct: reverse and quality committed, then the published dataset."""
    for ds, scale in (("2026-03-03", 1), (DS, 2)):
        reverse = write_stage(
            store,
            "reverse",
            ds,
            5 * scale,
            5 * scale - 2,
            [("invalid_output", HOSTILE), ("leaks_snippet", "copied")],
            {"generator/reverse": usage(6 * scale, 600, 200, 0.01 * scale)},
        )
        quality = write_stage(
            store, "quality", ds, 3 * scale, 3 * scale - 1, [("low_quality", "2/10")], {"judge/quality": usage(9, 900, 300, 0.02)}
        )
        funnel = [reverse, quality]
        dataset = store.partition("code_instruct", "dataset", ds).write_table(
            0, pa.Table.from_pylist([{"id": "d", "problem": "p"}], schema=SCHEMA), SCHEMA
        )
        store.partition("code_instruct", "dataset", ds).commit(
            [dataset],
            SCHEMA,
            {"funnel": funnel, "complexity_by_origin": {"seed": {"mean": 3.5, "problems": 2}, "reverse": {"mean": 6.0, "problems": 3}}},
        )
    return store


class Session:
    """Stand-in for Airflow's authentication: a request with ``Authorization: Bearer ok`` is a user."""

    def __init__(self, readable: set[str]):
        self.readable = readable

    def user(self, request: Request) -> str:
        if request.headers.get("authorization") != "Bearer ok":
            raise HTTPException(401, "Not authenticated")
        return "alice"

    def can_read(self, user: Any, dag_id: str) -> bool:
        return dag_id in self.readable


def client(store: Store, readable: set[str] = frozenset(report_data.PIPELINES), token: str | None = "ok") -> TestClient:  # type: ignore[assignment]
    session = Session(set(readable))
    run = RunInfo(
        "code_instruct",
        RUN_ID,
        datetime(2026, 3, 4, tzinfo=UTC),
        conf={"storage_root": store.root_url},
        state="success",
        task_instances=[
            {
                "task_id": "reverse_construct",
                "map_index": 0,
                "start_date": "2026-03-04T01:00:00",
                "end_date": "2026-03-04T01:00:10",
                "duration": 10.0,
            }
        ],
    )
    backend = Backend(
        user=session.user,
        can_read=session.can_read,
        run=lambda dag_id, run_id: run if (dag_id, run_id) == ("code_instruct", RUN_ID) else None,
        recent_runs=lambda dag_ids, limit: [run] if "code_instruct" in dag_ids else [],
        store=lambda root: store if root in (None, store.root_url) else Store(root),
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(create_app(backend), headers=headers)


def test_the_report_carries_the_manifests_numbers(store):
    ref = report_data.resolve_run(store, "code_instruct", RUN_ID, datetime(2026, 3, 4, tzinfo=UTC))
    report = report_data.run_report(store, ref)
    manifest = store.partition("code_instruct", "dataset", DS).manifest().meta["funnel"]
    assert [e["stage"] for e in report["funnel"]] == ["reverse", "quality"]
    for entry, recorded in zip(report["funnel"], manifest, strict=True):
        for key in ("rows_in", "inputs_passed", "rows_out", "rejected", "rejected_by_reason"):
            assert entry[key] == recorded[key], key
    assert report["published_rows"] == 1
    reverse = {u["key"]: u for u in report["usage"]}["generator/reverse"]
    assert (reverse["requests"], reverse["prompt_tokens"], reverse["completion_tokens"], reverse["dollars"]) == (12, 600, 200, 0.02)
    assert report["totals"]["tokens"] == 600 + 200 + 900 + 300 and report["totals"]["rejected"] == 3
    # Quality: the passed rows have no scores here; the rejected one's evidence does.
    assert report["quality"]["dimensions"]["specificity"][2] == 1 and report["quality"]["problems"] == 1
    assert {c["origin"]: (c["mean"], c["paper"]) for c in report["complexity"]} == {
        "seed": (3.5, 3.17),
        "reverse": (6.0, 5.85),
        "backfeed": (None, 6.83),
    }
    # Trends: both nights, oldest first, each night's own numbers.
    assert [(t["ds"], t["published"]) for t in report["trends"]] == [("2026-03-03", 1), (DS, 1)]
    assert report["trends"][0]["discard_rate"] == round(3 / 8, 4) and report["trends"][1]["dollars"] == pytest.approx(0.04)


def test_wall_time_per_task_spans_its_mapped_instances():
    rows = report_data.wall_times(
        [
            {"task_id": "a", "start_date": "2026-01-01T00:00:00", "end_date": "2026-01-01T00:00:05", "duration": 5},
            {"task_id": "a", "start_date": "2026-01-01T00:00:02", "end_date": "2026-01-01T00:00:09", "duration": 7},
            {"task_id": "b", "start_date": "2026-01-01T00:00:10", "end_date": None, "duration": None},
        ]
    )
    assert rows == [
        {"task_id": "a", "start": "2026-01-01T00:00:00", "wall_seconds": 9.0, "run_seconds": 12.0, "instances": 2},
        {"task_id": "b", "start": "2026-01-01T00:00:10", "wall_seconds": None, "run_seconds": 0.0, "instances": 1},
    ]


def test_a_diagnosis_run_reads_its_iteration_partition(tmp_path):
    store = Store(f"file://{tmp_path}")
    target = {"model": "m", "base_url": "https://user:hunter2@models.example/v1"}
    it = iterations.claim(
        store, run_id="asset_triggered__1", date="2026-04-01", target=target, trigger="params", event=None, source="set.jsonl"
    )
    ref = report_data.resolve_run(store, "deficiency_diagnosis", "asset_triggered__1", None)
    assert (ref.pipeline, ref.ds, ref.iteration) == ("diagnosis", it["partition"], 1)
    with pytest.raises(report_data.UnknownRun):
        report_data.resolve_run(store, "deficiency_diagnosis", "another_run", None)
    with pytest.raises(report_data.UnknownRun):
        report_data.resolve_run(store, "some_other_dag", "x", "2026-01-01")


def test_the_page_shows_the_numbers_and_links_each_reason_to_its_sample(store):
    http = client(store)
    page = http.get(f"/runs/code_instruct/{RUN_ID}")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'data-stage="reverse"' in html and '<td class="in">10</td>' in html and '<td class="rejected">2</td>' in html
    assert "/rejected/reverse?reason=invalid_output" in html
    assert http.get("/static/plotly.min.js").status_code == 200 and http.get("/static/report.js").status_code == 200
    report = http.get(f"/api/runs/code_instruct/{RUN_ID}").json()
    assert report["wall_times"][0]["wall_seconds"] == 10.0 and report["state"] == "success"
    index = http.get("/")
    assert index.status_code == 200 and "/runs/code_instruct/scheduled__2026-03-04T00%3A00%3A00%2B00%3A00" in index.text


def test_rejected_samples_are_escaped_and_never_show_a_key(store):
    http = client(store)
    page = http.get(f"/runs/code_instruct/{RUN_ID}/rejected/reverse", params={"reason": "invalid_output"})
    assert page.status_code == 200
    assert "<script>window.__pwned" not in page.text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text
    assert KEY not in page.text and "input 0" in page.text
    sample = http.get(f"/api/runs/code_instruct/{RUN_ID}/rejected/reverse", params={"reason": "invalid_output"}).json()
    assert sample["matching"] == 1 and sample["total"] == 2 and sample["rows"][0]["raw_answer"] == HOSTILE
    assert KEY not in json.dumps(sample)
    assert http.get(f"/runs/code_instruct/{RUN_ID}/rejected/..%2F..%2Fsecrets").status_code == 404
    assert http.get(f"/api/runs/code_instruct/{RUN_ID}/rejected/_staging").status_code == 404


def test_no_session_no_data_and_no_access_no_report(store):
    anonymous = client(store, token=None)
    for path in (
        "/",
        f"/runs/code_instruct/{RUN_ID}",
        f"/api/runs/code_instruct/{RUN_ID}",
        f"/api/runs/code_instruct/{RUN_ID}/rejected/reverse",
        "/static/plotly.min.js",
    ):
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert "reverse" not in response.text
    assert client(store, token="forged").get(f"/api/runs/code_instruct/{RUN_ID}").status_code == 401
    outsider = client(store, readable={"subject_instruct"})
    assert outsider.get(f"/api/runs/code_instruct/{RUN_ID}").status_code == 403
    assert "code_instruct" not in outsider.get("/").text
    assert client(store).get("/api/runs/code_instruct/no_such_run").status_code == 404
    assert client(store).get("/api/runs/code_instruct/latest").json()["run_id"] == RUN_ID  # the newest run


def test_redaction_of_credentials():
    assert report_data.redact("s3://AKIA:topsecret@bucket/x") == "s3://***@bucket/x"
    assert report_data.redact({"k": ["Bearer sk-abcdefghijkl"]}) == {"k": ["Bearer ***"]}
    assert report_data.redact("https://h/v1?api_key=abc&x=1") == "https://h/v1?***&x=1"


def test_report_url_for_the_demo(monkeypatch):
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__PORT", "8080")
    assert report_url("code_instruct", "manual__2026-01-02T00:00:00+00:00") == (
        "http://localhost:8080/synthesis/runs/code_instruct/manual__2026-01-02T00%3A00%3A00%2B00%3A00"
    )
    assert report_url("subject_instruct", base_url="http://h:1") == "http://h:1/synthesis/runs/subject_instruct/latest"
    assert ui_run_url("code_instruct", "r1", "http://h:1/") == "http://h:1/dags/code_instruct/runs/r1/plugin/synthesis-run"


def test_the_plugin_is_thin_and_declares_the_nav_page_and_the_run_tab():
    """Every Airflow component imports plugins (each task's process too): this one must not pull
    in the app, FastAPI's security module or pyarrow until the api-server serves a request."""
    import subprocess
    import sys

    code = (
        "import sys, json; sys.path.insert(0, 'plugins'); import synthesis_report as p; "
        "heavy = [m for m in ('infinisynth.ui_report.app', 'infinisynth.ui_report.airflow_backend', 'pyarrow', 'airflow.api_fastapi.core_api.security') if m in sys.modules]; "
        "print(json.dumps({'heavy': heavy, 'views': p.SynthesisReportPlugin.external_views, 'prefix': [a['url_prefix'] for a in p.SynthesisReportPlugin.fastapi_apps]}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1])
    )
    declared = json.loads(result.stdout.strip().splitlines()[-1])
    assert declared["heavy"] == [] and declared["prefix"] == ["/synthesis"]
    views = {v["destination"]: v for v in declared["views"]}
    assert views["nav"]["name"] == "Synthesis" and views["nav"]["href"] == "/synthesis/"
    assert views["dag_run"]["href"] == "/synthesis/runs/{DAG_ID}/{RUN_ID}"


def test_the_report_reads_s3_through_the_storage_connection_and_never_shows_its_secret():
    from infinisynth.settings import store_for
    from tests.support.s3 import moto_s3

    with moto_s3() as s3:
        lookup = lambda conn_id: s3.connection() if conn_id == "infinisynth_s3" else None  # noqa: E731
        store = populate(store_for(f"s3://{s3.bucket}/data", lookup))
        http = client(store)
        report = http.get(f"/api/runs/code_instruct/{RUN_ID}").json()
        assert report["storage"] == f"s3://{s3.bucket}/data"
        assert [(e["stage"], e["rows_in"], e["rejected"]) for e in report["funnel"]] == [("reverse", 10, 2), ("quality", 6, 1)]
        assert [t["ds"] for t in report["trends"]] == ["2026-03-03", DS]
        page = http.get(f"/runs/code_instruct/{RUN_ID}").text + http.get(f"/runs/code_instruct/{RUN_ID}/rejected/quality").text
        assert "low_quality" in page
        for text in (json.dumps(report), page):
            assert s3.secret not in text and s3.key not in text


def test_the_subject_section_reads_the_nights_report(tmp_path):
    store = Store(f"file://{tmp_path}")
    distribution = {"1": 8, "2": 3, "4": 1}
    report = {
        "vocabulary_tags": 12,
        "pool": {
            "rows": 30,
            "tags_per_domain": {"biology": {"photosynthesis": 5, "cells": 2}, "poetry": {"sonnet": 1}},
            "network": {
                "tags": 12,
                "edges": 9,
                "degree_distribution": distribution,
                "power_law": {"alpha": 2.5, "xmin": 2, "tail_nodes": 4},
            },
        },
        "dataset": {
            "rows": 0,
            "tags_per_domain": {},
            "network": {"degree_distribution": {}, "power_law": {"alpha": None, "reason": "too few"}},
        },
        "difficulty": {
            "before": {"mean": 3.0, "rows": 4},
            "after": {"mean": 6.5, "rows": 4},
            "by_generation": {"0": {"mean": 3.0, "rows": 4}, "1": {"mean": 6.5, "rows": 4}},
        },
        "selection": {"criteria": {"long_tail": {"rows": 3, "only_this": 2}}, "overlap": {"long_tail": {"long_tail": 3}}, "seeds": 3},
    }
    store.write_json(store.side_path("subject_instruct", "reports", DS, "report.json"), report)
    section = report_data.subject_section(store, DS)
    pool = section["scopes"]["pool"]
    assert pool["tags_per_domain"] == {"biology": 7, "poetry": 1} and pool["degrees"] == [1, 2, 4] and pool["degree_counts"] == [8, 3, 1]
    from scipy.special import zeta

    assert pool["fit_line"]["x"] == [2.0, 4.0]
    assert pool["fit_line"]["y"][0] == pytest.approx(4 / 12 * 2**-2.5 / zeta(2.5, 2))
    assert section["scopes"]["dataset"]["fit_line"] is None
    assert section["difficulty"]["by_generation"]["1"]["mean"] == 6.5 and section["selection"]["criteria"]["long_tail"]["only_this"] == 2
    assert report_data.subject_section(store, "2026-01-01") is None


def test_the_diagnosis_section_ranks_deficiencies_and_counts_targeted_rows(tmp_path):
    store = Store(f"file://{tmp_path}")
    target = {"model": "m", "base_url": "http://models/v1"}
    first = iterations.claim(store, run_id="r1", date="2026-04-01", target=target, trigger="params", event=None, source="s")
    iterations.save(store, {**first, "status": "complete", "accuracy": 0.5, "judged": 4, "correct": 2})
    second = iterations.claim(store, run_id="r2", date="2026-04-02", target=target, trigger="params", event=None, source="s")
    iterations.save(store, {**second, "status": "complete", "accuracy": 0.75, "judged": 4, "correct": 3})
    edge = {"rank": 1, "skill": "boundaries", "knowledge_area": "intervals", "error_type": "missed_edge_case"}
    ties = {"rank": 2, "skill": "ties", "knowledge_area": "aggregation", "error_type": "wrong_logic"}
    part = second["partition"]
    groups = [
        {
            **ties,
            "failures": 1,
            "prompts": 1,
            "share": 0.2,
            "examples": [{"diagnosis_id": "b", "description": "arbitrary key", "severity": "minor"}],
        },
        {
            **edge,
            "failures": 3,
            "prompts": 2,
            "share": 0.8,
            "examples": [{"diagnosis_id": "a", "description": "touching intervals", "severity": "major"}],
        },
    ]
    store.partition("diagnosis", "deficiencies", part).write_and_commit(pa.Table.from_pylist(groups))
    store.partition("diagnosis", "targeted", part).write_and_commit(
        pa.Table.from_pylist([{"deficiency": edge}] * 3 + [{"deficiency": ties}])
    )
    store.partition("diagnosis", "dataset", part).write_and_commit(pa.Table.from_pylist([{"deficiency": edge}] * 2))

    ref = report_data.resolve_run(store, "deficiency_diagnosis", "r2", None)
    section = report_data.diagnosis_section(store, ref)
    assert [(a["iteration"], a["accuracy"]) for a in section["accuracy"]] == [(1, 0.5), (2, 0.75)]
    assert [(d["rank"], d["label"], d["failures"]) for d in section["deficiencies"]] == [
        (1, "#1 intervals: boundaries", 3),
        (2, "#2 aggregation: ties", 1),
    ]
    assert section["deficiencies"][0]["examples"] == ["touching intervals (major, a)"]
    assert section["targeted_per_deficiency"] == [
        {"deficiency": "#1 intervals: boundaries", "planned": 3, "published": 2},
        {"deficiency": "#2 aggregation: ties", "planned": 1, "published": 0},
    ]


def test_the_test_gate_section_shows_pass_rates_per_language_and_the_failures(store):
    """The test gate's manifest figures (as its commit writes them) and its rejected rows."""
    from infinisynth.stages.execute import pass_rates

    stats = {
        "python": {"in": 4, "passed": 2, "failed": 1, "unverified": 1},
        "javascript": {"in": 2, "passed": 1, "error": 1},
    }
    rejects = [("tests_failed", "tests.py line 2: assert total([2, 2]) == 5", "python")]
    rejects.append(("tests_error", "TypeError: values is null (tests.js line 2)", "javascript"))
    rows = [
        {
            "id": f"x-{i}",
            "stage": "execute",
            "reason": reason,
            "detail": detail,
            "raw_answer": HOSTILE,
            "evidence_json": json.dumps({"test_verdict": reason.removeprefix("tests_")}),
            "input_json": json.dumps({"problem": "p", "lang": lang}),
        }
        for i, (reason, detail, lang) in enumerate(rejects)
    ]
    output = store.partition("code_instruct", "execute", DS).write_table(
        0, pa.Table.from_pylist([{"id": f"e-{i}", "problem": "p"} for i in range(4)], schema=SCHEMA), SCHEMA
    )
    rejected = store.rejected("code_instruct", "execute", DS).write_table(
        0, pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA), REJECTED_SCHEMA
    )
    result = {
        "shard": 0,
        "rows_in": 6,
        "output": output.to_dict(),
        "rejected": rejected.to_dict(),
        "rejected_by_reason": {"tests_failed": 1, "tests_error": 1},
        "usage": {},
        "passed": 4,
    }
    rates = pass_rates([stats])
    commit_stage(store, "code_instruct", "execute", DS, SCHEMA, [result], meta={"test_pass_by_language": rates})

    ref = report_data.resolve_run(store, "code_instruct", RUN_ID, datetime(2026, 3, 4, tzinfo=UTC))
    tests = report_data.run_report(store, ref)["tests"]
    by_language = {t["language"]: t for t in tests["by_language"]}
    assert by_language["python"]["rate"] == round(2 / 3, 4) and by_language["python"]["unverified"] == 1
    assert by_language["javascript"]["rate"] == 0.5 and by_language["javascript"]["run"] == 2
    assert tests["top_failures"]["python"] == [{"failure": "tests_failed: tests.py line 2: assert total([2, 2]) == 5", "count": 1}]

    html = client(store).get(f"/runs/code_instruct/{RUN_ID}").text
    assert '<section id="tests">' in html and 'data-language="javascript"' in html
    assert '<td class="rate">0.6667</td>' in html and "tests_error: TypeError: values is null" in html
