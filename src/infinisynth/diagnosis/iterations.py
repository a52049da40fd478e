"""The loop's memory: one row per iteration, in storage (not in Airflow's database).

``{root}/diagnosis/iterations/ds={partition}/`` holds one row per iteration: its number, the DAG
run, the model it diagnosed (endpoint and model id, never a key), what triggered it, the previous
completed iteration, and once finished the accuracy and the deficiency ranking. Each iteration is
its own partition, so writing one never rewrites another; the history is every committed one.

An iteration is claimed at the start of a run (status ``running``) so its number is fixed before
any model call, and a retried or re-run DAG run finds its own claim by ``run_id`` and keeps its
number. The DAG allows one active run at a time, so two runs never claim at once.
"""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from infinisynth.storage import MANIFEST, Partition, Store

PIPELINE = "diagnosis"
ITERATIONS = "iterations"

ITERATION_SCHEMA = pa.schema(
    [
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),  # the ds= key of every table of this iteration
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # running | complete
        pa.field("started_at", pa.string(), nullable=False),
        pa.field("finished_at", pa.string()),
        pa.field("target_model", pa.string(), nullable=False),
        pa.field("target_base_url", pa.string(), nullable=False),
        pa.field("target_conn_id", pa.string()),
        pa.field("trigger", pa.string(), nullable=False),  # asset_event | latest_registration | params
        pa.field("event", pa.string()),  # the registration event (id and time), if any
        pa.field("previous_iteration", pa.int32()),
        pa.field("diagnosis_source", pa.string(), nullable=False),
        pa.field("diagnosis_rows", pa.int32()),
        pa.field("judged", pa.int32()),
        pa.field("correct", pa.int32()),
        pa.field("accuracy", pa.float64()),
        pa.field("reference_checked", pa.int32()),  # verdicts decided by the reference check, not the oracle
        pa.field("oracle_overruled", pa.int32()),  # of those, where the oracle's own verdict differed
        pa.field("ranking_json", pa.string()),  # the top groups: id, labels, failures, weight, share
        pa.field("targeted_published", pa.int32()),
    ]
)


def _partitions(store: Store) -> list[Partition]:
    base = posixpath.join(store.root, PIPELINE, ITERATIONS)
    manifests = sorted(store.fs.glob(posixpath.join(base, "ds=*", MANIFEST)))
    return [Partition(store, posixpath.dirname(m)) for m in manifests]


def history(store: Store) -> list[dict[str, Any]]:
    """Every claimed iteration, oldest first."""
    rows = [row for partition in _partitions(store) for row in partition.read().to_pylist()]
    return sorted(rows, key=lambda r: r["iteration"])


def claim(store: Store, *, run_id: str, date: str, target: dict[str, Any], trigger: str, event: str | None, source: str) -> dict[str, Any]:
    """This run's iteration: its earlier claim if it has one, else the next number."""
    past = history(store)
    mine = [r for r in past if r["run_id"] == run_id]
    if mine:
        return mine[-1]
    number = max((r["iteration"] for r in past), default=0) + 1
    completed = [r["iteration"] for r in past if r["status"] == "complete"]
    row = {
        "iteration": number,
        "partition": f"{date}.iter{number:04d}",
        "run_id": run_id,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "finished_at": None,
        "target_model": target["model"],
        "target_base_url": target["base_url"],
        "target_conn_id": target.get("conn_id"),
        "trigger": trigger,
        "event": event,
        "previous_iteration": max(completed) if completed else None,
        "diagnosis_source": source,
        "diagnosis_rows": None,
        "judged": None,
        "correct": None,
        "accuracy": None,
        "reference_checked": None,
        "oracle_overruled": None,
        "ranking_json": None,
        "targeted_published": None,
    }
    save(store, row)
    return row


def save(store: Store, row: dict[str, Any]) -> None:
    table = pa.Table.from_pylist([row], schema=ITERATION_SCHEMA)
    store.partition(PIPELINE, ITERATIONS, row["partition"]).write_and_commit(
        table, meta={"pipeline": PIPELINE, "stage": ITERATIONS, "iteration": row["iteration"]}, schema=ITERATION_SCHEMA
    )


def load(store: Store, partition: str) -> dict[str, Any]:
    return store.partition(PIPELINE, ITERATIONS, partition).read().to_pylist()[0]
