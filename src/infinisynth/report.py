"""What a run left in storage: every committed table of a date, with its row count and URL; and
the demo's closing summary, the rows each method published for a night (:func:`method_summary`)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from infinisynth.llm.usage import format_table
from infinisynth.shards import funnel_table
from infinisynth.storage import MANIFEST, Partition, Store, partition_key


@dataclass(frozen=True)
class TableSummary:
    pipeline: str
    table: str  # a stage's name, or "rejected/<stage>"
    rows: int
    url: str


def committed_tables(store: Store, ds: str) -> list[TableSummary]:
    """All partitions of ``ds`` that readers can see (those with a manifest), sorted."""
    # Tables sit at {pipeline}/{stage}/ and {pipeline}/rejected/{stage}/: two shallow globs, never a
    # walk of the whole root (the response cache alone holds a file per answer).
    key = partition_key(ds)
    patterns = [posixpath.join(store.root, "*", "*", key, MANIFEST), posixpath.join(store.root, "*", "rejected", "*", key, MANIFEST)]
    found = []
    for manifest_path in sorted(path for pattern in patterns for path in store.fs.glob(pattern)):
        directory = posixpath.dirname(manifest_path)
        relative = posixpath.relpath(posixpath.dirname(directory), store.root)
        pipeline, _, table = relative.partition("/")
        if pipeline.startswith("_") or table.startswith("_"):
            continue
        partition = Partition(store, directory)
        found.append(TableSummary(pipeline, table, partition.manifest().rows, partition.url))
    return found


def tables_report(store: Store, ds: str) -> str:
    tables = committed_tables(store, ds)
    if not tables:
        return f"no committed tables for ds={ds} under {store.root_url}"
    rows: list[tuple[str, str, str | int, str]] = [("pipeline", "table", "rows", "location")]
    rows += [(t.pipeline, t.table, t.rows, t.url) for t in tables]
    return format_table(rows)


def funnel_report(store: Store, pipeline: str, ds: str, table: str = "dataset") -> str:
    """The funnel (and complexity by origin, where measured) recorded in a published table."""
    partition = store.partition(pipeline, table, ds)
    if not partition.exists():
        return f"no published {table} for {pipeline} ds={ds}"
    meta = partition.manifest().meta
    text = funnel_table(meta.get("funnel", []))
    if meta.get("complexity_by_origin"):
        means = ", ".join(f"{origin} {v['mean']} (n={v['problems']})" for origin, v in meta["complexity_by_origin"].items())
        text += f"\ncomplexity by origin: {means}  (paper: seed 3.17, reverse 5.85, backfeed 6.83)"
    return text


# -- the demo's closing summary -------------------------------------------------------------------


@dataclass(frozen=True)
class MethodRows:
    """Rows one method of the project produced for a night, as its published table says."""

    method: str
    rows: int
    what: str  # what the rows are
    where: str  # the table (or release report) they were counted in, relative to the store's root


def _published(store: Store, pipeline: str, table: str, ds: str, columns: list[str]) -> tuple[list[dict[str, Any]], str]:
    """The committed rows of a partition (only ``columns``), and where it is; no rows if it was never committed."""
    partition = store.partition(pipeline, table, ds)
    where = posixpath.relpath(partition.path, store.root)
    if not partition.exists():
        return [], f"{where} (not committed)"
    return partition.read(columns=columns).to_pylist(), where


def _manifest_rows(store: Store, pipeline: str, table: str, ds: str) -> tuple[int, str]:
    """The committed row count of a partition (its manifest's), and where it is."""
    partition = store.partition(pipeline, table, ds)
    where = posixpath.relpath(partition.path, store.root)
    if not partition.exists():
        return 0, f"{where} (not committed)"
    return partition.manifest().rows, where


def _user_turns(messages: list[dict[str, Any]] | None) -> int:
    return sum(1 for m in messages or [] if m.get("role") == "user")


def latest_iteration_partition(store: Store, ds: str) -> str | None:
    """The partition key (``{ds}.iterNNNN``) of the newest finished diagnosis iteration of ``ds``."""
    from infinisynth.diagnosis.iterations import history

    finished = [h for h in history(store) if h["status"] == "complete" and h["partition"].split(".iter")[0] == ds]
    return finished[-1]["partition"] if finished else None


def method_summary(store: Store, ds: str, release_version: str | None = None) -> list[MethodRows]:
    """One entry per method: how many rows it produced for ``ds``, read from the published tables
    (and the release's report), never from a run's own bookkeeping."""
    found: list[MethodRows] = []
    code, code_url = _published(store, "code_instruct", "dataset", ds, ["origin"])
    for origin, method in (("reverse", "reverse construction"), ("backfeed", "backfeed construction")):
        rows = sum(1 for r in code if r["origin"] == origin)
        found.append(MethodRows(f"code_instruct {method}", rows, f"published code pairs of origin {origin}", code_url))
    subject, subject_url = _published(store, "subject_instruct", "dataset", ds, ["generation", "messages"])
    evolved = sum(1 for r in subject if int(r["generation"] or 0) >= 1)
    found.append(MethodRows("subject_instruct evolution", evolved, "published evolved instructions (generation >= 1)", subject_url))
    multiturn = sum(1 for r in subject if _user_turns(r["messages"]) > 1)
    found.append(MethodRows("subject_instruct multi-turn", multiturn, "published conversations with more than one user turn", subject_url))
    iteration = latest_iteration_partition(store, ds)
    if iteration is None:
        where = f"diagnosis/iterations (no finished iteration for {ds})"
        found.append(MethodRows("deficiency_diagnosis diagnosis", 0, "diagnosed deficiency groups", where))
        found.append(
            MethodRows("deficiency_diagnosis targeted synthesis", 0, "published targeted rows (through quality and the lint gate)", where)
        )
    else:
        groups, groups_url = _manifest_rows(store, "diagnosis", "deficiencies", iteration)
        found.append(MethodRows("deficiency_diagnosis diagnosis", groups, "diagnosed deficiency groups", groups_url))
        targeted, targeted_url = _manifest_rows(store, "diagnosis", "dataset", iteration)
        found.append(
            MethodRows(
                "deficiency_diagnosis targeted synthesis",
                targeted,
                "published targeted rows (through quality and the lint gate)",
                targeted_url,
            )
        )
    if release_version is not None:
        report_path = posixpath.join(store.root, "releases", release_version, "report.json")
        rows = int(store.read_json(report_path).get("rows") or 0) if store.fs.exists(report_path) else 0
        found.append(MethodRows("release", rows, "rows in the training release", posixpath.relpath(report_path, store.root)))
    return found


def summary_text(summary: list[MethodRows]) -> str:
    rows: list[tuple[str, str | int, str, str]] = [("method", "rows", "counted", "in")]
    rows += [(m.method, m.rows, m.what, m.where) for m in summary]
    return format_table(rows)


def summary_failures(summary: list[MethodRows]) -> list[str]:
    """A message per method that produced no rows (empty: every method worked)."""
    return [f"{m.method} produced no rows ({m.what}: 0 in {m.where})" for m in summary if m.rows == 0]
