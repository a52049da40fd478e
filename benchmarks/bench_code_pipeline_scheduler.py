"""The code-instruction DAG through a real scheduler (LocalExecutor on PostgreSQL) against the scripted server.

    .venv/bin/python benchmarks/bench_code_pipeline_scheduler.py --seeds 2000      (about 5 minutes)
    .venv/bin/python benchmarks/bench_code_pipeline_scheduler.py --seeds 10000 --warm-up 20 \
                  --seed-root .venv/lib/python3.11/site-packages      (about 8 minutes; the default
                  corpus, stdlib + global npm, has ~5,000 Python/JS snippets here)

What users run, unlike ``airflow dags test`` (bench_code_pipeline.py), which runs tasks one after
another in one process: an api-server, a dag-processor and a scheduler with LocalExecutor, in a
throwaway Airflow home on a private PostgreSQL (tests/support/services.py), the ``llm`` pool at 4.
One triggered run of ``code_instruct`` over ``--seeds`` mined seeds (Python and JavaScript),
against the scripted OpenAI server (200 ms per answer, 64 at once). ``--warm-up N`` first runs a
night of N seeds on a later date, so the measured night finds the executor's worker processes
started, as a scheduler that has been up since the night before does (the first task of a cold
scheduler waits ~2 s for its worker).

It prints one JSON document:

- ``wall_over_ideal``: the run's wall time (the dag_run's start to end) over the endpoint-bound
  ideal, model requests x latency / capacity;
- ``timeline``: per task, when its first instance started and its last ended (seconds from the
  run's start), how many instances, their summed duration and the longest;
- ``endpoint_in_flight``: requests in flight at the server, averaged per ``--bin`` seconds
  (capacity 64: below it the endpoint idles);
- ``stages``: per step, when its first and last rows finished (seconds from the run's start), from
  the ``stage rows finished`` line each shard of each step logs (``infinisynth.shards``): with
  fused steps streaming, a step's rows finish while its upstream's are still in flight;
- ``footprint``: per task, from each task's ``task footprint`` log line
  (:func:`infinisynth.airflow_dag.footprint`): the task process's start-up before its body, peak
  RSS of the task process, CPU of the task and of its children (the lint gate's linters), and
  garbage-collection pauses;
- ``load``: the machine's 1-minute load average during the run (min / mean / max), since the
  figures depend on what else runs;
- ``dataset``: rows and a digest of the sorted ids, to compare two versions of the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from statistics import fmean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support; the library itself is installed

from benchmarks.bench_code_pipeline import ANSWER  # noqa: E402  (the same answers as the dags-test benchmark)
from infinisynth.settings import store_for  # noqa: E402
from tests.support.airflow import AirflowHome, make_airflow_home, running_scheduler  # noqa: E402
from tests.support.fixtures import connection_env  # noqa: E402
from tests.support.servers import scripted_openai  # noqa: E402
from tests.support.services import running_postgres  # noqa: E402

DAG_ID = "code_instruct"
DS = "2026-03-01"
WARM_UP_DS = "2026-03-02"  # after DS: the measured night grows its graph from none, as without a warm-up

FOOTPRINT = "task footprint:"
ROWS_FINISHED = "stage rows finished:"  # infinisynth.shards.ROWS_FINISHED
GATE_TASKS = ("verify_responses", "assess_quality")  # the lint gate's own task, or (fused) the chain's head


def when(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def wait_for_run(home: AirflowHome, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = home.query("select state, start_date, end_date from dag_run where dag_id = ? and run_id = ?", DAG_ID, run_id)
        if rows and rows[0]["state"] in ("success", "failed"):
            return rows[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{DAG_ID} run {run_id} not finished after {timeout:.0f}s: {rows}")
        time.sleep(2)


def timeline(home: AirflowHome, run_id: str, started: float) -> tuple[dict[str, Any], list[str]]:
    """Per task id: first start, last end (from the run's start), instances, summed and longest duration."""
    rows = home.query(
        "select task_id, map_index, state, start_date, end_date, duration, try_number from task_instance where dag_id = ? and run_id = ?",
        DAG_ID,
        run_id,
    )
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_task[row["task_id"]].append(row)
    result = {}
    not_ok = []
    for task_id, instances in by_task.items():
        starts = [datetime.fromisoformat(r["start_date"]).timestamp() for r in instances if r["start_date"]]
        ends = [datetime.fromisoformat(r["end_date"]).timestamp() for r in instances if r["end_date"]]
        durations = [float(r["duration"]) for r in instances if r["duration"] is not None]
        not_ok += [f"{task_id}[{r['map_index']}]: {r['state']} (try {r['try_number']})" for r in instances if r["state"] != "success"]
        result[task_id] = {
            "first_start_s": round(min(starts) - started, 1) if starts else None,
            "last_end_s": round(max(ends) - started, 1) if ends else None,
            "instances": len(instances),
            "sum_s": round(sum(durations), 1),
            "max_s": round(max(durations, default=0.0), 1),
        }
    ordered = dict(sorted(result.items(), key=lambda kv: (kv[1]["first_start_s"] is None, kv[1]["first_start_s"] or 0.0)))
    return ordered, not_ok


def logged(home: AirflowHome, run_id: str, marker: str) -> dict[str, list[dict[str, Any]]]:
    """Per task id, the JSON documents that follow ``marker`` in the run's task log lines."""
    pattern = re.compile(re.escape(marker) + r" (\{.*?\})")
    folder = Path(home.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for log in sorted(folder.glob("task_id=*/**/*.log")):
        task_id = next(p for p in log.parts if p.startswith("task_id=")).split("=", 1)[1]
        for line in log.read_text(errors="replace").splitlines():
            if marker not in line:
                continue
            try:
                event = json.loads(line).get("event", line)
            except ValueError:
                event = line
            found = pattern.search(str(event))
            if found:
                by_task[task_id].append(json.loads(found.group(1)))
    return by_task


def stage_timeline(home: AirflowHome, run_id: str, started: float) -> dict[str, Any]:
    """Per step: when its first and last rows finished (from the run's start), its rows and shards."""
    by_step: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for documents in logged(home, run_id, ROWS_FINISHED).values():
        for document in documents:
            by_step[document["step"]].append(document)
    result = {
        step: {
            "first_row_s": round(min(d["first"] for d in shards) - started, 1),
            "last_row_s": round(max(d["last"] for d in shards) - started, 1),
            "rows": sum(d["rows"] for d in shards),
            "shards": len(shards),
        }
        for step, shards in by_step.items()
    }
    return dict(sorted(result.items(), key=lambda kv: kv[1]["first_row_s"]))


def footprints(home: AirflowHome, run_id: str) -> dict[str, Any]:
    """The ``task footprint`` lines of the run's task logs, summed / maximized per task id."""
    by_task = logged(home, run_id, FOOTPRINT)
    summary = {}
    for task_id, figures in by_task.items():
        summary[task_id] = {
            "instances": len(figures),
            "startup_s_mean": round(fmean(f["startup_s"] for f in figures), 2),
            "body_wall_s_sum": round(sum(f["wall_s"] for f in figures), 1),
            "cpu_s_sum": round(sum(f["cpu_s"] for f in figures), 1),
            "children_cpu_s_sum": round(sum(f["children_cpu_s"] for f in figures), 1),
            "peak_rss_mb_max": max(f["peak_rss_mb"] for f in figures),
            "children_peak_rss_mb_max": max(f["children_peak_rss_mb"] for f in figures),
            "gc_full_sum": sum(f["gc_full"] for f in figures),
            "gc_s_sum": round(sum(f["gc_s"] for f in figures), 2),
            "gc_max_pause_s": max(f["gc_max_pause_s"] for f in figures),
            "gc_pauses_over_100ms": sum(f["gc_pauses_over_100ms"] for f in figures),
            "gc_frozen_max": max(f.get("gc_frozen", 0) for f in figures),
        }
    return summary


def in_flight(arrivals: list[float], answers: list[list[Any]], started: float, ended: float, width: float) -> list[float]:
    """Mean requests in flight at the server per ``width`` seconds of the run (from arrival and
    answer times, sampled every 0.1 s)."""
    events = sorted([(t, 1) for t in arrivals] + [(a[0], -1) for a in answers])
    samples: list[float] = []
    current, position, t = 0, 0, started
    while t <= ended:
        while position < len(events) and events[position][0] <= t:
            current += events[position][1]
            position += 1
        samples.append(current)
        t += 0.1
    per_bin = max(int(width / 0.1), 1)
    return [round(fmean(samples[i : i + per_bin]), 1) for i in range(0, len(samples), per_bin)]


SCRIPT = [{"match": "Solve the following programming problem", "actions": [{"content": ANSWER}]}]


def trigger(home: AirflowHome, run_id: str, ds: str, conf: dict[str, Any], env: dict[str, str]) -> None:
    done = home.run(
        "dags", "trigger", DAG_ID, "--run-id", run_id, "--logical-date", f"{ds}T00:00:00+00:00", "-c", json.dumps(conf), extra_env=env
    )
    if done.returncode:
        raise RuntimeError(f"airflow dags trigger: {done.stdout[-2000:]}{done.stderr[-2000:]}")


class LoadSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(5):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(fmean(s), 2), "max": round(max(s), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500, help="rows per mapped task")
    parser.add_argument(
        "--seed-root",
        action="append",
        default=[],
        help="a source tree to mine (repeatable; default: the standard library and global npm packages, about 5,000 "
        "Python and JavaScript snippets on the project's machine)",
    )
    parser.add_argument("--concurrency", type=int, default=80, help="client max_concurrency per task (docs/BENCHMARKS.md: ~1.25x capacity)")
    parser.add_argument("--parallelism", type=int, default=4, help="the executor's parallelism (AIRFLOW__CORE__PARALLELISM)")
    parser.add_argument("--bin", type=float, default=10.0, help="seconds per point of the endpoint's in-flight timeline")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--warm-up",
        type=int,
        default=0,
        metavar="SEEDS",
        help="first run a night of this many seeds (a later date), as a scheduler that has run before: the LocalExecutor's "
        "worker processes are started and warm; the figures are the second night's",
    )
    parser.add_argument("--keep", help="keep the Airflow home and data here (logs, tables) instead of a temporary folder")
    parser.add_argument(
        "--src", help="a copy of the library's src/ folder that the Airflow processes import instead of the installed one (A/B runs)"
    )
    parser.add_argument("--pycache", default="/tmp/infinisynth-bench-pycache", help="PYTHONPYCACHEPREFIX of the Airflow processes")
    args = parser.parse_args()
    # Each task is a fresh process that imports the library and its dependencies: measure it with
    # bytecode cached, as an installed deployment has it, even where PYTHONDONTWRITEBYTECODE is set.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = args.pycache

    scratch_dir = tempfile.TemporaryDirectory(prefix="bench-scheduler-") if not args.keep else None
    scratch = Path(args.keep or scratch_dir.name)  # type: ignore[union-attr]
    scratch.mkdir(parents=True, exist_ok=True)
    load = LoadSampler()
    with running_postgres() as database_url, scripted_openai(args.latency, args.capacity) as server:
        home = make_airflow_home(scratch / "airflow", database_url)
        if args.src:  # before the editable install's path entry
            home.env["PYTHONPATH"] = os.pathsep.join([str(Path(args.src).resolve()), str(ROOT)])
        server.script(SCRIPT)
        root = f"file://{scratch}/data"
        env = {
            **connection_env(server.base_url, max_concurrency=args.concurrency),
            "INFINISYNTH_ROOT": root,
            "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
            # Only the triggered run: unpausing would also start the latest scheduled interval's.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }
        conf: dict[str, Any] = {"max_seeds": args.seeds, "shard_size": args.shard_size, "seed_languages": ["python", "javascript"]}
        if args.seed_root:
            conf["seed_roots"] = args.seed_root
        for command in (("dags", "reserialize"), ("dags", "unpause", DAG_ID)):
            done = home.run(*command, extra_env=env)
            if done.returncode:
                raise RuntimeError(f"airflow {' '.join(command)}: {done.stderr[-2000:]}")
        logs = scratch / "components"
        logs.mkdir(exist_ok=True)
        with running_scheduler(home, env, logs) as scheduler_env:
            if args.warm_up:
                warm_conf = {**conf, "max_seeds": args.warm_up}
                warm_id = f"warm_up_{int(time.time())}"
                trigger(home, warm_id, WARM_UP_DS, warm_conf, scheduler_env)
                if wait_for_run(home, warm_id, args.timeout)["state"] != "success":
                    raise RuntimeError(f"the warm-up run {warm_id} failed")
                server.reset()  # counts and arrivals of the measured night only
                server.script(SCRIPT)
            run_id = f"bench_{args.seeds}_{int(time.time())}"
            load.start()
            triggered = time.time()
            trigger(home, run_id, DS, conf, scheduler_env)
            run = wait_for_run(home, run_id, args.timeout)
            finished = time.time()
            load.stopped.set()
        stats = server.stats()
        arrivals = server._call("GET", "/_control/arrivals")
        started, ended = when(run["start_date"]) or triggered, when(run["end_date"]) or finished
        tasks, not_ok = timeline(home, run_id, started)
        prints = footprints(home, run_id)
        stages = stage_timeline(home, run_id, started)
        store = store_for(root)
        dataset: dict[str, Any] = {}
        if run["state"] == "success":
            partition = store.partition(DAG_ID, "dataset", DS)
            ids = sorted(partition.read(columns=["id"]).column("id").to_pylist())
            funnel = partition.manifest().meta["funnel"]
            dataset = {
                "rows": len(ids),
                "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
                "funnel": {entry["stage"]: {"in": entry["rows_in"], "out": entry["rows_out"]} for entry in funnel},
            }

    requests = stats["total"]
    ideal = requests * args.latency / args.capacity
    wall = ended - started
    # The linters are the gate task's children; fused into the quality chain, the gate's in-process
    # share is not told apart from the model client's, so only its children count there.
    gate_task = next((name for name in GATE_TASKS if name in prints), None)
    gate = prints.get(gate_task or "", {})
    gate_cpu = gate.get("children_cpu_s_sum", 0.0) + (gate.get("cpu_s_sum", 0.0) if gate_task == "verify_responses" else 0.0)
    result = {
        "seeds": args.seeds,
        "seeds_mined": dataset.get("funnel", {}).get("seeds", {}).get("out"),  # fewer when the corpus runs out
        "library": args.src or "installed",
        "warm_up_seeds": args.warm_up,  # 0: the first run after the scheduler started
        "state": run["state"],
        "not_successful": not_ok,
        "shard_size": args.shard_size,
        "client_max_concurrency": args.concurrency,
        "parallelism": args.parallelism,
        "model_requests": requests,
        "ideal_s": round(ideal, 1),
        "wall_s": round(wall, 1),
        "wall_over_ideal": round(wall / ideal, 2) if ideal else None,
        "trigger_to_finish_s": round(finished - triggered, 1),
        "load": load.summary(),
        "gate_cpu_s": round(gate_cpu, 1),
        "gate_task": gate_task,
        "task_instances": sum(t["instances"] for t in tasks.values()),
        "peak_rss_mb_largest_task": max((p["peak_rss_mb_max"] for p in prints.values()), default=None),
        "gc_pauses_over_100ms": sum(p["gc_pauses_over_100ms"] for p in prints.values()),
        "gc_s": round(sum(p["gc_s_sum"] for p in prints.values()), 1),
        "endpoint_in_flight": in_flight(arrivals["arrivals"], arrivals["answers"], started, ended, args.bin),
        "timeline": tasks,
        "stages": stages,
        "footprint": prints,
        "dataset": dataset,
    }
    print(json.dumps(result, indent=2))
    if scratch_dir is not None:
        scratch_dir.cleanup()


if __name__ == "__main__":
    main()
