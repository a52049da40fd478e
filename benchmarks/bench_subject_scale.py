"""Scale check for the subject pipeline's analysis half: tag normalization and seed selection.

    python benchmarks/bench_subject_scale.py [--tags 25000] [--pool-rows 1500000] [--selection-rows 1000000]

1. **Normalization** of ``--tags`` distinct raw tags spread over a pool of ``--pool-rows`` tagged
   rows (about 5 tags a row, Zipf-distributed like real tag use). Tags are synthetic but realistic:
   real English nouns (lemminflect's lexicon) combined with task heads ("analysis", "design", ...)
   and the variants taggers produce: plurals, capitals, hyphens, "X of Y" word order and
   near-synonym heads ("analytics", "optimisation"). Embeddings come from the real
   all-MiniLM-L6-v2 model; the embedding time is reported apart from the rest.
2. **Selection** over ``--selection-rows`` rows with 1-8 canonical tags and base-model losses.

Prints time and peak resident memory (sampled every 20 ms, above the process's memory before
the step) per step, and a JSON line for ``docs/BENCHMARKS.md``. A dense similarity matrix of the
vocabulary would be ``tags^2 * 4`` bytes (2.5 GB at 25,000 tags); the normalization never builds one.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
from _memory import Peak  # benchmarks/_memory.py

from infinisynth.subject.selection import SelectionSettings, format_report, select_seeds  # noqa: E402
from infinisynth.subject.tagging import RAW_TAG_TYPE  # noqa: E402
from infinisynth.subject.vocabulary import NormalizeSettings, load_embedder, normalize_pool  # noqa: E402

HEADS = {
    "analysis": ["analytics", "analyzing"],
    "design": ["designing"],
    "optimization": ["optimisation", "optimizing"],
    "explanation": ["explaining"],
    "calculation": ["computation", "calculating"],
    "writing": ["composition"],
    "comparison": ["comparing"],
    "classification": ["categorization"],
    "debugging": ["troubleshooting"],
    "implementation": ["implementing"],
    "history": [],
    "theory": [],
    "modeling": ["modelling"],
    "translation": ["translating"],
    "summarization": ["summarizing"],
    "planning": ["plan"],
    "evaluation": ["assessment"],
    "management": ["managing"],
    "research": [],
    "regulation": [],
    "safety": [],
    "ethics": [],
    "education": ["teaching"],
    "maintenance": ["repair"],
}


def synthetic_tags(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct raw tags: noun + head combinations and the variants a tagger writes."""
    from lemminflect import Lemmatizer, getInflection

    rng = np.random.default_rng(seed)
    lexicon = Lemmatizer()._getLemmaDict()
    nouns = sorted(
        w for w, pos in lexicon.items() if "NOUN" in pos and w.isalpha() and w.islower() and 4 <= len(w) <= 11 and pos["NOUN"][0] == w
    )
    stems = list(rng.choice(nouns, size=min(4_000, len(nouns)), replace=False))
    heads = list(HEADS)
    out: list[str] = []
    seen: set[str] = set()

    def add(tag: str) -> None:
        if tag not in seen and len(out) < n:
            seen.add(tag)
            out.append(tag)

    base = [(stem, heads[int(rng.integers(len(heads)))]) for stem in stems for _ in range(3)]
    for stem, head in base[: int(n * 0.55)]:
        add(f"{stem} {head}")
    while len(out) < n:
        stem, head = base[int(rng.integers(len(base)))]
        kind = int(rng.integers(5))
        if kind == 0:
            plural = (getInflection(stem, tag="NNS") or [stem + "s"])[0]
            add(f"{plural} {head}")
        elif kind == 1:
            add(f"{stem} {head}".title())
        elif kind == 2:
            add(f"{stem}-{head}")
        elif kind == 3:
            add(f"{head} of {stem}")
        elif HEADS[head]:
            add(f"{stem} {HEADS[head][int(rng.integers(len(HEADS[head])))]}")
        else:
            add(f"{stem} {heads[int(rng.integers(len(heads)))]}")
    return out


