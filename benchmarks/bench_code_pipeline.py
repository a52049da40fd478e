"""The whole code-instruction DAG over 2,000 seeds against the scripted server (200 ms, capacity 64).

    make bench-pipeline     (or: .venv/bin/python benchmarks/bench_code_pipeline.py --seeds 2000)

Runs ``airflow dags test code_instruct`` in a throwaway Airflow home, then compares the wall time
with the time the model calls alone would need at the endpoint's full capacity
(requests x latency / capacity): the ratio is what scheduling, Parquet I/O, checkpoints and the
tails of each shard cost on top of the calls. Per-task durations come from Airflow's own task
instance table; peak memory is the ``dags test`` process's maximum RSS (it runs every task
in-process, so this bounds the largest task).
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support; the library itself is installed

from infinisynth.settings import store_for  # noqa: E402
from tests.support.airflow import make_airflow_home  # noqa: E402
from tests.support.fixtures import connection_env  # noqa: E402
from tests.support.servers import scripted_openai  # noqa: E402

DS = "2026-03-01"
# Every response carries its own code block (named after the prompt's hash), so the lint gate
# checks as many distinct samples as there are answers.
ANSWER = """Sort the records, then group them.

```python
from itertools import groupby


def summarize_{prompt_digest}(records):
    ordered = sorted(records, key=lambda r: r["key"])
    return {key: sum(r["value"] for r in group) for key, group in groupby(ordered, key=lambda r: r["key"])}
```
"""


def task_durations(airflow_home: Path) -> dict[str, dict[str, float]]:
    """Per task id: how many task instances, their summed and longest duration (seconds)."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, duration FROM task_instance WHERE dag_id = 'code_instruct' AND duration IS NOT NULL").fetchall()
    by_task: dict[str, list[float]] = defaultdict(list)
    for task_id, duration in rows:
        by_task[task_id].append(float(duration))
    return {task: {"instances": len(d), "sum_s": round(sum(d), 1), "max_s": round(max(d), 1)} for task, d in by_task.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500, help="rows per mapped task")
    parser.add_argument("--concurrency", type=int, default=80, help="client max_concurrency per task (docs/BENCHMARKS.md: ~1.25x capacity)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch, scripted_openai(args.latency, args.capacity) as server:
        home_dir = Path(scratch) / "airflow"
        home = make_airflow_home(home_dir)
        server.script([{"match": "Solve the following programming problem", "actions": [{"content": ANSWER}]}])
        root = f"file://{scratch}/data"
        env = {**connection_env(server.base_url, max_concurrency=args.concurrency), "INFINISYNTH_ROOT": root}
        conf = {"max_seeds": args.seeds, "shard_size": args.shard_size, "seed_languages": ["python", "javascript"]}

        started = time.perf_counter()
        home.dags_test("code_instruct", DS, conf, env, timeout=3600)
        wall = time.perf_counter() - started

        requests = server.stats()["total"]
        ideal = requests * args.latency / args.capacity
        durations = task_durations(home_dir)
        store = store_for(root)
        funnel = store.partition("code_instruct", "dataset", DS).manifest().meta["funnel"]
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # Tasks that call models (keywords and responses stream inside reverse_construct and assess_quality).
    model_tasks = {"reverse_construct", "extract_keywords", "backfeed_construct", "assess_quality", "generate_responses"}
    model_wall = sum(d["sum_s"] for task, d in durations.items() if task in model_tasks)
    result = {
        "seeds": args.seeds,
        "shard_size": args.shard_size,
        "client_max_concurrency": args.concurrency,
        "model_requests": requests,
        "ideal_model_time_s": round(ideal, 1),
        "wall_s": round(wall, 1),
        "wall_over_ideal": round(wall / ideal, 2),
        "model_tasks_s": round(model_wall, 1),
        "model_tasks_over_ideal": round(model_wall / ideal, 2),
        "peak_rss_mb_dags_test_process": round(peak_mb, 1),
        "rows": {entry["stage"]: {"in": entry["rows_in"], "out": entry["rows_out"]} for entry in funnel},
        "tasks": durations,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
