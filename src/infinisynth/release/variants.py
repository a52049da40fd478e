"""Ablation variants of one release, without new model calls (Infinite-Instruct's ablations).

All of them select from the same screened (deduplicated, decontaminated) rows:

- ``quality_{T}``: rows that passed the lint gate and score at least ``T`` (rows without a quality
  score, e.g. the subject pipeline's, are in every one). Thresholds under the code pipeline's
  ``answer_threshold`` are incomplete: those problems were never answered; the card says so.
- ``mix_{R}_{B}``: the release with its reverse and backfeed rows in the proportion R:B, as many
  as the rarer side allows (a deterministic choice by id hash); other origins unchanged.
- ``lint_unfiltered``: the release plus the pairs the lint gate rejected that pass the publish
  threshold (error-only filtering is the release itself).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    table: pa.Table
    note: str = ""


def _order(ids: Sequence[str]) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())


def mix_mask(ids: Sequence[str], origin: Sequence[str], reverse_share: float) -> np.ndarray:
    """Which rows a reverse:backfeed mix at ``reverse_share`` : 1 - ``reverse_share`` keeps."""
    order = _order(ids)
    reverse = [i for i in order if origin[i] == "reverse"]
    backfeed = [i for i in order if origin[i] == "backfeed"]
    if reverse_share >= 1:
        r, b = len(reverse), 0
    elif reverse_share <= 0:
        r, b = 0, len(backfeed)
    else:
        total = min(len(reverse) / reverse_share, len(backfeed) / (1 - reverse_share))
        r, b = int(round(total * reverse_share)), int(round(total * (1 - reverse_share)))
        r, b = min(r, len(reverse)), min(b, len(backfeed))
    mask = np.array([o not in ("reverse", "backfeed") for o in origin], dtype=bool)
    mask[np.asarray(reverse[:r] + backfeed[:b], dtype=np.int64)] = True
    return mask


def mix(table: pa.Table, reverse_share: float) -> pa.Table:
    """The table with reverse:backfeed rows at ``reverse_share`` : 1 - ``reverse_share``."""
    return table.filter(pa.array(mix_mask(table["id"].to_pylist(), table["origin"].to_pylist(), reverse_share), pa.bool_()))


def parse_mix(text: str) -> tuple[int, int]:
    left, _, right = text.partition("/")
    try:
        r, b = int(left), int(right)
    except ValueError:
        raise ValueError(f"a reverse/backfeed mix is 'R/B' in percent, e.g. '70/30', not {text!r}") from None
    if r < 0 or b < 0 or r + b != 100:
        raise ValueError(f"a reverse/backfeed mix must add up to 100, not {text!r}")
    return r, b


@dataclass(frozen=True)
class Plan:
    """A variant as a row mask over the screened rows (what a streaming export writes)."""

    name: str
    description: str
    mask: np.ndarray
    note: str = ""


def plan(
    columns: pa.Table,
    *,
    thresholds: Sequence[float],
    mixes: Sequence[str],
    lint_unfiltered: bool,
    publish_threshold: float,
    answered_from: float | None,
) -> list[Plan]:
    """Every requested variant's rows, from the screened rows' ``id``, ``origin``, ``quality_mean``,
    ``lint_passed`` and ``in_dataset`` columns only."""
    out = []
    quality = np.asarray(columns["quality_mean"].to_numpy(zero_copy_only=False), dtype=np.float64)
    lint = np.asarray(columns["lint_passed"].to_numpy(zero_copy_only=False), dtype=bool)
    in_dataset = np.asarray(columns["in_dataset"].to_numpy(zero_copy_only=False), dtype=bool)
    unscored = np.isnan(quality)
    for threshold in thresholds:
        mask = lint & (unscored | (np.nan_to_num(quality, nan=-1.0) >= threshold))
        note = ""
        if answered_from is not None and threshold < answered_from:
            note = f"incomplete: the code pipeline answered only problems scoring >= {answered_from:g} (its answer_threshold)"
        out.append(Plan(f"quality_{threshold:g}", f"lint-passed rows with quality >= {threshold:g}", mask, note))
    if mixes:
        released = np.nonzero(in_dataset)[0]
        ids = columns["id"].take(released).to_pylist()
        origin = columns["origin"].take(released).to_pylist()
        for text in mixes:
            r, b = parse_mix(text)
            mask = np.zeros(len(in_dataset), dtype=bool)
            mask[released[mix_mask(ids, origin, r / 100)]] = True
            out.append(Plan(f"mix_{r}_{b}", f"the release with reverse:backfeed rows at {r}:{b}", mask))
    if lint_unfiltered:
        mask = in_dataset | (~lint & (unscored | (np.nan_to_num(quality, nan=-1.0) >= publish_threshold)))
        out.append(
            Plan("lint_unfiltered", f"no lint gate: the release plus lint-rejected pairs with quality >= {publish_threshold:g}", mask)
        )
    return out


def variants(
    screened: pa.Table,
    *,
    thresholds: Sequence[float],
    mixes: Sequence[str],
    lint_unfiltered: bool,
    publish_threshold: float,
    answered_from: float | None,
) -> list[Variant]:
    """Every requested variant of the screened rows (``in_dataset`` = the release)."""
    plans = plan(
        screened,
        thresholds=thresholds,
        mixes=mixes,
        lint_unfiltered=lint_unfiltered,
        publish_threshold=publish_threshold,
        answered_from=answered_from,
    )
    return [Variant(p.name, p.description, screened.filter(pa.array(p.mask)), p.note) for p in plans]
