"""The outage drill (issue 11's acceptance): an endpoint outage on one night of a backfill turns
that night red and nothing else; a ``--reprocess-behavior failed`` backfill mends exactly it.

Through a real scheduler (api-server, dag-processor, scheduler on LocalExecutor, a throwaway
Airflow home on a private PostgreSQL: SQLite's one writer refuses `backfill create` while the
scheduler writes) against the scripted server:

1. a backfill of three nights, one run at a time; every model call of the middle night gets HTTP
   500 (a rule per seed of that night: seeds are date-keyed, so only its prompts carry them);
   the first and last nights succeed, the middle one fails after its task retries, and none of
   its lost calls is published as a rejected row;
2. the endpoint restored, a backfill over the same three nights with ``--reprocess-behavior
   failed`` runs the middle night only (Airflow clears and re-queues its failed run: no new
   dag_run row, the same run re-assigned to the new backfill), which publishes every row; the
   other nights' files are byte-identical before and after.

And, without a scheduler (``airflow dags test``): a finished night re-runs with no model call and
byte-identical dataset files; an edited prompt file makes exactly its stage (and what follows it)
ask the model again.

The lint gate is on (in-process, on the worker), as in test_code_instruct_dag.py. The phases'
times and model calls are printed (``-s`` shows them) and carried in the assertion messages.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from infinisynth.llm.reasons import TRANSIENT_REASONS
from infinisynth.seeds import date_window, sample_magicoder
from infinisynth.settings import store_for
from tests.support.airflow import REPO, AirflowHome, make_airflow_home, running_scheduler
from tests.support.fixtures import connection_env
from tests.support.servers import ScriptedOpenAI, scripted_openai
from tests.support.services import running_postgres

pytestmark = pytest.mark.slow

DAG_ID = "code_instruct"
D1, D2, D3 = DATES = ("2026-01-02", "2026-01-03", "2026-01-04")  # windows 1..3 of the seed file
SEEDS_PER_NIGHT = 4
# 16 distinct snippets: windows 0..3 of 4 seeds each, so the three nights share no seed.
SEEDS = [
    {"lang": "python", "seed": f"def add_{i}(a, b):\n    total = a + b  # step {i}\n    return total\n", "index": i} for i in range(16)
]
CONF = {
    "max_seeds": SEEDS_PER_NIGHT,
    "shard_size": 2,  # two mapped tasks per model stage
    "quality_samples": 1,
    "holdout_fraction": 0,  # every verified pair is in the dataset
    "score_seed_problems": False,
    "lint_gate": True,
}
# Each stage's prompt has its own words, so the server counts calls per stage (rule names).
STAGE_MARKERS = {
    "reverse": "Below is a snippet of real",
    "keywords": "List the keywords of this problem",
    "backfeed": "Write one new programming problem to be solved in",
    "quality": "Score the problem from 1",
    "respond": "Solve the following programming problem in",
}
MODEL_STAGES = tuple(STAGE_MARKERS)
# An answer the lint gate passes; {prompt_digest} makes it differ with the prompt (a new prompt
# text, a new answer).
ANSWER = "Use a loop.\n\n```python\n# answer {prompt_digest}\ndef total(values):\n    result = 0\n    for value in values:\n        result += value\n    return result\n```\n"
HEALTHY = [
    {"match": marker, "name": stage, "actions": [{"content": ANSWER} if stage == "respond" else {"default": True}]}
    for stage, marker in STAGE_MARKERS.items()
]
RUN_TIMEOUT = 420  # seconds for the first backfill (three nights, one red after its retries)


def write_seed_file(directory: Path) -> Path:
    path = directory / "seeds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    return path


def night_seeds(seed_file: Path, ds: str) -> list[str]:
    """The seeds a night takes (its window of the file): what its reverse prompts quote."""
    return sample_magicoder(seed_file, size=SEEDS_PER_NIGHT, window=date_window(ds)).column("seed").to_pylist()


def outage(seeds: list[str]) -> list[dict[str, Any]]:
    """HTTP 500 for every prompt that quotes one of ``seeds`` (its first line names the function)."""
    return [{"match": seed.splitlines()[0], "name": "outage", "actions": [{"status": 500}]} for seed in seeds]


def calls(stats: dict[str, Any]) -> dict[str, int]:
    """Model calls per stage (and the outage's 500s) from the server's counters."""
    return {"total": stats["total"], **stats["by_rule"], "http_500": stats["by_status"].get("500", 0)}


def snapshot(data: Path, *dates: str) -> dict[str, bytes]:
    """Every file of the nights' partitions, anywhere under the root (tables, rejected, staging,
    retired, graph exports, reports): relative path -> bytes."""
    wanted = {f"ds={ds}" for ds in dates}
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file() and wanted & set(p.parts)}


def shard_files(data: Path, table: str, ds: str) -> dict[str, bytes]:
    """A committed table partition's data files by shard (``part-00001``), without the file's token."""
    folder = data / DAG_ID / table / f"ds={ds}"
    return {p.name.rsplit("-", 1)[0]: p.read_bytes() for p in sorted(folder.glob("part-*.parquet"))}


def rejected_reasons(data: Path, ds: str) -> dict[str, list[str]]:
    """Every rejected row of a night, by stage: its reasons."""
    store = store_for(f"file://{data}")
    found = {}
    for folder in sorted((data / DAG_ID / "rejected").glob(f"*/ds={ds}")):
        stage = folder.parent.name
        found[stage] = store.rejected(DAG_ID, stage, ds).read().column("reason").to_pylist()
    return found


# -- the metadata DB -----------------------------------------------------------------------------


def query(home: AirflowHome, sql: str, *args: Any) -> list[dict[str, Any]]:
    return home.query(sql, *args)


def dag_runs(home: AirflowHome) -> dict[str, dict[str, Any]]:
    """The DAG's runs by night (logical date)."""
    rows = query(
        home,
        "select id, run_id, run_type, state, logical_date, backfill_id, clear_number, start_date, end_date"
        " from dag_run where dag_id = ? order by id",
        DAG_ID,
    )
    return {row["logical_date"][:10]: row for row in rows}


