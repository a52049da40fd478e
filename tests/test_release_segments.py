"""Dedup's HNSW index in segments, and the export's key map, through the release's steps.

Two releases run as the DAG runs them, with a hashed fake embedder (fast; a few texts get chosen
vectors): once with a one-row HNSW segment (every kept row its own saved, memory-mapped segment)
and once with the default. Day 1's decontamination drops a row dedup kept, so day 1's published
segments hold a key its key map does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infinisynth.pipelines.release import Decontaminate, Deduplicate
from infinisynth.release.dedup import EMBEDDING_DIM, normalize
from infinisynth.stages.publish import DATASET_SCHEMA as CODE_SCHEMA
from infinisynth.storage import Store
from tests.test_release import DAY1, DAY2, USER_ITEM, build, code_row, commit, dropped

CONTAMINATED = f"Solve this: {USER_ITEM}"  # the user benchmark's item: decontamination drops it after dedup kept it
NEIGHBOUR = "Write a Python function that counts the palindromic substrings of a string, distinct ones only."
PARAPHRASE = "Count every distinct palindromic substring of a lowercase string, modulo a large prime, in Python."
TOPICS = ["a CSV parser", "an LRU cache", "a trie", "a rate limiter", "a JSON validator", "a binary heap", "a URL router", "a diff tool"]


def _basis() -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((EMBEDDING_DIM, 3)))
    return q.T.astype(np.float32)


def chosen_vectors() -> dict[str, np.ndarray]:
    """The paraphrase's nearest row is the contaminated one (cosine 0.96), its next the released
    neighbour (0.94, above the 0.92 threshold); the two day-1 rows are 0.90 apart (both kept)."""
    u, v, w = _basis()
    return {
        normalize(PARAPHRASE): u,
        normalize(CONTAMINATED): 0.96 * u + np.sqrt(1 - 0.96**2) * v,
        normalize(NEIGHBOUR): 0.94 * u + np.sqrt(1 - 0.94**2) * w,
    }


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """Chosen vectors for a few texts, else a unit vector seeded by the text's hash (unrelated: cosine ~0)."""
    chosen = chosen_vectors()
    rows = []
    for text in texts:
        key = normalize(text)
        if key in chosen:
            rows.append(chosen[key])
        else:
            seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
            rows.append(np.random.default_rng(seed).standard_normal(EMBEDDING_DIM).astype(np.float32))
    vectors = np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def plant(store: Store) -> None:
    meta = {"held_out": {"fraction": 0.0}, "quality_threshold": 6.0}
    day1 = [code_row(f"t{i}", f"Write a Python module implementing {t} with tests and docstrings.", 7.0) for i, t in enumerate(TOPICS)]
    day1 += [
        code_row("t0-copy", f"WRITE a python module implementing {TOPICS[0]}, with tests and docstrings!", 6.5),  # exact
        code_row("contaminated", CONTAMINATED, 6.5),
        code_row("neighbour", NEIGHBOUR, 6.5),
    ]
    commit(store, "code_instruct", "dataset", DAY1, day1, CODE_SCHEMA, meta)
    day2 = [
        code_row("paraphrase", PARAPHRASE, 7.0),  # nearest: the unreleased row; must be found as the neighbour's duplicate
        code_row("contaminated-again", CONTAMINATED, 7.0),  # identical to the unreleased row: no released row is close
        code_row("t3-again", f"Write a Python module implementing {TOPICS[3]} with tests and docstrings.", 7.0),  # exact, released
        code_row("new", "Write a Go program that tails a log file and prints lines matching a regular expression.", 7.0),
    ]
    commit(store, "code_instruct", "dataset", DAY2, day2, CODE_SCHEMA, meta)


def run_releases(root: Path, segment_rows: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(Deduplicate, "embed", staticmethod(fake_embed))  # a plain function would bind as a method
    monkeypatch.setattr(Decontaminate, "embed", staticmethod(fake_embed))
    monkeypatch.setattr(Deduplicate, "segment_rows", segment_rows)
    bench = root / "mine.jsonl"
    bench.write_text(json.dumps({"task_id": "mine/7", "question": USER_ITEM}) + "\n")
    store = Store(f"file://{root / 'data'}")
    plant(store)
    files = [{"url": str(bench), "text_field": "question", "id_field": "task_id", "name": "mine"}]
    first = build(store, DAY1, end_date=DAY1, benchmark_files=files)
    second = build(store, DAY2, benchmark_files=files)
    return {"store": store, "first": first, "second": second}


def verdicts(folder: Path) -> dict[str, tuple[Any, ...]]:
    return {i: (r["step"], r["reason"], r.get("counterpart"), r.get("release"), r.get("item")) for i, r in dropped(folder).items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        tiny = run_releases(tmp_path_factory.mktemp("tiny"), 1, monkeypatch)
        whole = run_releases(tmp_path_factory.mktemp("whole"), 1_000_000, monkeypatch)
    return {"tiny": tiny, "whole": whole}


def test_one_row_segments_drop_the_same_rows_with_the_same_counterparts(runs):
    tiny, whole = runs["tiny"], runs["whole"]
    for release in ("first", "second"):
        assert verdicts(tiny[release]) == verdicts(whole[release])
    meta = tiny["store"].partition("release", "deduplicated", DAY1).manifest().meta
    assert len(meta["ann"]) == 10  # every kept row its own segment, all of them published
    assert len(whole["store"].partition("release", "deduplicated", DAY1).manifest().meta["ann"]) == 1
    second = verdicts(tiny["second"])
    assert second["t3-again"][2:4] == ("t3", DAY1)  # against the earlier release's segments too
    assert second["paraphrase"][2:4] == ("neighbour", DAY1)


def test_a_row_decontamination_dropped_is_never_a_counterpart(runs):
    for run in runs.values():
        first, second = verdicts(run["first"]), verdicts(run["second"])
        assert first["contaminated"][:2] == ("decontaminated", "contaminated")  # dedup kept it: it is in day 1's segments
        # its identical copy is not a duplicate of it (never released): dedup keeps it, decontamination drops it again
        assert second["contaminated-again"][:2] == ("decontaminated", "contaminated")
        # the paraphrase's nearest neighbour is the unreleased row: it is the released one behind it that counts
        assert second["paraphrase"] == ("deduplicated", "duplicate_semantic", "neighbour", DAY1, None)
        assert all(v[2] != "contaminated" for v in second.values())


def test_the_export_publishes_the_dedup_segments_as_they_are_and_a_key_map(runs):
    store: Store = runs["tiny"]["store"]
    root = Path(store.root)
    dedup = store.partition("release", "deduplicated", DAY1)
    index = store.partition("release", "index", DAY1).manifest().meta
    assert index["ann"] == dedup.manifest().meta["ann"]  # the same files: not restored, pruned or renamed
    keys = np.load(root / index["ann_keys"], mmap_mode="r")
    ids = store.partition("release", "index", DAY1).read(columns=["id"])["id"].to_pylist()
    table = dedup.read(columns=["id", "ann_key"])
    ann_key = dict(zip(table["id"].to_pylist(), table["ann_key"].to_pylist()))
    assert keys.tolist() == [ann_key[i] for i in ids]  # the released rows' keys, in index-row order
    assert np.all(np.diff(keys.astype(np.int64)) > 0) and ann_key["contaminated"] not in set(keys.tolist())
    from usearch.index import Index

    published = sorted(k for f in index["ann"] for k in np.asarray(Index.restore(str(root / f), view=True).keys).tolist())
    assert published == sorted(ann_key.values())  # the unreleased row's key stays in the segments, mapped to nothing