def tagged_pool(tags: list[str], rows: int, seed: int = 1) -> pa.Table:
    """``rows`` rows of 1-9 raw tags each, drawn Zipf-like (rank^-1.1) from ``tags``."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(tags) + 1) ** 1.1
    weights /= weights.sum()
    order = rng.permutation(len(tags))  # which tag is frequent is random, not alphabetical
    per_row = rng.integers(1, 10, size=rows)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    picks = order[rng.choice(len(tags), size=int(offsets[-1]), p=weights)]
    names = pa.array(tags, pa.string()).take(pa.array(picks))
    structs = pa.StructArray.from_arrays([names, pa.array([""] * len(names), pa.string())], fields=list(RAW_TAG_TYPE))
    raw = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs)
    ids = pa.array([f"row{i:08d}" for i in range(rows)], pa.string())
    return pa.table({"id": ids, "raw_tags": raw})


def selection_pool(rows: int, vocabulary: int = 20_000, seed: int = 2) -> tuple[pa.Table, dict[str, int]]:
    rng = np.random.default_rng(seed)
    names = [f"tag {i:05d}" for i in range(vocabulary)]
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 1.1
    weights /= weights.sum()
    per_row = rng.integers(1, 9, size=rows)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    picks = rng.choice(vocabulary, size=int(offsets[-1]), p=weights)
    tags = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(names, pa.string()).take(pa.array(picks)))
    frequency = np.bincount(picks, minlength=vocabulary)
    conditional = rng.gamma(4.0, 0.4, size=rows)
    alone = conditional + rng.normal(0.6, 0.4, size=rows)
    table = pa.table(
        {
            "id": pa.array([f"row{i:08d}" for i in range(rows)]),
            "tags": tags,
            "loss_conditional": conditional,
            "loss_unconditional": alone,
            "loss_reduction": alone - conditional,
        }
    )
    return table, {names[i]: int(c) for i, c in enumerate(frequency) if c}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=25_000)
    parser.add_argument("--pool-rows", type=int, default=1_500_000)
    parser.add_argument("--selection-rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    memory = Peak()
    results: dict[str, Any] = {
        "tags": args.tags,
        "pool_rows": args.pool_rows,
        "selection_rows": args.selection_rows,
        "cpus": os.cpu_count(),
    }

    tags = synthetic_tags(args.tags)
    pool = tagged_pool(tags, args.pool_rows)
    print(
        f"{len(tags)} distinct raw tags, e.g. {tags[:3]} ... {tags[-3:]}; {pool.num_rows} rows, {pool.column('raw_tags').combine_chunks().values.__len__()} mentions"
    )

    embed = load_embedder()
    embed(["warm up"])

    def timed_embedder(texts: list[str]) -> np.ndarray:
        with memory.measure() as step:
            vectors = embed(texts)
        results["embedding"] = {"texts": len(texts), **step}
        return vectors

    with memory.measure() as step:
        normalized = normalize_pool(pool, None, NormalizeSettings(), timed_embedder, ds="2026-11-24")
    results["normalization_total"] = step
    results["normalization_without_embedding_seconds"] = round(step["seconds"] - results["embedding"]["seconds"], 2)
    results["normalization_report"] = {k: v for k, v in normalized.report.items() if k not in ("settings", "domains")}
    results["domains"] = len(normalized.report["domains"])
    print(f"normalization: {json.dumps(results['normalization_total'])}; embedding {json.dumps(results['embedding'])}")
    print(f"  {json.dumps(results['normalization_report'])}")
    del normalized, pool

    table, frequency = selection_pool(args.selection_rows)
    with memory.measure() as step:
        selection = select_seeds(table, frequency, SelectionSettings())
    results["selection"] = {**step, "selected": selection.report["selected"]}
    print(f"selection over {table.num_rows} rows: {json.dumps(results['selection'])}")
    print(format_report(selection.report))
    results["max_rss_mb_process"] = round(_max_rss_mb(), 1)
    print("RESULT " + json.dumps(results))
    return results


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
