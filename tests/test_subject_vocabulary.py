"""Tag normalization on small fixed pools whose right answer is known by hand.

The hand-made embedder fixes every similarity, so which tags merge (lambda 0.91), which cluster
(eps 0.47, i.e. cosine >= 0.89) and which fall under the noise floor is worked out in the comments.
One test runs the real all-MiniLM-L6-v2 model on tags whose fate does not depend on fine margins.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from infinisynth.storage import Store
from infinisynth.subject.tagging import RAW_TAG_TYPE
from infinisynth.subject.vocabulary import (
    NormalizeSettings,
    domain_table,
    latest_vocabulary_before,
    load_embedder,
    normalize_pool,
    normalize_tag,
    save_vocabulary,
)

E = np.eye(8)
VECTORS = {
    "python programming": E[0],
    "python coding": 0.95 * E[0] + np.sqrt(1 - 0.95**2) * E[1],  # cos 0.95 to python programming: merges
    "py scripting": 0.90 * E[0] + np.sqrt(1 - 0.90**2) * E[2],  # cos 0.90: no merge, but within eps: clusters
    "data structure": 0.6 * E[0] + 0.8 * E[3],  # cos 0.6: its own tag
    "poetry": E[4],
    "haiku writing": 0.8 * E[4] + 0.6 * E[5],  # cos 0.8 to poetry (distance 0.63 > eps): its own tag
    # night two
    "python development": 0.97 * E[0] + np.sqrt(1 - 0.97**2) * E[6],  # merges into the known canonical
    "graph theory": 0.5 * E[0]
    + 0.6 * E[3]
    + np.sqrt(1 - 0.61) * E[7],  # cos 0.78 to data structure: a new canonical, nearest the programming domain
}


class HandEmbedder:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([VECTORS[t] for t in texts]).astype(np.float32)


def tagged(rows: dict[str, list[str]]) -> pa.Table:
    return pa.table(
        {
            "id": list(rows),
            "raw_tags": pa.array([[{"tag": t, "explanation": ""} for t in tags] for tags in rows.values()], pa.list_(RAW_TAG_TYPE)),
        }
    )


NIGHT_ONE = {
    "r0": ["Python Programming", "Data Structures"],
    "r1": ["python programming", "data structure", "python  programming"],  # one row counts once
    "r2": ["python coding", "Poetry"],
    "r3": ["py-scripting", "poetry"],
    "r4": ["haiku writing", "poetry"],
    "r5": [],
}
SETTINGS = NormalizeSettings(noise_floor=2, domains=2)


def test_normalize_tag_lowers_and_lemmatizes_nouns():
    assert normalize_tag("  Data   Structures ") == "data structure"
    assert normalize_tag("SQL-Queries") == "sql query"
    assert normalize_tag("Machine_Learning") == "machine learning"
    assert normalize_tag("gas laws") == "gas law"  # short words are left alone: not "ga"
    assert normalize_tag("Quantum Mechanics") == "quantum mechanics"  # a field, not two mechanics


def test_merge_cluster_noise_and_domains_on_a_known_pool():
    embedder = HandEmbedder()
    result = normalize_pool(tagged(NIGHT_ONE), None, SETTINGS, embedder, ds="2026-04-01")

    vocab = {r["tag"]: r for r in result.vocabulary.to_pylist()}
    assert sorted(vocab) == ["data structure", "haiku writing", "poetry", "py scripting", "python coding", "python programming"]
    assert {t: r["canonical"] for t, r in vocab.items()} == {
        "python programming": "python programming",
        "python coding": "python programming",  # merged (cos 0.95 >= 0.91)
        "py scripting": "python programming",  # clustered (distance 0.447 <= 0.47)
        "data structure": "data structure",
        "poetry": "poetry",
        "haiku writing": "haiku writing",
    }
    assert vocab["python programming"]["count"] == 2 and vocab["python programming"]["canonical_count"] == 4
    assert vocab["haiku writing"]["canonical_count"] == 1 and not vocab["haiku writing"]["kept"]  # under the floor
    assert result.tag_frequency == {"python programming": 4, "data structure": 2, "poetry": 3}

    # two domains: the programming tags together, poetry apart; named after their most frequent tags
    domains = {t: r["domain"] for t, r in vocab.items()}
    assert domains["python programming"] == domains["data structure"] == domains["py scripting"] == "python programming / data structure"
    assert domains["poetry"] == domains["haiku writing"] == "poetry"

    rows = {r["id"]: r for r in result.row_tags.to_pylist()}
    assert rows["r0"]["tags"] == rows["r1"]["tags"] == ["python programming", "data structure"]
    assert rows["r2"]["tags"] == rows["r3"]["tags"] == ["python programming", "poetry"]
    assert rows["r4"]["tags"] == ["poetry"]  # haiku writing is noise
    assert rows["r5"] == {"id": "r5", "tags": [], "domains": []}
    assert rows["r2"]["domains"] == ["python programming / data structure", "poetry"]
    assert result.report["canonical_tags"] == 4 and result.report["kept_tags"] == 3
    assert result.report["rows_without_kept_tags"] == 1
    assert embedder.calls == [sorted(vocab)]  # each distinct tag embedded once


def test_the_vocabulary_persists_and_new_tags_join_it(tmp_path):
    store = Store(f"file://{tmp_path / 'data'}")
    first = normalize_pool(tagged(NIGHT_ONE), None, SETTINGS, HandEmbedder(), ds="2026-04-01")
    save_vocabulary(store, "2026-04-01", first.vocabulary, first.report)
    assert latest_vocabulary_before(store, "2026-04-01") is None
    previous = latest_vocabulary_before(store, "2026-04-02")
    assert previous is not None and previous.num_rows == 6

    embedder = HandEmbedder()
    night_two = {"n0": ["python development", "graph theory"], "n1": ["haiku writing", "Graph Theory"], "n2": ["poetry"]}
    second = normalize_pool(tagged(night_two), previous, SETTINGS, embedder, ds="2026-04-02")

    assert embedder.calls == [["graph theory", "python development"]]  # known tags reuse their embeddings
    vocab = {r["tag"]: r for r in second.vocabulary.to_pylist()}
    before = {r["tag"]: r for r in first.vocabulary.to_pylist()}
    for tag, row in before.items():  # every known tag keeps its canonical and domain
        assert (vocab[tag]["canonical"], vocab[tag]["domain"], vocab[tag]["first_seen_ds"]) == (
            row["canonical"],
            row["domain"],
            "2026-04-01",
        )
    assert vocab["python development"]["canonical"] == "python programming"
    assert vocab["graph theory"]["canonical"] == "graph theory"
    assert vocab["graph theory"]["domain"] == "python programming / data structure"
    assert vocab["graph theory"]["first_seen_ds"] == "2026-04-02"
    assert vocab["py scripting"]["count"] == 0  # not seen tonight, still known
    assert vocab["haiku writing"]["kept"] is False and vocab["graph theory"]["kept"] is True
    assert second.tag_frequency == {"graph theory": 2}  # tonight's counts: everything else is under 2
    assert second.vocabulary.column("version")[0].as_py() != first.vocabulary.column("version")[0].as_py()
    assert [d["domain"] for d in domain_table(second.vocabulary)] == ["python programming / data structure"]


def test_rebuild_derives_domains_afresh():
    first = normalize_pool(tagged(NIGHT_ONE), None, SETTINGS, HandEmbedder(), ds="2026-04-01")
    again = normalize_pool(
        tagged(NIGHT_ONE), first.vocabulary, NormalizeSettings(noise_floor=1, domains=3, rebuild=True), HandEmbedder(), ds="2026-04-02"
    )
    domains = {r["tag"]: r["domain"] for r in again.vocabulary.to_pylist()}
    assert len(set(domains.values())) == 3
    assert domains["haiku writing"] != domains["python programming"]


def test_an_empty_pool_gives_an_empty_vocabulary():
    result = normalize_pool(tagged({"a": [], "b": []}), None, SETTINGS, HandEmbedder(), ds="2026-04-01")
    assert result.vocabulary.num_rows == 0
    assert result.row_tags.column("tags").to_pylist() == [[], []]
    assert result.tag_frequency == {}


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="'raw_tags'"):
        normalize_pool(pa.table({"id": ["x"]}), None, SETTINGS, HandEmbedder(), ds="2026-04-01")


@pytest.mark.slow
def test_real_embedder_merges_spelling_variants_and_keeps_distinct_skills_apart():
    embed = load_embedder()
    rows = {
        "a": ["SQL Queries", "Machine-Learning", "Baking Bread"],
        "b": ["sql query", "machine learning", "Quantum Mechanics"],
        "c": ["SQL queries writing", "bread baking", "French Grammar"],
    }
    result = normalize_pool(tagged(rows), None, NormalizeSettings(noise_floor=1, domains=3), embed, ds="2026-04-01")
    canonical = {r["tag"]: r["canonical"] for r in result.vocabulary.to_pylist()}
    assert canonical["sql query"] == "sql query" and canonical["machine learning"] == "machine learning"
    assert canonical["bread baking"] == canonical["baking bread"]  # word order: the model sees one skill
    distinct = {canonical[t] for t in ("sql query", "machine learning", "quantum mechanics", "french grammar", "baking bread")}
    assert len(distinct) == 5
    vectors = embed(["sql query", "quantum mechanics"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
