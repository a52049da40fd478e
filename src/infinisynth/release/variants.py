"""Ablation variants of one release, without new model calls (Infinite-Instruct's ablations).

All of them select from the same screened (deduplicated, decontaminated) rows:

- ``quality_{T}``: rows that passed the lint gate and score at least ``T`` (rows without a quality
  score, e.g. the subject pipeline's, are in every one). Thresholds under the code pipeline's
  ``answer_threshold`` are incomplete: those problems were never answered; the card says so.
- ``mix_{R}_{B}``: the release with its reverse and backfeed rows in the proportion R:B, as many
  as the rarer side allows (a deterministic choice by id hash); other origins unchanged.
- ``lint_unfiltered``: the release plus the pairs the lint gate rejected that pass the publish
  threshold (error-only filtering is the release itself).

A variant is a filter expression over a batch of rows and a row count, both known before any row
is written, so an export streams its rows once with memory flat in their count. Quality and lint
variants are row-local. A mix keeps the first ``r`` eligible reverse rows (``b`` backfeed) in the
order of their ids' hash keys, then of their positions (a stable sort's order): a pass over the
ids counts them and histograms their keys by the top 16 bits, a second keeps the keys of the
bucket holding the ``r``-th, and the mix is "(key, position) up to the ``r``-th's". Streamed
rows are hashed again (:func:`with_keys`): CPU a pass, never a key kept per row.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
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
SELECTION_COLUMNS = ["id", "origin", "quality_mean", "lint_passed", "in_dataset"]  # all a variant's rule reads
KEY, ROW = "_id_key", "_row"  # what with_keys adds: the id's hash key, the row's position in the pass
BUCKET_SHIFT = np.uint64(48)  # histogram buckets: a key's top 16 bits
BUCKETS = 1 << 16

Passes = Callable[[], Iterable[pa.Table | pa.RecordBatch]]  # a new pass over the rows, in the same order each time

EVERY_ROW, NO_ROW = pc.scalar(True), pc.scalar(False)


def _or(value: pc.Expression, if_null: pc.Expression) -> pc.Expression:
    """``value`` with nulls taken as ``if_null``: every rule is true or false, never null."""
    return pc.coalesce(value, if_null)


RELEASED = _or(pc.field("in_dataset"), NO_ROW)
LINT_PASSED = _or(pc.field("lint_passed"), NO_ROW)
UNSCORED = _or(pc.is_nan(pc.field("quality_mean")), EVERY_ROW)  # null or NaN


def _scores_at_least(threshold: float) -> pc.Expression:
    return UNSCORED | _or(pc.field("quality_mean") >= threshold, NO_ROW)


def _origin_is(origin: str) -> pc.Expression:
    return _or(pc.field("origin") == origin, NO_ROW)


def _table(batch: pa.Table | pa.RecordBatch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each id's SHA-256, its first 8 bytes as a big-endian number: a deterministic shuffle key.
    The ids' UTF-8 bytes come from Arrow as ``bytes`` (a binary cast): no ``str`` made, none encoded."""
    digests = b"".join([hashlib.sha256(i).digest() for i in ids.cast(pa.binary()).to_pylist()])
    return np.frombuffer(digests, dtype=">u8").reshape(-1, 4)[:, 0].astype(np.uint64)  # a digest's first of 4 words


def with_keys(batch: pa.Table | pa.RecordBatch, start: int) -> pa.Table:
    """``batch``, rows ``start`` on of a pass, with its ids' hash keys and its rows' positions: what a
    mix's rule reads besides the selection columns."""
    table = _table(batch)
    positions = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
    return table.append_column(KEY, pa.array(id_keys(table["id"]), pa.uint64())).append_column(ROW, positions)


def mix_counts(reverse_share: float, reverse: int, backfeed: int) -> tuple[int, int]:
    """How many of ``reverse`` and ``backfeed`` rows a mix at ``reverse_share`` keeps: that ratio,
    as many as the rarer side allows."""
    if reverse_share >= 1:
        return reverse, 0
    if reverse_share <= 0:
        return 0, backfeed
    total = min(reverse / reverse_share, backfeed / (1 - reverse_share))
    r, b = int(round(total * reverse_share)), int(round(total * (1 - reverse_share)))
    return min(r, reverse), min(b, backfeed)


