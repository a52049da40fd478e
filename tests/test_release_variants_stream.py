"""The export's variants, selected batch by batch, are the rows (in their order) that whole-table
masks selected: ``masks`` below is the selection as it was before it streamed (every row's flags
and hash key in numpy at once, an argsort for the mixes), kept as the reference."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from infinisynth.release import variants as v

THRESHOLDS = [4.0, 5.0, 6.0, 7.0]
MIXES = ["100/0", "50/50", "70/30", "0/100", "1/99", "99/1"]
PUBLISH = 6.0


def masks(columns: pa.Table) -> dict[str, np.ndarray]:
    """Each variant's rows as a mask over ``columns``, by whole-table numpy (the reference)."""
    quality = np.asarray(columns["quality_mean"].to_numpy(zero_copy_only=False), dtype=np.float64)
    lint = np.asarray(columns["lint_passed"].to_numpy(zero_copy_only=False), dtype=bool)
    in_dataset = np.asarray(columns["in_dataset"].to_numpy(zero_copy_only=False), dtype=bool)
    origin = np.array(columns["origin"].to_pylist(), dtype=object)
    is_reverse, is_backfeed = origin == "reverse", origin == "backfeed"
    unscored = np.isnan(quality)
    out = {f"quality_{t:g}": lint & (unscored | (np.nan_to_num(quality, nan=-1.0) >= t)) for t in THRESHOLDS}
    keys = np.array([int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") for i in columns["id"].to_pylist()], dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    order = order[in_dataset[order]]
    reverse, backfeed = order[is_reverse[order]], order[is_backfeed[order]]
    for text in MIXES:
        r, b = v.parse_mix(text)
        share = r / 100
        if share >= 1:
            take_r, take_b = len(reverse), 0
        elif share <= 0:
            take_r, take_b = 0, len(backfeed)
        else:
            total = min(len(reverse) / share, len(backfeed) / (1 - share))
            take_r, take_b = min(int(round(total * share)), len(reverse)), min(int(round(total * (1 - share))), len(backfeed))
        mask = np.zeros(columns.num_rows, dtype=bool)
        mask[order[~(is_reverse[order] | is_backfeed[order])]] = True
        mask[reverse[:take_r]] = True
        mask[backfeed[:take_b]] = True
        out[f"mix_{r}_{b}"] = mask
    out["lint_unfiltered"] = in_dataset | (~lint & (unscored | (np.nan_to_num(quality, nan=-1.0) >= PUBLISH)))
    return out


def rows(n: int, seed: int, origins: list[str], ids: str = "unique") -> pa.Table:
    """``n`` random screened rows: some not in the release, some lint-rejected, null and NaN scores."""
    rng = np.random.default_rng(seed)
    quality = [None if u < 0.1 else float("nan") if u < 0.12 else round(q, 1) for u, q in zip(rng.random(n), rng.uniform(3, 9, n))]
    names = [f"row-{seed}-{i}" for i in range(n)]
    if ids == "repeated":  # the same id more than once: equal hash keys, ordered by position
        names = [names[i] for i in rng.integers(0, max(1, n // 3), n)]
    return pa.table(
        {
            "id": pa.array(names, pa.string()),
            "origin": pa.array(rng.choice(origins, n).tolist() if origins else [], pa.string()),
            "quality_mean": pa.array(quality, pa.float64()),
            "lint_passed": pa.array(rng.random(n) < 0.9),
            "in_dataset": pa.array(rng.random(n) < 0.8),
            "row": pa.array(np.arange(n)),  # a column no rule reads, carried through: which rows, in which order
        }
    )


def streamed(table: pa.Table, plan_rows: int, write_rows: int) -> tuple[v.Selection, dict[str, pa.Table]]:
    """The export's way: rules from passes of ``plan_rows`` batches, rows in ``write_rows`` batches."""
    selection = v.plan(
        lambda: table.select(v.SELECTION_COLUMNS).to_batches(max_chunksize=plan_rows),
        thresholds=THRESHOLDS,
        mixes=MIXES,
        lint_unfiltered=True,
        publish_threshold=PUBLISH,
        answered_from=None,
    )
    parts: dict[str, list[pa.Table]] = {p.name: [] for p in selection.variants}
    at = 0
    for batch in table.to_batches(max_chunksize=write_rows):
        keyed = v.with_keys(batch, at)
        for p in selection.variants:
            parts[p.name].append(keyed.filter(p.rule).select(table.column_names))
        at += batch.num_rows
    return selection, {name: pa.concat_tables(tables) if tables else table.slice(0, 0) for name, tables in parts.items()}


CASES = {
    "all origins": dict(n=4000, origins=["reverse", "backfeed", "evolved", "subject"]),
    "no reverse rows": dict(n=3000, origins=["backfeed", "evolved"]),
    "no backfeed rows": dict(n=3000, origins=["reverse", "subject"]),
    "neither": dict(n=500, origins=["evolved"]),
    "repeated ids": dict(n=3000, origins=["reverse", "backfeed", "evolved"], ids="repeated"),
    "no rows": dict(n=0, origins=[]),
}


@pytest.mark.parametrize("bucket_bits", [16, 3], ids=["65536 buckets", "8 buckets: many keys a bucket"])
@pytest.mark.parametrize("case", CASES)
def test_streamed_variants_are_the_rows_whole_table_masks_chose(case, bucket_bits, monkeypatch):
    monkeypatch.setattr(v, "BUCKET_SHIFT", np.uint64(64 - bucket_bits))
    monkeypatch.setattr(v, "BUCKETS", 1 << bucket_bits)
    spec = CASES[case]
    table = rows(spec["n"], seed=len(case), origins=spec["origins"], ids=spec.get("ids", "unique"))
    expected = masks(table)
    selection, got = streamed(table, plan_rows=700, write_rows=333)
    assert [p.name for p in selection.variants] == [f"quality_{t:g}" for t in THRESHOLDS] + [
        f"mix_{m.replace('/', '_')}" for m in MIXES
    ] + ["lint_unfiltered"]
    for p in selection.variants:
        want = table.filter(pa.array(expected[p.name]))
        assert p.rows == want.num_rows, p.name  # counted before any row was written
        assert got[p.name]["row"].to_pylist() == want["row"].to_pylist(), p.name  # the same rows, in the same order
        assert got[p.name].column_names == table.column_names
    in_release = table.filter(table["in_dataset"])
    assert selection.released == in_release.num_rows
    assert selection.released_origins == {o: in_release["origin"].to_pylist().count(o) for o in set(in_release["origin"].to_pylist())}


def test_a_mix_cut_inside_equal_keys_takes_the_first_rows():
    """Ten reverse rows with one id (one key): a 50:50 mix with 4 backfeed rows takes the first 4."""
    table = pa.table(
        {
            "id": ["same"] * 10 + [f"b{i}" for i in range(4)],
            "origin": ["reverse"] * 10 + ["backfeed"] * 4,
            "quality_mean": [7.0] * 14,
            "lint_passed": [True] * 14,
            "in_dataset": [True] * 14,
        }
    )
    half = v.variants(table, thresholds=[], mixes=["50/50"], lint_unfiltered=False, publish_threshold=PUBLISH, answered_from=None)
    assert half[0].table["id"].to_pylist() == ["same"] * 4 + [f"b{i}" for i in range(4)]
    assert half[0].table.equals(table.filter(pa.array(masks(table)["mix_50_50"])))  # no NaN here: equals holds


def test_variants_of_a_table_keep_its_columns_and_notes():
    table = rows(200, seed=1, origins=["reverse", "backfeed"])
    made = v.variants(table, thresholds=[5.0], mixes=["70/30"], lint_unfiltered=True, publish_threshold=PUBLISH, answered_from=6.0)
    assert [m.name for m in made] == ["quality_5", "mix_70_30", "lint_unfiltered"]
    assert all(m.table.column_names == table.column_names for m in made)
    assert "answer_threshold" in made[0].note and not made[1].note
    expected = masks(table)
    assert all(m.table["row"].to_pylist() == table.filter(pa.array(expected[m.name]))["row"].to_pylist() for m in made)
