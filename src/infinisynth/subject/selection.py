"""Informative seed selection: the four criteria of Infinity Instruct Subject, each a recorded reason.

A row is a seed when at least one criterion picks it; ``selection_reasons`` lists every criterion
that did (in the order below), so evolution can steer by them and reports can show overlaps.

- ``long_tail``: it carries a tag that fewer than ``long_tail_frequency`` (200) rows of the pool
  carry. Tags missing from ``tag_frequency`` (noise, or unknown) do not count.
- ``multi_skill``: it carries more than ``multi_skill_tags`` (4) tags.
- ``undertrained``: the base model's loss on its response given its instruction
  (``loss_conditional``, mean token NLL) exceeds the pool's mean + ``loss_z`` (1.96) standard deviations.
- ``hard_to_follow``: low loss reduction. ``loss_reduction`` = loss of the response alone - loss
  given the instruction: how much the instruction helps the base model predict the response. The
  paper fixes no number; we take the rows at or below the pool's ``hard_to_follow_quantile`` (10%)
  of loss reduction, which scales with whatever base model and data the run uses.

Losses that are missing or not finite (a row the base model could not score) take part in
neither loss criterion, and the report says how many rows had losses. Everything is vectorised
over Arrow/NumPy columns: a million rows select in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

REASONS = ("long_tail", "multi_skill", "undertrained", "hard_to_follow")
REASONS_FIELD = pa.field("selection_reasons", pa.list_(pa.string()), nullable=False)


class SelectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    long_tail_frequency: int = Field(200, ge=1)
    multi_skill_tags: int = Field(4, ge=0)
    loss_z: float = 1.96
    hard_to_follow_quantile: float = Field(0.10, ge=0, le=1)
    criteria: tuple[str, ...] = REASONS  # switch criteria off by leaving them out


@dataclass
class Selection:
    selected: pa.Table  # input rows picked by at least one criterion, plus selection_reasons
    unselected: pa.Table  # the rest, with an empty selection_reasons: nothing is lost
    report: dict[str, Any] = field(default_factory=dict)


def select_seeds(rows: pa.Table, tag_frequency: Mapping[str, int], settings: SelectionSettings | None = None) -> Selection:
    settings = settings or SelectionSettings()
    unknown = [c for c in settings.criteria if c not in REASONS]
    if unknown:
        raise ValueError(f"unknown selection criteria {unknown}; choose from {list(REASONS)}")
    if "tags" not in rows.column_names:
        raise ValueError(f"rows need a 'tags' column (list of canonical tags); they have {rows.column_names}")
    n = rows.num_rows
    picks = np.zeros((n, len(REASONS)), dtype=bool)
    thresholds: dict[str, Any] = {}

    tags = rows.column("tags").combine_chunks() if n else pa.array([], pa.list_(pa.string()))
    if tags.null_count:
        tags = pc.fill_null(tags, pa.scalar([], tags.type))
    if "long_tail" in settings.criteria:
        picks[:, 0] = _long_tail(tags, tag_frequency, settings.long_tail_frequency, n)
        thresholds["long_tail_frequency_below"] = settings.long_tail_frequency
    if "multi_skill" in settings.criteria:
        picks[:, 1] = pc.list_value_length(tags).to_numpy(zero_copy_only=False) > settings.multi_skill_tags
        thresholds["multi_skill_more_than_tags"] = settings.multi_skill_tags
    if "undertrained" in settings.criteria:
        loss = _column(rows, "loss_conditional")
        scored = np.isfinite(loss)
        thresholds["rows_with_losses"] = int(scored.sum())
        if scored.any():
            mean, std = float(loss[scored].mean()), float(loss[scored].std())
            cutoff = mean + settings.loss_z * std
            picks[:, 2] = scored & (loss > cutoff)
            thresholds.update(loss_mean=round(mean, 4), loss_std=round(std, 4), undertrained_loss_above=round(cutoff, 4))
    if "hard_to_follow" in settings.criteria:
        reduction = _column(rows, "loss_reduction")
        scored = np.isfinite(reduction)
        if scored.any():
            cutoff = float(np.quantile(reduction[scored], settings.hard_to_follow_quantile))
            picks[:, 3] = scored & (reduction <= cutoff)
            thresholds.update(
                loss_reduction_mean=round(float(reduction[scored].mean()), 4),
                hard_to_follow_reduction_at_most=round(cutoff, 4),
            )

    reasons = _reason_lists(picks)
    with_reasons = rows.append_column(REASONS_FIELD, reasons)
    chosen = picks.any(axis=1)
    mask = pa.array(chosen)
    return Selection(
        selected=with_reasons.filter(mask),
        unselected=with_reasons.filter(pc.invert(mask)),
        report=selection_report(picks, settings, thresholds),
    )


def _long_tail(tags: pa.ListArray, frequency: Mapping[str, int], below: int, n: int) -> np.ndarray:
    flat = pc.list_flatten(tags)
    if len(flat) == 0 or not frequency:
        return np.zeros(n, dtype=bool)
    names = pa.array(list(frequency), pa.string())
    counts = np.fromiter(frequency.values(), dtype=np.int64, count=len(frequency))
    at = pc.fill_null(pc.index_in(flat, value_set=names), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    known = at >= 0
    rare = np.zeros(len(flat), dtype=bool)
    rare[known] = counts[at[known]] < below
    parents = pc.list_parent_indices(tags).to_numpy(zero_copy_only=False)
    return np.bincount(parents[rare], minlength=n).astype(bool)


def _column(rows: pa.Table, name: str) -> np.ndarray:
    if name not in rows.column_names:
        return np.full(rows.num_rows, np.nan)
    values = pc.cast(rows.column(name), pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)  # nulls arrive as NaN


def _reason_lists(picks: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(picks) + 1, dtype=np.int32)
    np.cumsum(picks.sum(axis=1), out=offsets[1:])
    codes = np.tile(np.arange(len(REASONS)), len(picks))[picks.ravel()]
    values = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(REASONS)).cast(pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def selection_report(picks: np.ndarray, settings: SelectionSettings, thresholds: dict[str, Any]) -> dict[str, Any]:
    """Rows per criterion (and picked by it alone), the pairwise overlap matrix and UpSet counts."""
    n = len(picks)
    active = [i for i, r in enumerate(REASONS) if r in settings.criteria]
    per_row = picks.sum(axis=1)
    criteria = {REASONS[i]: {"rows": int(picks[:, i].sum()), "only_this": int((picks[:, i] & (per_row == 1)).sum())} for i in active}
    overlap = {REASONS[i]: {REASONS[j]: int((picks[:, i] & picks[:, j]).sum()) for j in active} for i in active}
    bits = picks.astype(np.int64) @ (1 << np.arange(len(REASONS)))
    combos = np.bincount(bits, minlength=1 << len(REASONS))
    upset = {
        "+".join(r for k, r in enumerate(REASONS) if code >> k & 1): int(count)
        for code, count in sorted(enumerate(combos), key=lambda kv: -kv[1])
        if code and count
    }
    selected = int((per_row > 0).sum())
    return {
        "rows": n,
        "selected": selected,
        "selected_share": round(selected / n, 4) if n else 0.0,
        "criteria": criteria,
        "overlap": overlap,
        "combinations": upset,
        "thresholds": thresholds,
        "settings": settings.model_dump(mode="json"),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table for task logs."""
    lines = [f"{report['selected']} of {report['rows']} rows selected ({100 * report['selected_share']:.1f}%)"]
    names = list(report["criteria"])
    width = max([len(n) for n in names] + [9])
    lines.append(f"{'criterion':<{width}}  {'rows':>8}  {'only':>8}  " + "  ".join(f"{n[:12]:>12}" for n in names))
    for name in names:
        entry = report["criteria"][name]
        row = "  ".join(f"{report['overlap'][name][other]:>12}" for other in names)
        lines.append(f"{name:<{width}}  {entry['rows']:>8}  {entry['only_this']:>8}  {row}")
    lines.append("combinations: " + ", ".join(f"{k}={v}" for k, v in report["combinations"].items()))
    return "\n".join(lines)
