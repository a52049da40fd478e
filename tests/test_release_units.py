"""The release's pure functions, fast (no model): dedup bookkeeping, the n-gram screen, benchmark
files that cannot be used, mixes. The real embedding model runs in tests/test_release.py."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pytest

from infinisynth.release.benchmarks import BenchmarkError, BenchmarkFile, BenchmarkItem, humaneval, load_benchmarks, parse_files, read_file
from infinisynth.release.decontaminate import BenchmarkIndex, DecontamSettings, screen
from infinisynth.release.dedup import ANN_BASE, EMBEDDING_DIM, DedupSettings, HashRuns, ReleasedIndex, SeenTexts, deduplicate
from infinisynth.release.variants import mix, parse_mix


def unit(*hot: int) -> np.ndarray:
    v = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    for h in hot:
        v[h] = 1.0
    return v / np.linalg.norm(v)


def random_unit(text: str) -> np.ndarray:
    v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(EMBEDDING_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def fake_embedder(vectors: dict[str, np.ndarray]):
    """Given vectors for some texts, unrelated random ones (cosine ~0) for the rest."""
    return lambda texts: np.stack([vectors.get(t, random_unit(t)) for t in texts]) if texts else np.zeros((0, EMBEDDING_DIM))


def test_dedup_names_method_and_counterpart_within_and_across_releases(tmp_path):
    long = " ".join(f"word{i}" for i in range(40))
    texts = [
        "Sort a list.",
        "SORT a list!!",
        long,
        long.replace("word7", "other"),
        "Reverse a string.",
        "Flip a string around.",
        "Parse JSON.",
    ]
    close = unit(1) * 4 + unit(2)
    vectors = {"Reverse a string.": unit(1), "Flip a string around.": close / np.linalg.norm(close)}  # cosine 0.97
    ids = [f"r{i}" for i in range(len(texts))]
    first = deduplicate(ids, texts, fake_embedder(vectors), DedupSettings(batch_size=3))  # batches split the groups
    got = {ids[d.row]: (d.method, d.counterpart) for d in first.duplicates}
    assert got == {"r1": ("exact", "r0"), "r3": ("near", "r2"), "r5": ("semantic", "r4")}
    assert first.keep.tolist() == [True, False, True, False, True, False, True]
    assert first.index.num_rows == 4 and first.index["id"].to_pylist() == ["r0", "r2", "r4", "r6"]

    earlier = ReleasedIndex(DedupSettings())
    earlier.load(first.index, "v1")
    second = deduplicate(
        ["n0", "n1", "n2"], ["sort a LIST", "Flip a string around.", "Something new."], fake_embedder(vectors), DedupSettings(), earlier
    )
    assert [(d.method, d.counterpart, d.release) for d in second.duplicates] == [("exact", "r0", "v1"), ("semantic", "r4", "v1")]
    assert second.keep.tolist() == [False, False, True]

    # the same, with v1's HNSW index saved as releases before key maps saved it (keys: ANN_BASE + row
    # of its index table) and memory-mapped: the identity map
    from usearch.index import Index

    saved = Index(ndim=EMBEDDING_DIM, metric="cos", dtype="i8")
    embeddings = np.asarray(first.index["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    saved.add(ANN_BASE + np.arange(first.index.num_rows, dtype=np.uint64), embeddings.reshape(first.index.num_rows, -1))
    saved.save(str(tmp_path / "v1.usearch"))
    viewed = ReleasedIndex(DedupSettings())
    viewed.load(first.index.drop_columns(["embedding"]).to_batches(), "v1", ann_path=str(tmp_path / "v1.usearch"))
    assert len(viewed.ann) == 0 and len(viewed.views) == 1  # nothing rebuilt in memory
    third = deduplicate(
        ["n0", "n1", "n2"], ["sort a LIST", "Flip a string around.", "Something new."], fake_embedder(vectors), DedupSettings(), viewed
    )
    assert [(d.method, d.counterpart, d.release) for d in third.duplicates] == [("exact", "r0", "v1"), ("semantic", "r4", "v1")]


def paraphrased(rows: int, paraphrases: int, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    """Distinct texts with random vectors, then paraphrases (another text, its original's vector plus noise: cosine ~0.98)."""
    rng = np.random.default_rng(seed)
    texts = [f"row {i} " + " ".join(f"w{int(w)}" for w in rng.integers(0, 10**6, 12)) for i in range(rows)]
    vectors = {t: random_unit(t) for t in texts}
    for j in range(paraphrases):
        original = vectors[texts[int(rng.integers(rows))]]
        noisy = original + 0.008 * rng.standard_normal(EMBEDDING_DIM).astype(np.float32)
        texts.append(f"paraphrase {j} of something")
        vectors[texts[-1]] = noisy / np.linalg.norm(noisy)
    return texts, vectors


def verdicts(result) -> list[tuple[int, str, str, str | None]]:
    return [(d.row, d.method, d.counterpart, d.release) for d in result.duplicates]


def test_hnsw_segments_drop_the_same_rows_as_one_index_within_and_across_releases(tmp_path):
    """Segments of 37 rows (saved, memory-mapped, all searched) against one in-memory index: the same
    verdicts, within a release across batches and against an earlier release's published segments
    read through its key map (which leaves out a row the earlier release did not publish)."""
    texts, vectors = paraphrased(400, 60)
    embed = fake_embedder(vectors)
    ids = [f"r{i}" for i in range(len(texts))]
    segmented = ReleasedIndex(DedupSettings(batch_size=64, segment_rows=37), segment_dir=str(tmp_path), segment_prefix="v1")
    one = deduplicate(ids, texts, embed, DedupSettings(batch_size=64))
    many = deduplicate(ids, texts, embed, DedupSettings(batch_size=64, segment_rows=37), segmented)
    assert verdicts(many) == verdicts(one) and sum(d.method == "semantic" for d in one.duplicates) >= 55
    assert len(segmented.seal()) == -(-400 // 37) and len(segmented.ann) == 0  # every segment saved, none in memory

    # v1 publishes its segments and the keys of the rows it released: all but its first kept row
    published = one.index.slice(1)
    key_map = np.arange(1, one.index.num_rows, dtype=np.uint64)  # keys are registration ordinals: row r's key is r
    np.save(tmp_path / "keys.npy", key_map)
    later_texts = [texts[0], texts[5], *(f"paraphrase {j} of something" for j in range(3)), "brand new text"]
    later_ids = [f"n{i}" for i in range(len(later_texts))]
    expected = None
    for segments in ([], segmented.segments):
        earlier = ReleasedIndex(DedupSettings(batch_size=64, segment_rows=37))
        if segments:
            earlier.load(published.drop_columns(["embedding"]), "v1", segments, np.load(tmp_path / "keys.npy", mmap_mode="r"))
        else:
            earlier.load(published, "v1")  # rebuilt from the published embeddings: only released rows
        got = verdicts(deduplicate(later_ids, later_texts, embed, DedupSettings(batch_size=64), earlier))
        assert all(counterpart != "r0" for _, _, counterpart, _ in got)  # never the row v1 did not publish
        assert (1, "exact", "r5", "v1") in got
        expected = got if expected is None else expected
        assert got == expected


def test_hash_runs_capped_at_a_run_size_find_every_key():
    """Runs stop merging at ``max_run`` entries (so a merge never copies the whole map) and a
    lookup still finds every key of every run, duplicates included."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 500, size=5_000, dtype=np.uint64)  # many repeats
    capped, whole = HashRuns(max_run=256), HashRuns(max_run=1 << 30)
    for start in range(0, len(hashes), 100):
        keys = np.arange(start, min(start + 100, len(hashes)), dtype=np.int64)
        capped.add(hashes[keys], keys)
        whole.add(hashes[keys], keys)
    assert max(len(h) for h, _ in capped.runs) <= 256 and len(capped.runs) > 10 and len(whole.runs) < len(capped.runs)
    queries = np.array([3, 499, 1_000], dtype=np.uint64)

    def found(runs: HashRuns) -> list[tuple[int, int]]:
        return sorted(zip(*(a.tolist() for a in runs.find(queries))))

    expected = sorted((q, int(k)) for q, h in enumerate(queries) for k in np.nonzero(hashes == h)[0])
    assert found(capped) == found(whole) == expected and len(capped) == len(hashes)
    assert any(isinstance(h, np.memmap) for h, _ in capped.runs)  # runs that stopped growing are memory-mapped files


def test_seen_texts_is_the_seed_miners_exact_and_near_check():
    seen = SeenTexts()
    snippet = "\n".join(f"value_{i} = compute(value_{i - 1}, {i})" for i in range(1, 12))
    assert seen.check(snippet) is None
    assert seen.check("  " + snippet.replace("\n", "\n  ")) == "exact"
    assert seen.check(snippet.replace("compute(value_5, 6)", "compute(value_5, 60)")) == "near"
    assert seen.check("def other():\n    return 1\n") is None


def test_the_ngram_screen_survives_reformatting_and_names_the_item():
    items = humaneval()
    index = BenchmarkIndex(items, lambda texts: np.stack([unit(5)] * len(texts)), DecontamSettings(max_cosine=0.99))
    he = next(i for i in items if i.item == "HumanEval/11")
    reformatted = "Please do:\n" + "\n".join(line.strip() for line in he.text.splitlines()).replace('"""', "'''")
    solution = next(i for i in items if i.item == "HumanEval/20").solution
    prompts = ["Write a haiku about autumn.", reformatted, "Write a function.", "Find numbers close to each other and stuff."]
    responses = ["Leaves fall.", "ok", f"Here:\n{solution}", "no"]
    hits = screen(prompts, responses, np.stack([unit(9)] * 4), index)
    assert [(h.row, h.item, h.measure, h.field) for h in hits] == [
        (1, "HumanEval/11", "ngram", "prompt"),
        (2, "HumanEval/20", "ngram", "response"),
    ]


def test_the_embedding_screen_of_responses_names_the_benchmark_item_and_field():
    item = BenchmarkItem("mine", "mine/1", "Parse a date.", "Parse a date.\ndef parse(text): return date.fromisoformat(text)")
    close = unit(3) * 5 + unit(4)
    vectors = {item.solution: unit(3), item.text: unit(7), "restated solution": close / np.linalg.norm(close)}  # cosine 0.98
    looser = unit(3) + unit(4)
    vectors["a related answer"] = looser / np.linalg.norm(looser)  # cosine 0.71: under the response threshold
    embed = fake_embedder(vectors)
    index = BenchmarkIndex([item], embed, DecontamSettings())
    responses = ["unrelated", "restated solution", "a related answer"]
    hits = screen(["Something else.", "Another thing.", "A third."], responses, np.stack([unit(9)] * 3), index, embed(responses))
    assert [(h.row, h.benchmark, h.item, h.measure, h.field) for h in hits] == [(1, "mine", "mine/1", "embedding", "response")]
    assert hits[0].value >= DecontamSettings().max_cosine_response


def test_benchmark_files_that_cannot_be_used_fail_loudly(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{not json\n')
    with pytest.raises(BenchmarkError, match="broken.jsonl is not valid jsonl"):
        read_file(BenchmarkFile(url=str(broken)))
    empty = tmp_path / "empty.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
    with pytest.raises(BenchmarkError, match="has no rows"):
        read_file(BenchmarkFile(url=str(empty)))
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"other": "b"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"rows \[1\] have no text"):
        read_file(BenchmarkFile(url=str(partial)))
    with pytest.raises(BenchmarkError, match="cannot read"):
        read_file(BenchmarkFile(url="file:///nonexistent/dir/bench.parquet"))
    with pytest.raises(BenchmarkError, match="unknown built-in"):
        load_benchmarks(["mbpp"], [])
    with pytest.raises(BenchmarkError, match="not a benchmark file"):
        parse_files([{"path": "x.jsonl"}])
    assert parse_files(["s3://b/x.jsonl"])[0].label == "x"


def test_mixes_keep_the_ratio_and_the_other_origins():
    origins = ["reverse"] * 10 + ["backfeed"] * 4 + ["evolved"] * 3
    table = pa.table({"id": [f"r{i}" for i in range(len(origins))], "origin": origins})
    for share, reverse, backfeed in ((1.0, 10, 0), (0.0, 0, 4), (0.5, 4, 4), (0.7, 9, 4)):
        counts = mix(table, share)["origin"].to_pylist()
        assert (counts.count("reverse"), counts.count("backfeed"), counts.count("evolved")) == (reverse, backfeed, 3), share
    assert parse_mix("70/30") == (70, 30)
    with pytest.raises(ValueError, match="add up to 100"):
        parse_mix("70/20")
