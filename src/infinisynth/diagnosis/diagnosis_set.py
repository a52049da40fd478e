"""The diagnosis set: prompts with reference answers the target model is examined on.

Two sources, nothing else:

- ``holdout``: the held-out slice of the project's own published data
  (``{root}/code_instruct/holdout/ds=*/``, the latest committed at or before the run's date),
  which no training export contains (:mod:`infinisynth.holdout`);
- a file the user brings: Parquet or JSONL with ``prompt`` and ``reference`` columns (``lang``,
  ``id`` and ``answer_key`` optional: a short exact answer - a number, a word - that the target's
  final answer is checked against without a model, beside the oracle's verdict).

Evaluation benchmarks are never a diagnosis set: a set that overlaps a known benchmark
(:mod:`.benchmarks`) by the leakage check is refused with the overlapping rows named.
"""

from __future__ import annotations

import gzip
import json
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.diagnosis.benchmarks import benchmark_prompts
from infinisynth.diagnosis.leakage import LeakageSettings, closest
from infinisynth.holdout import HOLDOUT_STAGE, prompt_of
from infinisynth.records import content_id, schema_with
from infinisynth.storage import MANIFEST, Partition, Store

DIAGNOSIS_SET_SCHEMA = schema_with(
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("reference", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # where the row came from (partition URL or file)
    pa.field("answer_key", pa.string()),  # the short exact answer of a checkable row (diagnose.reference_check)
)
HOLDOUT_SOURCE = "holdout"


class DiagnosisSetError(ValueError):
    """The diagnosis set cannot be used as given; the message says why and where."""


class BenchmarkOverlap(DiagnosisSetError):
    """The set contains evaluation-benchmark problems: refusing to examine (and train) on them."""


# -- user files ---------------------------------------------------------------------------------


def read_user_file(path: str) -> list[dict[str, Any]]:
    """Rows of a Parquet or JSONL file; a malformed line is an error naming the line."""
    file = Path(path)
    if not file.is_file():
        raise DiagnosisSetError(f"diagnosis set {path}: no such file")
    if file.suffix == ".parquet":
        try:
            return pq.read_table(file).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DiagnosisSetError(f"diagnosis set {path}: not a readable Parquet file ({exc})") from exc
    opener = gzip.open if file.suffix == ".gz" else open
    rows = []
    with opener(file, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DiagnosisSetError(f"diagnosis set {path}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise DiagnosisSetError(f"diagnosis set {path}, line {number}: expected a JSON object")
            rows.append(value)
    return rows


def user_set(path: str, max_rows: int | None = None) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(usable rows, rejected rows) of a user's file. Rows without a prompt or a reference, and
    repeated prompts, are rejected with that reason; a file without the columns is an error."""
    raw = read_user_file(path)
    if raw and not any("prompt" in r and "reference" in r for r in raw):
        raise DiagnosisSetError(
            f"diagnosis set {path}: needs 'prompt' and 'reference' fields; found {sorted(set().union(*map(set, raw[:50])))}"
        )
    return _validated(raw[:max_rows] if max_rows else raw, source=str(path), origin="seed")


def _validated(raw: list[dict[str, Any]], *, source: str, origin: str) -> tuple[pa.Table, list[dict[str, Any]]]:
    rows, rejected, seen = [], [], set()
    for number, item in enumerate(raw, 1):
        prompt, reference, key = item.get("prompt"), item.get("reference"), item.get("answer_key")
        row_id = str(item.get("id") or content_id("diagnosis-set", prompt, reference))
        problem = None
        if not isinstance(prompt, str) or not prompt.strip():
            problem = ("missing_prompt", f"row {number} has no prompt")
        elif not isinstance(reference, str) or not reference.strip():
            problem = ("missing_reference", f"row {number} has no reference answer")
        elif " ".join(prompt.split()) in seen:
            problem = ("duplicate_prompt", f"row {number} repeats an earlier prompt")
        elif key is not None and (isinstance(key, bool) or not isinstance(key, str | int | float) or not str(key).strip()):
            problem = ("bad_answer_key", f"row {number}'s answer_key must be a non-empty string or number")
        if problem:
            rejected.append(_rejected(row_id, *problem, item))
            continue
        prompt, reference = str(prompt), str(reference)  # both checked above
        seen.add(" ".join(prompt.split()))
        rows.append(
            {
                "id": row_id,
                "parent_ids": list(item.get("parent_ids") or []),
                "origin": item.get("origin") or origin,
                "lang": item.get("lang") or None,
                "prompt": prompt.strip(),
                "reference": reference.strip(),
                "source": source,
                "answer_key": None if key is None else str(key).strip(),
            }
        )
    return pa.Table.from_pylist(rows, schema=DIAGNOSIS_SET_SCHEMA), rejected


def _rejected(row_id: str, reason: str, detail: str, item: dict[str, Any]) -> dict[str, Any]:
    from infinisynth.records import canonical_json

    return {
        "id": row_id,
        "stage": "diagnosis_set",
        "reason": reason,
        "detail": detail,
        "raw_answer": None,
        "evidence_json": None,
        "input_json": canonical_json(item),
    }


# -- the held-out slice -------------------------------------------------------------------------


def latest_holdout(store: Store, pipeline: str, ds: str) -> Partition:
    """The newest committed held-out partition of ``pipeline`` dated at or before ``ds``."""
    base = posixpath.join(store.root, pipeline, HOLDOUT_STAGE)
    dates = sorted(
        posixpath.basename(posixpath.dirname(p)).removeprefix("ds=") for p in store.fs.glob(posixpath.join(base, "ds=*", MANIFEST))
    )
    usable = [d for d in dates if d <= ds]
    if not usable:
        raise DiagnosisSetError(
            f"no held-out slice of {pipeline} at or before {ds} under {store.url(base)}: run the {pipeline} "
            "DAG first (its publish step writes the slice) or pass a diagnosis file"
        )
    return store.partition(pipeline, HOLDOUT_STAGE, usable[-1])


def holdout_set(
    store: Store, ds: str, pipeline: str = "code_instruct", max_rows: int | None = None
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The held-out chat rows as (prompt = user turn, reference = assistant turn)."""
    partition = latest_holdout(store, pipeline, ds)
    raw = []
    for row in partition.read().to_pylist():
        answers = [m.get("content") for m in row.get("messages") or [] if m.get("role") == "assistant"]
        raw.append(
            {
                "id": row["id"],
                "parent_ids": [row["id"]],
                "origin": row.get("origin"),
                "lang": row.get("lang"),
                "prompt": prompt_of(row.get("messages")),
                "reference": answers[0] if answers else None,
            }
        )
    return _validated(raw[:max_rows] if max_rows else raw, source=partition.url, origin="seed")


# -- benchmark refusal --------------------------------------------------------------------------


def benchmark_overlaps(table: pa.Table, settings: LeakageSettings, benchmarks: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a diagnosis set too close to a known evaluation benchmark's problems."""
    known = benchmark_prompts(benchmarks) if benchmarks is not None else benchmark_prompts()
    prompts = table.column("prompt").to_pylist()
    ids = table.column("id").to_pylist()
    found = []
    for row_id, nearest in zip(ids, closest(prompts, [p for _, p in known], settings)):
        measure = nearest.too_close(settings)
        if measure:
            found.append({"id": row_id, "measure": measure, **nearest.evidence([k for k, _ in known])})
    return found


def refuse_benchmarks(table: pa.Table, settings: LeakageSettings, source: str, benchmarks: list[str] | None = None) -> None:
    found = benchmark_overlaps(table, settings, benchmarks)
    if found:
        sample = "; ".join(
            f"row {f['id']} ~ {f['cosine_closest'] if f['measure'] == 'embedding' else f['ngram_closest']} "
            f"(cosine {f['cosine']}, n-gram overlap {f['ngram_overlap']})"
            for f in found[:5]
        )
        raise BenchmarkOverlap(
            f"diagnosis set {source}: {len(found)} of {table.num_rows} prompts overlap an evaluation benchmark, "
            f"which is never used as a diagnosis set (it would leak into targeted training data): {sample}"
        )
