"""The run report in a real browser: a real ``dags test`` run of code_instruct (scripted model,
one answer a ``<script>``), the api-server with the plugin over its data, Debian's headless
chromium signing in through the UI's login form, opening the report, waiting for the charts and
reading the numbers back from the page and from the charts; a request without a session is refused.

``INFINISYNTH_SCREENSHOTS=1`` writes the screenshots to ``docs/img/`` (else to the test's tmp dir).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tests.test_code_instruct_dag as code_dag
from infinisynth.settings import store_for
from infinisynth.ui_report import report_path, ui_run_url
from tests.support import browser
from tests.support.airflow import REPO, make_airflow_home, running_api_server
from tests.support.fixtures import connection_env
from tests.support.servers import scripted_openai

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not browser.available(), reason="needs /usr/bin/chromium and chromedriver")]

DS = "2026-01-02"
USER, PASSWORD = "reporter", "report-test-password"
SCRIPT_ANSWER = "{not json <script>window.__xss = 1</script>"
PRICE = {"input": 0.5, "output": 1.5}  # dollars per million tokens: the report shows a real cost


def scripted_rules() -> list[dict[str, Any]]:
    """The code DAG test's scenario (every kind of rejection), with one model answer a script."""
    return [
        {
            "match": "LEAKY_marker",
            "actions": [{"json": {"problem": "Solve this: " + code_dag.SEEDS[6]["seed"] + " and explain it in detail."}}],
        },
        {"match": "BROKEN_marker", "actions": [{"content": SCRIPT_ANSWER}]},
        {"match": "def add_0(", "actions": [{"json": {"problem": code_dag.LOW_QUALITY}}]},
        {"match": ["LOWQ_MARK", "Score the problem"], "actions": [{"json": {**code_dag.LOW_SCORES, "rationale": "trivial"}}]},
        {"match": "def add_1(", "actions": [{"json": {"problem": code_dag.BAD_CODE}}]},
        {"match": "def add_2(", "actions": [{"json": {"problem": code_dag.NO_CODE}}]},
        {"match": ["BADCODE_MARK", "Solve the following programming problem"], "actions": [{"content": code_dag.BROKEN_PYTHON}]},
        {"match": ["NOCODE_MARK", "Solve the following programming problem"], "actions": [{"content": "Just loop and keep the largest."}]},
        *code_dag.GOOD_ANSWERS,
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished code_instruct run, and the api-server (with the plugin) over its data."""
    work = tmp_path_factory.mktemp("ui-report")
    home = make_airflow_home(work / "home")
    root = f"file://{work / 'data'}"
    with scripted_openai() as server:
        server.script(scripted_rules())
        env = {**connection_env(server.base_url, max_invalid_retries=1, price=PRICE), "INFINISYNTH_ROOT": root}
        conf = {"seed_source": str(code_dag.write_seed_file(work)), "max_seeds": 100, "shard_size": 3, "holdout_fraction": 0.3}
        home.dags_test("code_instruct", DS, conf, env)
    [run] = home.query("SELECT run_id FROM dag_run WHERE dag_id = 'code_instruct'")
    tasks = {row["task_id"] for row in home.query("SELECT task_id FROM task_instance WHERE run_id = ?", run["run_id"])}

    with running_api_server(home, root, work, USER, PASSWORD) as base:
        shots = REPO / "docs" / "img" if os.environ.get("INFINISYNTH_SCREENSHOTS") else work
        yield {
            "base": base,
            "run_id": run["run_id"],
            "store": store_for(root),
            "tasks": tasks,
            "shots": shots,
            "log": work / "api-server.log",
        }


def test_without_a_session_the_report_is_refused(served):
    base, run_id = served["base"], served["run_id"]
    path = report_path("code_instruct", run_id)
    for url in (
        f"{base}/synthesis/",
        f"{base}{path}",
        f"{base}/synthesis/api{path[len('/synthesis') :]}",
        f"{base}{path}/rejected/reverse",
    ):
        for cookies in ({}, {"_token": "not-a-token"}):
            response = httpx.get(url, cookies=cookies, timeout=30)
            assert response.status_code in (401, 403), (url, response.status_code)
            assert "rows_in" not in response.text and "invalid_output" not in response.text


def test_the_report_in_the_browser_shows_the_manifests_numbers(served):
    from selenium.webdriver.common.by import By

    base, run_id, store, shots = served["base"], served["run_id"], served["store"], served["shots"]
    shots.mkdir(parents=True, exist_ok=True)
    manifest = store.partition("code_instruct", "dataset", DS).manifest()
    funnel = {entry["stage"]: entry for entry in manifest.meta["funnel"]}
    stage_usage = [
        u for table in ("seeds", "reverse", "seed_quality", "keywords", "backfeed", "quality", "respond", "verify", "combinations")
        for u in store.partition("code_instruct", table, DS).manifest().meta["funnel"].get("usage", {}).values()
    ]  # fmt: skip

    with browser.chromium() as driver:
        browser.login(driver, base, USER, PASSWORD)
        driver.get(base + report_path("code_instruct", run_id))
        browser.wait_until(
            lambda: driver.execute_script("return document.body.dataset.charts || document.body.dataset.chartsError"), 60, "the charts"
        )
        assert driver.execute_script("return document.body.dataset.chartsError || null") is None
        assert int(driver.execute_script("return document.body.dataset.charts")) >= 10

        # The funnel table, stage by stage, is the manifest's.
        for row in driver.find_elements(By.CSS_SELECTOR, "#funnel-table tbody tr"):
            stage = row.get_attribute("data-stage")
            if stage not in funnel:
                continue
            cells = {c: int(row.find_element(By.CSS_SELECTOR, f"td.{c}").text) for c in ("in", "passed", "out", "rejected")}
            entry = funnel[stage]
            assert cells == {
                "in": entry["rows_in"],
                "passed": entry["inputs_passed"],
                "out": entry["rows_out"],
                "rejected": entry["rejected"],
            }, stage
        # So is what the funnel chart drew, and the rejection reasons chart.
        traces = driver.execute_script("return document.getElementById('chart-funnel').data.map(t => [t.name, t.x, t.y])")
        drawn = {name: dict(zip(x, y)) for name, x, y in traces}
        for stage, entry in funnel.items():
            assert (drawn["in"][stage], drawn["out"][stage], drawn["rejected"][stage]) == (
                entry["rows_in"],
                entry["rows_out"],
                entry["rejected"],
            )
        reasons = driver.execute_script("return document.getElementById('chart-reasons').data.map(t => [t.name, t.x, t.y])")
        drawn_reasons = {(stage, name): n for name, x, y in reasons for stage, n in zip(x, y) if n}
        assert drawn_reasons == {(s, r): n for s, e in funnel.items() for r, n in e["rejected_by_reason"].items()}
        assert drawn_reasons[("verify", "lint_error")] == 1 and drawn_reasons[("reverse", "invalid_output")] == 1
        # The lint gate's discard rate per language, and the run's tokens and dollars.
        lint = driver.execute_script("return document.getElementById('chart-lint').data[0]")
        assert dict(zip(lint["x"], lint["y"])) == {k: v["rate"] for k, v in funnel["verify"]["discard_by_language"].items()}
        assert int(driver.find_element(By.ID, "total-tokens").text) == sum(u["total_tokens"] for u in stage_usage)
        dollars = sum(u["dollars"] for u in stage_usage)
        assert dollars > 0 and driver.find_element(By.ID, "total-dollars").text == f"{dollars:.4f}"
        assert int(driver.find_element(By.ID, "published-rows").text) == manifest.rows
        complexity = {
            r.get_attribute("data-origin"): r.find_element(By.CSS_SELECTOR, "td.mean").text
            for r in driver.find_elements(By.CSS_SELECTOR, "#complexity-table tbody tr")
        }
        assert complexity == {origin: str(v["mean"]) for origin, v in manifest.meta["complexity_by_origin"].items()}
        drawn_tasks = driver.execute_script("return document.getElementById('chart-wall').data[0].y")
        assert sorted(drawn_tasks) == sorted(served["tasks"])  # every task of the run, once (a mapped task's instances together)
        api = driver.execute_script("return fetch(document.getElementById('report').dataset.api).then(r => r.text())")
        assert json.loads(api)["funnel"] and "sk-test-SECRET-dag" not in api + driver.page_source  # the model's API key, never
        driver.set_window_size(1400, min(9000, driver.execute_script("return document.body.scrollHeight") + 40))
        driver.save_screenshot(str(shots / "ui-report-run.png"))
        driver.set_window_size(1400, 1000)

        # A reason links to its sample: the model's script is shown as text, and never runs.
        driver.find_element(By.CSS_SELECTOR, "#funnel-table tr[data-stage=reverse] a.reason-link[data-reason=invalid_output]").click()
        browser.wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "pre.raw-answer"), 30, "the rejected sample")
        assert driver.find_element(By.CSS_SELECTOR, "pre.raw-answer").text == SCRIPT_ANSWER
        assert driver.execute_script("return window.__xss === undefined")
        assert "BROKEN_marker" in driver.find_element(By.CSS_SELECTOR, "pre.input").text
        assert "sk-test-SECRET-dag" not in driver.page_source
        driver.save_screenshot(str(shots / "ui-report-rejected.png"))

        # Inside the Airflow UI: the run's "Synthesis report" tab, and the "Synthesis" nav entry.
        driver.get(ui_run_url("code_instruct", run_id, base))
        frame = browser.wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "iframe"), 60, "the report's iframe")
        assert report_path("code_instruct", run_id) in frame.get_attribute("src")
        driver.switch_to.frame(frame)
        browser.wait_until(lambda: driver.execute_script("return document.body.dataset.charts"), 60, "the charts in the tab")
        driver.switch_to.default_content()
        driver.save_screenshot(str(shots / "ui-report-tab.png"))
        driver.get(f"{base}/plugin/synthesis")
        frame = browser.wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "iframe"), 60, "the Synthesis page")
        driver.switch_to.frame(frame)
        link = browser.wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "a.report-link"), 30, "a run's report link")
        assert link.get_attribute("href").endswith(report_path("code_instruct", run_id))
        driver.switch_to.default_content()
        assert driver.find_element(By.XPATH, "//*[normalize-space(text())='Synthesis']")  # the nav entry
        driver.save_screenshot(str(shots / "ui-synthesis-nav.png"))