def task_tries(home: AirflowHome, run_id: str) -> dict[str, tuple[str, int]]:
    rows = query(home, "select task_id, map_index, state, try_number from task_instance where dag_id = ? and run_id = ?", DAG_ID, run_id)
    return {f"{r['task_id']}[{r['map_index']}]": (r["state"], r["try_number"]) for r in rows}


def task_logs(home: AirflowHome, run_id: str, task_id: str) -> str:
    folder = Path(home.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(log.read_text(errors="replace") for log in sorted(folder.glob("**/*.log")))


def unfinished_detail(home: AirflowHome) -> str:
    """Runs and the tail of every unsuccessful task's last log: what a failing wait should show."""
    lines = []
    for ds, run in dag_runs(home).items():
        lines.append(f"{ds}: {run['state']} {run['run_id']}")
        for key, (state, try_number) in task_tries(home, run["run_id"]).items():
            if state != "success":
                lines.append(f"  {key}: {state} (try {try_number})")
                task_id = key.split("[")[0]
                folder = Path(home.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run['run_id']}" / f"task_id={task_id}"
                for log in sorted(folder.glob("**/*.log"))[-1:]:
                    lines.append(f"  --- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(lines)


def backfill(home: AirflowHome, env: dict[str, str], conf: dict[str, Any], *extra: str) -> None:
    args = ("backfill", "create", "--dag-id", DAG_ID, "--from-date", D1, "--to-date", D3, "--max-active-runs", "1")
    result = home.run(*args, "--dag-run-conf", json.dumps(conf), *extra, extra_env=env)
    assert result.returncode == 0, f"airflow {' '.join(args + extra)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def wait_for_backfill(home: AirflowHome, number: int, timeout: float) -> dict[str, Any]:
    """Poll the metadata DB until the DAG's ``number``-th backfill is complete (all its runs done)."""
    deadline = time.monotonic() + timeout
    while True:
        found = query(home, "select id, completed_at, reprocess_behavior from backfill where dag_id = ? order by id", DAG_ID)
        if len(found) >= number and found[number - 1]["completed_at"]:
            return found[number - 1]
        if time.monotonic() > deadline:
            raise AssertionError(f"backfill {number} not complete within {timeout:.0f}s: {found}\n{unfinished_detail(home)}")
        time.sleep(2)


# -- the drill -----------------------------------------------------------------------------------


def run_phase(
    home: AirflowHome,
    env: dict[str, str],
    conf: dict[str, Any],
    number: int,
    timeout: float,
    server: ScriptedOpenAI,
    figures: dict[str, Any],
    *extra: str,
) -> dict[str, Any]:
    """Backfill ``number`` of the drill (``extra``: its options) to its end: its backfill row; its
    wall time and the calls the server saw go into ``figures`` as ``phase<number>_s`` and ``_calls``."""
    started = time.monotonic()
    backfill(home, env, conf, *extra)
    row = wait_for_backfill(home, number, timeout)
    figures[f"phase{number}_s"] = round(time.monotonic() - started, 1)
    figures[f"phase{number}_calls"] = calls(server.stats())
    return row


def runs_ended(home: AirflowHome, states: dict[str, str], figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DAG's runs by date, once each date's run ended in its expected state."""
    runs = dag_runs(home)
    assert {ds: runs[ds]["state"] for ds in DATES} == states, f"{figures}\n{unfinished_detail(home)}"
    return runs


@pytest.fixture
def postgres_url():
    with running_postgres() as url:
        yield url


def test_an_outage_reddens_only_its_night_and_a_failed_only_backfill_mends_it(tmp_path, postgres_url):
    figures: dict[str, Any] = {}
    started = time.monotonic()
    # On PostgreSQL, as deployed: `backfill create` writes while the scheduler stack runs.
    home = make_airflow_home(tmp_path / "airflow", postgres_url)
    data = tmp_path / "data"
    seed_file = write_seed_file(tmp_path)
    conf = {**CONF, "seed_source": str(seed_file), "storage_root": f"file://{data}"}
    seeds = {ds: night_seeds(seed_file, ds) for ds in DATES}
    assert all(len(seeds[ds]) == SEEDS_PER_NIGHT for ds in DATES)
    assert not set(seeds[D2]) & (set(seeds[D1]) | set(seeds[D3]))  # the outage rules match D2's prompts only

    with scripted_openai() as server:
        server.script(outage(seeds[D2]) + HEALTHY)
        env = {
            # One client retry per call (backoff under a second), then the call is lost.
            **connection_env(server.base_url, max_retries=1),
            "INFINISYNTH_ROOT": "",
            # No scheduled run when the DAG is unpaused (catchup is off, but the latest interval
            # would still be run, with the default Params): backfill runs only.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }
        for args in (("dags", "reserialize"), ("dags", "unpause", DAG_ID)):
            result = home.run(*args, extra_env=env)
            assert result.returncode == 0, f"airflow {' '.join(args)}: {result.stderr[-2000:]}"
        figures["setup_s"] = round(time.monotonic() - started, 1)

        with running_scheduler(home, env, tmp_path) as scheduler_env:
            # -- phase 1: three nights, the middle one meets the outage ---------------------------
            run_phase(home, scheduler_env, conf, 1, RUN_TIMEOUT, server, figures)
            first = figures["phase1_calls"]
            print(f"\noutage drill, phase 1 (backfill {D1}..{D3}, {D2} down): {figures}")
            runs = runs_ended(home, {D1: "success", D2: "failed", D3: "success"}, figures)
            assert len(runs) == 3 and {r["run_type"] for r in runs.values()} == {"backfill"}
            # The model task failed on the transient share after all its tries, not on something else.
            red = task_tries(home, runs[D2]["run_id"])
            reverse_tries = {k: v for k, v in red.items() if k.startswith("reverse_construct[")}
            assert reverse_tries and all(state == "failed" and n == 3 for state, n in reverse_tries.values()), red
            log = task_logs(home, runs[D2]["run_id"], "reverse_construct")
            assert "got no answer (server_error=" in log and "max_transient_share=0.02" in log, log[-3000:]
            assert red["publish[-1]"][0] == "upstream_failed"
            # Every 500 was one of D2's calls (rows x 2 attempts x 3 tries), and D2 called nothing else.
            assert first["outage"] == first["http_500"] == SEEDS_PER_NIGHT * 2 * 3, figures
            # Nothing of D2's model stages was committed, and no lost call became a rejected row.
            assert not any((data / DAG_ID / stage / f"ds={D2}").exists() for stage in MODEL_STAGES)
            assert not (data / DAG_ID / "dataset" / f"ds={D2}").exists()
            d2_rejected = rejected_reasons(data, D2)
            assert not {reason for reasons in d2_rejected.values() for reason in reasons} & TRANSIENT_REASONS, d2_rejected
            assert set(d2_rejected) <= {"seeds"}, d2_rejected  # the seeds step committed (it calls no model)
            store = store_for(f"file://{data}")
            green = {ds: store.partition(DAG_ID, "dataset", ds).read().num_rows for ds in (D1, D3)}
            assert all(rows > 0 for rows in green.values()), green

            # -- phase 2: the endpoint is back; a backfill of the failed nights only --------------
            server.reset()
            server.script(HEALTHY)
            before = snapshot(data, D1, D3)
            tries_before = {ds: task_tries(home, runs[ds]["run_id"]) for ds in (D1, D3)}
            second = run_phase(home, scheduler_env, conf, 2, RUN_TIMEOUT / 2, server, figures, "--reprocess-behavior", "failed")
            mended_calls = figures["phase2_calls"]
            print(f"outage drill, phase 2 (--reprocess-behavior failed): {figures}")
            after_runs = runs_ended(home, {D1: "success", D2: "success", D3: "success"}, figures)
            # No new dag_run row: Airflow clears the failed run and re-queues it under the new
            # backfill; the green nights' runs are not touched.
            assert len(after_runs) == 3 and {ds: r["id"] for ds, r in after_runs.items()} == {ds: r["id"] for ds, r in runs.items()}
            assert after_runs[D2]["backfill_id"] == second["id"] and after_runs[D2]["clear_number"] == runs[D2]["clear_number"] + 1
            for ds in (D1, D3):
                assert after_runs[ds] == runs[ds]
                assert task_tries(home, runs[ds]["run_id"]) == tries_before[ds]
            planned = query(
                home, "select dag_run_id, exception_reason, logical_date from backfill_dag_run where backfill_id = ?", second["id"]
            )
            assert {r["logical_date"][:10]: (r["dag_run_id"], r["exception_reason"]) for r in planned} == {
                D1: (None, "already exists"),
                D2: (runs[D2]["id"], None),
                D3: (None, "already exists"),
            }, planned

    # D2 published every row: no pending row, no rejection, the whole funnel accounted for.
    manifest = store.partition(DAG_ID, "dataset", D2).manifest()
    meta = manifest.meta
    funnel = {entry["stage"]: entry for entry in meta["funnel"]}
    assert funnel["seeds"]["rows_out"] == SEEDS_PER_NIGHT
    assert all(e["pending"] == 0 and e["rejected"] == 0 and e["inputs_passed"] == e["rows_in"] for e in funnel.values()), funnel
    combinations = store.partition(DAG_ID, "combinations", D2).read().num_rows
    dataset = store.partition(DAG_ID, "dataset", D2).read().to_pylist()
    assert len(dataset) == manifest.rows == SEEDS_PER_NIGHT + combinations == funnel["verify"]["rows_out"], funnel
    assert {r["seed"] for r in dataset if r["origin"] == "reverse"} == set(seeds[D2])
    assert not {reason for reasons in rejected_reasons(data, D2).values() for reason in reasons}
    # What the server saw is what the funnel paid for: no call lost, none made twice.
    paid = sum(usage["requests"] for e in funnel.values() for usage in e["usage"].values())
    assert mended_calls["total"] == paid and mended_calls["http_500"] == 0 and "outage" not in mended_calls, (mended_calls, paid)
    assert mended_calls["reverse"] == SEEDS_PER_NIGHT and mended_calls["respond"] == len(dataset), mended_calls

    # The green nights' files, byte for byte.
    after = snapshot(data, D1, D3)
    assert sorted(after) == sorted(before), sorted(set(after) ^ set(before))
    changed = [path for path in before if before[path] != after[path]]
    assert not changed, changed
    figures["green_files"] = len(before)
    figures["total_s"] = round(time.monotonic() - started, 1)
    print(f"outage drill: {figures}")


# -- without a scheduler: the response cache across re-runs and a prompt edit ------------------


def run_night(airflow_home: AirflowHome, server: ScriptedOpenAI, ds: str, conf: dict, env: dict) -> dict[str, int]:
    server.reset()
    server.script(HEALTHY)
    airflow_home.dags_test(DAG_ID, ds, conf, env)
    return calls(server.stats())


def test_a_rerun_is_free_and_an_edited_prompt_reasks_only_its_stage_and_after(airflow_home, fresh_scripted, tmp_path):
    ds = "2026-01-05"
    data = tmp_path / "data"
    conf = {**CONF, "seed_source": str(write_seed_file(tmp_path)), "storage_root": f"file://{data}"}
    env = {**connection_env(fresh_scripted.base_url, max_retries=1), "INFINISYNTH_ROOT": ""}

    timings = {}
    phase = time.monotonic()
    first = run_night(airflow_home, fresh_scripted, ds, conf, env)
    timings["first_s"] = round(time.monotonic() - phase, 1)
    assert all(first.get(stage, 0) > 0 for stage in MODEL_STAGES), first
    published = {table: shard_files(data, table, ds) for table in ("dataset", *MODEL_STAGES)}
    rows = sorted(store_for(f"file://{data}").partition(DAG_ID, "dataset", ds).read().to_pylist(), key=lambda r: r["id"])
    assert rows and published["dataset"]

    # A finished night, run again with nothing changed: no model call, the same bytes.
    phase = time.monotonic()
    again = run_night(airflow_home, fresh_scripted, ds, conf, env)
    timings["rerun_s"] = round(time.monotonic() - phase, 1)
    assert again["total"] == 0, again
    for table, files in published.items():
        assert shard_files(data, table, ds) == files, f"{table} changed on a re-run"

    # One prompt file edited (the response prompt): only that stage asks again; upstream is free.
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "include" / "prompts", prompts)
    response = prompts / "response.toml"
    text = response.read_text()
    assert "Give a short explanation of the approach" in text
    response.write_text(text.replace("Give a short explanation of the approach", "Give a brief explanation of the approach"))
    phase = time.monotonic()
    edited = run_night(airflow_home, fresh_scripted, ds, conf, {**env, "INFINISYNTH_PROMPTS_DIR": str(prompts)})
    timings["edited_s"] = round(time.monotonic() - phase, 1)
    print(f"\nre-run and prompt edit: calls first={first} rerun={again} edited={edited}; {timings}")
    assert edited == {"total": len(rows), "respond": len(rows), "http_500": 0}, edited
    for table in ("reverse", "keywords", "backfeed", "quality"):
        assert shard_files(data, table, ds) == published[table], f"{table} changed though its prompt did not"
    # New answers (the answer quotes a digest of the prompt) flow on into the dataset.
    assert shard_files(data, "respond", ds) != published["respond"]
    new_rows = sorted(store_for(f"file://{data}").partition(DAG_ID, "dataset", ds).read().to_pylist(), key=lambda r: r["id"])
    assert sorted(r["problem"] for r in new_rows) == sorted(r["problem"] for r in rows)
    assert not {r["response"] for r in new_rows} & {r["response"] for r in rows}
