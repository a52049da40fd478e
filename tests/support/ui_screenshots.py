"""The screenshots of the run report in docs/img/, made for real: ``python -m tests.support.ui_screenshots``.

Runs the three pipelines with ``airflow dags test`` against the scripted model (two code nights,
so the trends have a line; a subject pool whose tags follow a heavy-tailed distribution, so the
degree distribution has a fit), starts the api-server with the plugin, signs in with headless
chromium and saves each report's page. Takes a few minutes; needs nothing but this checkout.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from infinisynth.ui_report import report_path, ui_run_url
from tests.support import browser
from tests.support.airflow import REPO, AirflowHome, make_airflow_home, running_api_server
from tests.support.fixtures import connection_env
from tests.support.servers import scripted_openai

USER, PASSWORD = "admin", "screenshots-only"
PRICE = {"input": 0.5, "output": 1.5}
VOCABULARY = [
    f"{word}"
    for word in "python recursion sorting graphs hashing parsing regex sql joins indexing caching concurrency threads async io files json csv http rest auth testing mocking profiling memory strings unicode dates math algebra geometry statistics probability".split()
]


def subject_pool(directory: Path, rows: int = 40, seed: int = 7) -> tuple[Path, list[dict[str, Any]]]:
    """A pool whose tags are drawn with Zipf-like weights (a few common, many rare), and the
    tagger's scripted answers for it."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.2 for rank in range(len(VOCABULARY))]
    pool, rules = [], []
    for i in range(rows):
        tags = sorted(set(rng.choices(VOCABULARY, weights, k=rng.randint(1, 5))))
        marker = f"POOLMARK_{i:03d}"
        pool.append({"instruction": f"{marker}: a task about {', '.join(tags)} number {i}.", "response": f"An answer about {tags[0]}."})
        rules.append(
            {
                "match": ["List the fine-grained tags", marker],
                "actions": [{"json": {"tags": [{"tag": t, "explanation": "needed"} for t in tags]}}],
            }
        )
    path = directory / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pool))
    return path, rules


def run_pipelines(home: AirflowHome, work: Path, root: str) -> None:
    import tests.test_diagnosis_dag as diagnosis_dag
    from tests.test_code_instruct_dag import write_seed_file
    from tests.test_ui_report_browser import scripted_rules

    with scripted_openai() as server:
        env = {**connection_env(server.base_url, max_invalid_retries=1, price=PRICE), "INFINISYNTH_ROOT": root}
        server.script(scripted_rules())
        conf = {"seed_source": str(write_seed_file(work)), "max_seeds": 100, "shard_size": 3, "holdout_fraction": 0.3}
        for ds in ("2026-01-01", "2026-01-02"):
            home.dags_test("code_instruct", ds, conf, env)
        pool, tagging = subject_pool(work)
        server.reset()
        server.script(
            [{"match": ["Rate its difficulty", "POOLMARK_"], "actions": [{"json": {"difficulty": 3, "rationale": "easy"}}]}, *tagging]
        )
        subject_conf = {
            "pool_source": str(pool),
            "shard_size": 10,
            "noise_floor": 1,
            "long_tail_frequency": 3,
            "generations": 2,
            "max_followups": 1,
            "max_seeds": 12,
        }
        home.dags_test("subject_instruct", "2026-01-02", subject_conf, env)
        server.reset()
        server.script(diagnosis_dag.RULES)
        diagnosis_conf = {
            "target_base_url": server.base_url,
            "target_model": "model-under-test",
            "diagnosis_source": str(diagnosis_dag.write_set(work)),
            "max_targeted": 6,
            "shard_size": 2,
            "merge_similarity": 1.0,
        }
        home.dags_test("deficiency_diagnosis", "2026-01-02", diagnosis_conf, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ui-screenshots-") as tmp:
        work = Path(tmp)
        home = make_airflow_home(work / "home")
        root = f"file://{work / 'data'}"
        run_pipelines(home, work, root)
        runs = {row["dag_id"]: row["run_id"] for row in home.query("SELECT dag_id, run_id FROM dag_run ORDER BY run_after")}
        with running_api_server(home, root, work, USER, PASSWORD) as base:
            args.out.mkdir(parents=True, exist_ok=True)
            shoot(base, runs, args.out)


def shoot(base: str, runs: dict[str, str], out: Path) -> None:
    from selenium.webdriver.common.by import By

    names = {
        "code_instruct": "ui-report-run.png",
        "subject_instruct": "ui-report-subject.png",
        "deficiency_diagnosis": "ui-report-diagnosis.png",
    }
    with browser.chromium() as driver:
        browser.login(driver, base, USER, PASSWORD)
        for dag_id, name in names.items():
            driver.set_window_size(1400, 1000)
            driver.get(base + report_path(dag_id, runs[dag_id]))
            browser.wait_until(
                lambda: driver.execute_script("return document.body.dataset.charts || document.body.dataset.chartsError"), 60, "charts"
            )
            driver.set_window_size(1400, min(9000, driver.execute_script("return document.body.scrollHeight") + 40))
            driver.save_screenshot(str(out / name))
            print(f"wrote {out / name}")
        driver.set_window_size(1400, 1000)
        driver.get(base + report_path("code_instruct", runs["code_instruct"]))
        browser.wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "a.reason-link[data-reason=invalid_output]"), 30, "a reason link")
        driver.find_element(By.CSS_SELECTOR, "a.reason-link[data-reason=invalid_output]").click()
        browser.wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "pre.raw-answer"), 30, "the sample")
        driver.save_screenshot(str(out / "ui-report-rejected.png"))
        driver.get(ui_run_url("code_instruct", runs["code_instruct"], base))
        driver.switch_to.frame(browser.wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "iframe"), 60, "the tab's iframe"))
        browser.wait_until(lambda: driver.execute_script("return document.body.dataset.charts"), 60, "the charts in the tab")
        driver.switch_to.default_content()
        driver.save_screenshot(str(out / "ui-report-tab.png"))
        driver.get(f"{base}/plugin/synthesis")
        driver.switch_to.frame(browser.wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "iframe"), 60, "the Synthesis page"))
        browser.wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "a.report-link"), 30, "the runs")
        driver.switch_to.default_content()
        driver.save_screenshot(str(out / "ui-synthesis-nav.png"))
        print(f"wrote the tab, the sample and the nav page to {out}")


if __name__ == "__main__":
    main()