def _keyed_rows(passes: Passes, eligible: pc.Expression) -> Iterator[tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """One pass: per batch, how many rows are ``eligible`` and, per origin of :data:`ORIGINS`, those
    rows' hash keys and positions."""
    start = 0
    for batch in passes():
        table = _table(batch)
        positions = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
        start += table.num_rows
        chosen = table.append_column(ROW, positions).filter(eligible)
        keyed = {}
        for origin in ORIGINS:
            rows = chosen.filter(_origin_is(origin))
            keyed[origin] = (id_keys(rows["id"]), rows[ROW].to_numpy())
        yield chosen.num_rows, keyed


def _bucket(key: np.ndarray) -> np.ndarray:
    return (key >> BUCKET_SHIFT).astype(np.int64)


def _nth_rows(
    histograms: dict[str, np.ndarray], wanted: set[tuple[str, int]], passes: Passes, eligible: pc.Expression
) -> dict[tuple[str, int], tuple[int, int]]:
    """For each ``(origin, n)`` of ``wanted``, the (key, position) of the ``n``-th eligible row of
    that origin in (key, position) order: one more pass, keeping the keys of its bucket only."""
    where = {}  # (origin, n) -> (its bucket, its rank there from 0)
    for origin, n in wanted:
        up_to = np.cumsum(histograms[origin])
        bucket = int(np.searchsorted(up_to, n))  # the first bucket with n keys up to it
        where[origin, n] = bucket, n - 1 - (int(up_to[bucket - 1]) if bucket else 0)
    buckets = {origin: [b for (o, _), (b, _) in where.items() if o == origin] for origin in ORIGINS}
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {o: [] for o in ORIGINS}
    for _, keyed in _keyed_rows(passes, eligible):
        for origin, (keys, positions) in keyed.items():
            inside = np.isin(_bucket(keys), buckets[origin])
            kept[origin].append((keys[inside], positions[inside]))
    found = {}
    for (origin, n), (bucket, rank) in where.items():
        keys = np.concatenate([k for k, _ in kept[origin]])
        positions = np.concatenate([p for _, p in kept[origin]])
        inside = _bucket(keys) == bucket
        keys, positions = keys[inside], positions[inside]
        nth = np.lexsort((positions, keys))[rank]  # equal keys (an id twice) by position, as a stable sort orders them
        found[origin, n] = int(keys[nth]), int(positions[nth])
    return found


def _first(n: int, of: int, nth: tuple[int, int] | None) -> pc.Expression:
    """Rows up to the ``n``-th of ``of`` in (key, position) order, ``nth`` being its (key, position)."""
    if n == 0:
        return NO_ROW
    if n == of or nth is None:
        return EVERY_ROW
    key, position = pa.scalar(nth[0], pa.uint64()), pa.scalar(nth[1], pa.int64())
    return (pc.field(KEY) < key) | ((pc.field(KEY) == key) & (pc.field(ROW) <= position))


def mix_rules(passes: Passes, reverse_shares: Sequence[float], eligible: pc.Expression = EVERY_ROW) -> list[tuple[pc.Expression, int]]:
    """Each mix's rule over :func:`with_keys` batches and its row count: the ``eligible`` rows, their
    reverse and backfeed ones at ``reverse_share`` : 1 - ``reverse_share`` taken in hash order.
    ``passes`` gives the ``id`` and ``origin`` columns and those ``eligible`` reads."""
    histograms = {o: np.zeros(BUCKETS, dtype=np.int64) for o in ORIGINS}
    eligible_rows = 0
    for rows, keyed in _keyed_rows(passes, eligible):
        eligible_rows += rows
        for origin, (keys, _) in keyed.items():
            histograms[origin] += np.bincount(_bucket(keys), minlength=BUCKETS)
    totals = {o: int(h.sum()) for o, h in histograms.items()}
    kept = [dict(zip(ORIGINS, mix_counts(share, totals["reverse"], totals["backfeed"]))) for share in reverse_shares]
    wanted = {(o, n) for counts in kept for o, n in counts.items() if 0 < n < totals[o]}
    nth = _nth_rows(histograms, wanted, passes, eligible) if wanted else {}
    others = eligible & ~_origin_is("reverse") & ~_origin_is("backfeed")  # other origins: unchanged
    rules = []
    for counts in kept:
        rule = others
        for origin, n in counts.items():
            rule = rule | (eligible & _origin_is(origin) & _first(n, totals[origin], nth.get((origin, n))))
        rules.append((rule, eligible_rows - sum(totals.values()) + sum(counts.values())))
    return rules


def mix(table: pa.Table, reverse_share: float) -> pa.Table:
    """The table with reverse:backfeed rows at ``reverse_share`` : 1 - ``reverse_share``."""
    [(rule, _)] = mix_rules(lambda: [table], [reverse_share])
    return with_keys(table, 0).filter(rule).select(table.column_names)


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
    """A variant as a filter over batches of screened rows (:func:`with_keys` batches when
    ``keyed``) and how many rows it keeps (shard names carry the count)."""

    name: str
    description: str
    rule: pc.Expression
    rows: int
    note: str = ""
    keyed: bool = False


@dataclass(frozen=True)
class Selection:
    """Every requested variant, and what the release itself (``in_dataset``) holds."""

    variants: list[Plan]
    released: int
    released_origins: dict[str, int]

    @property
    def keyed(self) -> bool:
        """Whether a variant's rule reads the columns :func:`with_keys` adds."""
        return any(v.keyed for v in self.variants)


def plan(
    passes: Passes,
    *,
    thresholds: Sequence[float],
    mixes: Sequence[str],
    lint_unfiltered: bool,
    publish_threshold: float,
    answered_from: float | None,
) -> Selection:
    """Every requested variant of the screened rows, from passes over (at least) their
    :data:`SELECTION_COLUMNS`: one to count, and for the mixes two over the ids."""
    quality = []
    for threshold in thresholds:
        note = ""
        if answered_from is not None and threshold < answered_from:
            note = f"incomplete: the code pipeline answered only problems scoring >= {answered_from:g} (its answer_threshold)"
        rule = LINT_PASSED & _scores_at_least(threshold)
        quality.append((f"quality_{threshold:g}", f"lint-passed rows with quality >= {threshold:g}", rule, note))
    lint = []
    if lint_unfiltered:
        description = f"no lint gate: the release plus lint-rejected pairs with quality >= {publish_threshold:g}"
        lint.append(("lint_unfiltered", description, RELEASED | (~LINT_PASSED & _scores_at_least(publish_threshold)), ""))
    local = quality + lint  # row-local: counted in one pass
    counts = [0] * len(local)
    released, origins = 0, Counter[str]()
    for batch in passes():
        table = _table(batch)
        in_release = table.filter(RELEASED)
        released += in_release.num_rows
        origins.update(_value_counts(in_release["origin"]))
        for i, (_, _, rule, _) in enumerate(local):
            counts[i] += table.filter(rule).num_rows
    counted = [Plan(name, description, rule, rows, note) for (name, description, rule, note), rows in zip(local, counts)]
    shares = [parse_mix(text) for text in mixes]
    rules = mix_rules(passes, [r / 100 for r, _ in shares], RELEASED) if shares else []
    mixed = [
        Plan(f"mix_{r}_{b}", f"the release with reverse:backfeed rows at {r}:{b}", rule, rows, keyed=True)
        for (r, b), (rule, rows) in zip(shares, rules)
    ]
    return Selection(counted[: len(quality)] + mixed + counted[len(quality) :], released, dict(origins))


def _value_counts(values: pa.ChunkedArray) -> dict[str, int]:
    """How often each value occurs (Arrow's count: no Python string per row)."""
    counts = pc.value_counts(values)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


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
    selection = plan(
        lambda: [screened],
        thresholds=thresholds,
        mixes=mixes,
        lint_unfiltered=lint_unfiltered,
        publish_threshold=publish_threshold,
        answered_from=answered_from,
    )
    rows = with_keys(screened, 0) if selection.keyed else screened
    return [Variant(p.name, p.description, rows.filter(p.rule).select(screened.column_names), p.note) for p in selection.variants]
