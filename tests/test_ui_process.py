"""The README's UI command, run as a user runs it: ``make ui`` (``airflow standalone`` with the
project's Airflow home) serves the UI and its REST API; every pipeline's Trigger form starts
valid from its default Params; the stack stays within what a 2-core laptop has.

It runs in the checkout's own ``.airflow`` home, as the README's command does; the one run it
triggers (on a paused DAG, so it never starts) is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psutil
import pytest

from infinisynth.processes import free_port
from tests.support.airflow import REPO, process_group
from tests.support.servers import wait_for_http

pytestmark = pytest.mark.slow

PIPELINES = ("code_instruct", "subject_instruct", "deficiency_diagnosis")
MAX_STACK_RSS_GB = 3.0


def form_problems(params: dict[str, dict[str, Any]]) -> list[str]:
    """What would keep the Trigger button disabled: a default that does not validate against its
    field's schema, or an empty field the schema does not allow to be empty (a required field)."""
    problems = []
    for name, param in params.items():
        schema, value = param.get("schema") or {}, param.get("value")
        allowed = schema.get("type", [])
        allowed = [allowed] if isinstance(allowed, str) else allowed
        if value in (None, "") and allowed and "null" not in allowed:
            problems.append(f"{name}: empty, and required by its schema {schema}")
            continue
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            problems.append(f"{name}: default {value!r} does not validate: {exc.message}")
    return problems


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "standalone.log"
    env = {**os.environ, "AIRFLOW__API__PORT": str(port)}
    env.pop("AIRFLOW_HOME", None)  # the Makefile's own home, as for a user
    base = f"http://127.0.0.1:{port}"
    with process_group(["make", "ui"], log, timeout=60, cwd=REPO, env=env) as process:
        try:
            wait_for_http(f"{base}/api/v2/monitor/health", timeout=180)
        except TimeoutError:
            raise AssertionError(f"`make ui` did not serve the UI:\n{log.read_text()[-4000:]}") from None
        passwords = REPO / ".airflow" / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 60
        while not passwords.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        yield base, json.loads(passwords.read_text()), process, log


def client(base: str, passwords: dict[str, str]) -> httpx.Client:
    username, password = next(iter(passwords.items()))
    token = httpx.post(f"{base}/auth/token", json={"username": username, "password": password}, timeout=30)
    assert token.status_code in (200, 201), token.text
    return httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=60)


def test_make_ui_serves_the_ui_and_every_pipeline_triggers_from_its_defaults(ui):
    base, passwords, _, log = ui
    assert httpx.get(base, timeout=30).status_code == 200  # the UI's page itself
    api = client(base, passwords)
    deadline = time.monotonic() + 120  # the dag-processor parses the DAG files after start-up
    while {d["dag_id"] for d in api.get("/dags").json()["dags"]} < set(PIPELINES):
        assert time.monotonic() < deadline, f"DAGs not parsed: {api.get('/dags').json()}\n{Path(log).read_text()[-3000:]}"
        time.sleep(2)

    for dag_id in PIPELINES:
        details = api.get(f"/dags/{dag_id}/details").json()
        assert details["params"], dag_id
        assert form_problems(details["params"]) == [], dag_id
        assert details["is_paused"], dag_id  # new DAGs start paused: the run below never starts
    # A setting with fixed choices is a dropdown in the form (the schema's enum reaches the UI).
    gate = api.get("/dags/code_instruct/details").json()["params"]["test_gate"]
    assert gate["schema"]["enum"] == ["off", "report", "enforce"] and gate["value"] in gate["schema"]["enum"]

    # The defaults are accepted as a run's conf by the server's own validation, as the form sends them.
    dag_id = "code_instruct"
    conf = {name: param["value"] for name, param in api.get(f"/dags/{dag_id}/details").json()["params"].items()}
    created = api.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf, "note": "test_ui_process"})
    assert created.status_code == 200, created.text
    assert api.delete(f"/dags/{dag_id}/dagRuns/{created.json()['dag_run_id']}").status_code == 204


def test_the_local_stack_fits_a_small_machine(ui):
    _, _, process, _ = ui
    time.sleep(5)  # the components settle after start-up
    tree = [process_ for process_ in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]]
    rss_gb = sum(p.memory_info().rss for p in tree if p.is_running()) / 1e9
    print(f"\nmake ui: {len(tree)} processes, {rss_gb:.2f} GB RSS")
    assert rss_gb < MAX_STACK_RSS_GB, [(p.pid, " ".join(p.cmdline())[:80]) for p in tree]
