"""Every pipeline's published rows in one release schema: the candidates of a release.

A release row is a chat (``messages``) plus the metadata a trainer or an analyst filters on:
origin, lang, tags, domains, quality scores, parent ids and where it came from (pipeline, date).
Two flags drive the ablation variants (:mod:`.variants`) without new model calls:

- ``lint_passed``: the static lint gate passed the pair (false only for rows taken back from
  ``code_instruct/rejected/verify``, for the unfiltered lint variant);
- ``in_dataset``: the pipeline published the row (false for answered problems below the publish
  threshold, ``code_instruct/below_threshold``, and for lint-rejected pairs).

The main release is the ``in_dataset`` rows; variants reach past it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from infinisynth.release.dedup import EMBEDDING_DIM, EMBEDDING_TYPE
from infinisynth.stages.publish import MESSAGE_TYPE
from infinisynth.stages.quality import DIMENSIONS

SCORES_TYPE = pa.struct([(d, pa.float64()) for d in DIMENSIONS])

EXPORT_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    pa.field("origin", pa.string(), nullable=False),
    pa.field("lang", pa.string()),
    pa.field("pipeline", pa.string(), nullable=False),
    pa.field("source_ds", pa.string(), nullable=False),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("domains", pa.list_(pa.string())),
    pa.field("quality_mean", pa.float64()),
    pa.field("complexity", pa.float64()),
    pa.field("quality_scores", SCORES_TYPE),
    pa.field("parent_ids", pa.list_(pa.string()), nullable=False),
    pa.field("lint_passed", pa.bool_(), nullable=False),
]
EXPORT_SCHEMA = pa.schema(EXPORT_FIELDS)
CANDIDATE_SCHEMA = pa.schema([*EXPORT_FIELDS, pa.field("in_dataset", pa.bool_(), nullable=False)])

__all__ = ["CANDIDATE_SCHEMA", "EMBEDDING_DIM", "EMBEDDING_TYPE", "EXPORT_SCHEMA", "release_row"]

PIPELINES = ("code_instruct", "subject_instruct", "diagnosis")


def instruction(messages: list[dict[str, Any]] | None) -> str:
    """The first user turn: what dedup and the prompt screens compare."""
    for message in messages or []:
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def responses(messages: list[dict[str, Any]] | None) -> str:
    """Every assistant turn, joined: what the response screen compares."""
    return "\n\n".join(m.get("content") or "" for m in messages or [] if m.get("role") == "assistant")


def _code_tags(combination: dict[str, Any] | None) -> list[str]:
    if not combination:
        return []
    return [v for v in (combination.get("task"), combination.get("instruction"), combination.get("knowledge")) if v]


def release_row(row: dict[str, Any], pipeline: str, ds: str, *, in_dataset: bool = True, lint_passed: bool = True) -> dict[str, Any]:
    """One published row of any pipeline as a release candidate."""
    domains = row.get("domains")
    if domains is None:
        domains = ["code"] if pipeline == "code_instruct" else []
    tags = row.get("tags")
    if tags is None:
        tags = _code_tags(row.get("combination"))
        deficiency = row.get("deficiency")
        if deficiency:
            tags = [*tags, *[str(v) for k, v in sorted(deficiency.items()) if k in ("label", "group") and v]]
    return {
        "id": row["id"],
        "messages": row["messages"],
        "origin": row["origin"],
        "lang": row.get("lang"),
        "pipeline": pipeline,
        "source_ds": ds,
        "tags": list(tags),
        "domains": list(domains),
        "quality_mean": row.get("quality_mean"),
        "complexity": row.get("complexity"),
        "quality_scores": row.get("quality_scores"),
        "parent_ids": list(row.get("parent_ids") or []),
        "lint_passed": lint_passed,
        "in_dataset": in_dataset,
    }


def candidates_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=CANDIDATE_SCHEMA)


def input_rows(rejected: pa.Table) -> list[dict[str, Any]]:
    """The input rows a rejected table kept (``input_json``)."""
    return [json.loads(text) for text in rejected.column("input_json").to_pylist() if text]
