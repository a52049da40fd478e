"""Recall and cost of dedup's HNSW graph by connectivity and search depth (issue 13).

    python benchmarks/bench_hnsw.py [--rows 200000] [--queries 4096] [--connectivity 16 32]
                                    [--depths 32 64 128 256]

Dedup's semantic check asks one graph per segment for each row's nearest neighbour, so a near
copy the graph misses is a duplicate released. This builds the release's own index
(``dedup._hnsw``: 8-bit vectors, cosine, ``expansion_add`` 64) over ``--rows`` random unit
vectors, once per connectivity, and searches it with near copies of ``--queries`` indexed rows
(the row plus the noise ``bench_release.py`` gives a planted paraphrase: cosine ~0.96) at each
search depth (usearch ``expansion_search``). Random vectors have no clusters, HNSW's worst case:
recall on real embeddings is at least this.

Single-threaded (``threads=1``), so CPU time is the work. Prints, per connectivity: build CPU
seconds and ms a row, the saved graph's bytes a row; per depth: the share of near copies whose
nearest neighbour found is their original, and ms a query. A ``RESULT`` JSON line ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
from bench_release import PARAPHRASE_NOISE, Vectors  # benchmarks/bench_release.py

from infinisynth.release.dedup import EMBEDDING_DIM, _hnsw


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near_copies(rows: int, queries: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indexed vectors, the rows copied, their near copies)."""
    rng = np.random.default_rng(0)
    originals = rng.choice(rows, size=queries, replace=False)
    if kind == "release":
        embed = Vectors()
        vectors = embed([f"row {i}" for i in range(rows)])
        embed.paraphrase_of = {f"copy of {i}": f"row {i}" for i in originals}
        return vectors, originals, embed([f"copy of {i}" for i in originals])
    vectors = unit(rng.standard_normal((rows, EMBEDDING_DIM), dtype=np.float32))
    noise = PARAPHRASE_NOISE * rng.standard_normal((queries, EMBEDDING_DIM), dtype=np.float32)
    return vectors, originals, unit(vectors[originals] + noise)


def measure(rows: int, queries: int, connectivity: int, depths: list[int], kind: str) -> dict[str, Any]:
    vectors, originals, copies = near_copies(rows, queries, kind)
    to_original = np.sum(copies * vectors[originals], axis=1)

    index = _hnsw(EMBEDDING_DIM, connectivity)
    start = time.process_time()
    index.add(np.arange(rows, dtype=np.uint64), vectors, threads=1)
    build = time.process_time() - start
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "graph.usearch")
        index.save(path)
        saved = os.path.getsize(path)

    by_depth: dict[int, dict[str, float]] = {}
    for depth in depths:
        index.expansion_search = depth
        start = time.process_time()
        found = index.search(copies, 1, threads=1)
        seconds = time.process_time() - start
        # found: the original, or a row at least as near (two rows' texts can pick the same words)
        nearest = np.sum(copies * vectors[found.keys[:, 0].astype(np.int64)], axis=1)
        recall = float(np.mean(nearest >= to_original - 1e-6))
        by_depth[depth] = {"recall": round(recall, 4), "ms_per_query": round(1000 * seconds / queries, 3)}
    return {
        "build_cpu_s": round(build, 1),
        "build_ms_per_row": round(1000 * build / rows, 3),
        "saved_bytes_per_row": round(saved / rows),
        "copy_cosine": round(float(np.mean(to_original)), 3),
        "depths": by_depth,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=4_096)
    parser.add_argument("--connectivity", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--depths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--vectors", choices=["release", "gaussian"], default="release")
    args = parser.parse_args()
    print(f"HNSW recall of near copies: {args.rows:,} {args.vectors} vectors, {args.queries:,} queries, one thread")
    results: dict[int, dict[str, Any]] = {}
    for connectivity in args.connectivity:
        result = measure(args.rows, args.queries, connectivity, args.depths, args.vectors)
        results[connectivity] = result
        print(
            f"connectivity {connectivity}: build {result['build_cpu_s']} CPU-s ({result['build_ms_per_row']} ms a row), "
            f"{result['saved_bytes_per_row']} bytes a row saved, copies at cosine {result['copy_cosine']}"
        )
        for depth, found in result["depths"].items():
            print(f"  depth {depth:>4}: recall {100 * found['recall']:6.2f}%  {found['ms_per_query']:.3f} ms a query")
    print("RESULT " + json.dumps({"rows": args.rows, "queries": args.queries, "vectors": args.vectors, "connectivity": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
