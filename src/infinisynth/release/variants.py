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
import pyarrow.compute as pc


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    table: pa.Table
    note: str = ""


ORIGINS = ("reverse", "backfeed")
HASH_SLICE = 65_536  # ids turned into Python strings at a time


def id_order(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Positions of ``ids`` in the order of their SHA-256 (its first 8 bytes): a deterministic
    shuffle, 8 bytes a row, hashed a slice at a time so no Python object per row is kept."""
    keys = np.empty(len(ids), dtype=np.uint64)
    for start in range(0, len(ids), HASH_SLICE):
        part = ids.slice(start, HASH_SLICE).to_pylist()
        digests = b"".join(hashlib.sha256(i.encode()).digest()[:8] for i in part)
        keys[start : start + len(part)] = np.frombuffer(digests, dtype=">u8")
    return np.argsort(keys, kind="stable")


def origin_flags(origin: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(is reverse, is backfeed) per row."""
    reverse, backfeed = (np.asarray(pc.fill_null(pc.equal(origin, o), False).to_numpy(zero_copy_only=False), dtype=bool) for o in ORIGINS)
    return reverse, backfeed


def mix_mask(
    order: np.ndarray, is_reverse: np.ndarray, is_backfeed: np.ndarray, reverse_share: float, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Which rows a reverse:backfeed mix at ``reverse_share`` : 1 - ``reverse_share`` keeps, among
    the ``eligible`` rows (all by default), reverse and backfeed rows taken in ``order``."""
    if eligible is not None:
        order = order[eligible[order]]
    reverse, backfeed = order[is_reverse[order]], order[is_backfeed[order]]
    if reverse_share >= 1:
        r, b = len(reverse), 0
    elif reverse_share <= 0:
        r, b = 0, len(backfeed)
    else:
        total = min(len(reverse) / reverse_share, len(backfeed) / (1 - reverse_share))
        r, b = int(round(total * reverse_share)), int(round(total * (1 - reverse_share)))
        r, b = min(r, len(reverse)), min(b, len(backfeed))
    mask = np.zeros(len(is_reverse), dtype=bool)
    mask[order[~(is_reverse[order] | is_backfeed[order])]] = True  # other origins: unchanged
    mask[reverse[:r]] = True
    mask[backfeed[:b]] = True
    return mask


def mix(table: pa.Table, reverse_share: float) -> pa.Table:
    """The table with reverse:backfeed rows at ``reverse_share`` : 1 - ``reverse_share``."""
    mask = mix_mask(id_order(table["id"]), *origin_flags(table["origin"]), reverse_share)
    return table.filter(pa.array(mask, pa.bool_()))


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
        order, (is_reverse, is_backfeed) = id_order(columns["id"]), origin_flags(columns["origin"])
        for text in mixes:
            r, b = parse_mix(text)
            mask = mix_mask(order, is_reverse, is_backfeed, r / 100, eligible=in_dataset)
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
