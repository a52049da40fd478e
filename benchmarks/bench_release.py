"""Scale check for the release: dedup and decontamination of many rows, against the embedding time.

    python benchmarks/bench_release.py [--rows 100000] [--bench-items 10000] [--embed-sample 2000] [--real-embeddings]

``--rows`` synthetic instruction/response pairs (code-task templates filled with 18-40 words
drawn from HumanEval's prompts, so they tokenize like real instructions and are distinct unless
planted: 3% exact copies reformatted, 2% near copies with one word changed, 2% paraphrases, i.e.
an earlier row's embedding plus small noise, and up to 50 HumanEval prompts pasted in) are deduplicated (exact, MinHash LSH, usearch HNSW) and screened against
HumanEval plus ``--bench-items`` synthetic benchmark items (word 13-grams of prompts and
responses, prompt embedding cosine).

Embedding every row with MiniLM on this machine's CPUs is the step the goal is measured against
(the release's own work should cost at most 0.2x of it). By default the rows' embeddings are
random unit vectors, so the timed work is the release's own; MiniLM's throughput is measured on
the first ``--embed-sample`` rows and the embedding time of all rows projected from it.
``--real-embeddings`` embeds every row with MiniLM instead (hours at a million rows on 2 cores).

Prints each phase's time and peak resident memory (sampled every 20 ms, above the process's memory
before the phase) and a JSON line for ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import psutil

from infinisynth.release.benchmarks import BenchmarkItem, humaneval
from infinisynth.release.decontaminate import BenchmarkIndex, DecontamSettings, screen
from infinisynth.release.dedup import EMBEDDING_DIM, DedupSettings, deduplicate

VERBS = ["Write", "Implement", "Create", "Design", "Build", "Develop", "Code"]
LANGS = ["Python", "TypeScript", "Java", "Go", "Rust", "C++", "SQL", "Kotlin"]
THINGS = ["function", "class", "module", "service", "script", "query", "command-line tool", "library"]


class Peak:
    def __init__(self, interval: float = 0.02):
        self.process = psutil.Process(os.getpid())
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        result: dict[str, float] = {}
        base = self.process.memory_info().rss
        self.peak, self._stop = base, threading.Event()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        started = time.perf_counter()
        try:
            yield result
        finally:
            result["seconds"] = round(time.perf_counter() - started, 2)
            self._stop.set()
            thread.join()
            result["peak_mb_above_start"] = round((self.peak - base) / 2**20, 1)
            result["rss_mb"] = round(self.process.memory_info().rss / 2**20, 1)


def vocabulary() -> list[str]:
    """Real words: those of HumanEval's prompts (English and code identifiers), so the rows
    tokenize, and embed, like real instructions."""
    return sorted({w for item in humaneval() for w in re.findall(r"[A-Za-z_][A-Za-z_]+", item.text)})


def synthetic_rows(n: int, rng: random.Random) -> tuple[list[str], list[str], list[str], dict[int, int], dict[str, int]]:
    """(ids, prompts, responses, paraphrase row -> its original, planted counts)."""
    words = vocabulary()
    prompts: list[str] = []
    paraphrases: dict[int, int] = {}
    planted = {"exact": 0, "near": 0, "paraphrase": 0, "humaneval": 0}
    he = [item.text for item in humaneval()]
    for i in range(n):
        roll = rng.random()
        if i > 100 and roll < 0.03:
            prompts.append("  " + prompts[rng.randrange(i)].upper() + " !")
            planted["exact"] += 1
        elif i > 100 and roll < 0.05:
            base = prompts[rng.randrange(i)].split()
            base[rng.randrange(len(base))] = rng.choice(words)
            prompts.append(" ".join(base))
            planted["near"] += 1
        elif i > 100 and roll < 0.07:
            paraphrases[i] = rng.randrange(i)  # another wording: only its embedding is close
            prompts.append(f"{rng.choice(VERBS)} a {rng.choice(THINGS)} that " + " ".join(rng.choices(words, k=rng.randint(18, 40))))
            planted["paraphrase"] += 1
        elif planted["humaneval"] < 50 and roll > 0.999:
            prompts.append("Complete this:\n" + he[planted["humaneval"]])
            planted["humaneval"] += 1
        else:
            body = " ".join(rng.choices(words, k=rng.randint(18, 40)))
            prompts.append(f"{rng.choice(VERBS)} a {rng.choice(LANGS)} {rng.choice(THINGS)} that {body}.")
    responses = [" ".join(rng.choices(words, k=rng.randint(60, 140))) for _ in range(n)]
    return [f"row-{i}" for i in range(n)], prompts, responses, paraphrases, planted


def random_embedder(rows: int, paraphrases: dict[int, int], seed: int = 0):
    """Unit vectors per row; a planted paraphrase gets its original's vector plus small noise (cosine ~0.997)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, EMBEDDING_DIM), dtype=np.float32)
    for i, j in paraphrases.items():
        vectors[i] = vectors[j] + 0.08 * rng.standard_normal(EMBEDDING_DIM, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cursor = {"next": 0}

    def embed(texts: Sequence[str]) -> np.ndarray:
        start = cursor["next"]  # dedup embeds the rows in order, batch after batch
        cursor["next"] += len(texts)
        return vectors[start : start + len(texts)]

    return embed, vectors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bench-items", type=int, default=10_000)
    parser.add_argument("--embed-sample", type=int, default=2_000)
    parser.add_argument("--real-embeddings", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(0)
    peak = Peak()
    print(f"release scale check: {args.rows:,} rows against HumanEval + {args.bench_items:,} items (cpus: {os.cpu_count()})", flush=True)
    ids, prompts, responses, paraphrases, planted = synthetic_rows(args.rows, rng)
    bench_words = vocabulary()
    items = humaneval() + [
        BenchmarkItem("synthetic", f"s/{k}", " ".join(random.Random(k).choices(bench_words, k=40))) for k in range(args.bench_items)
    ]

    from infinisynth.diagnosis.leakage import embed as minilm

    minilm(["warm up"])
    sample = prompts[: args.embed_sample]
    with peak.measure() as embedding:
        minilm(sample, batch_size=128)
    rate = len(sample) / max(embedding["seconds"], 1e-9)
    projected = args.rows / rate
    print(f"MiniLM: {rate:,.0f} rows/s on {len(sample):,} of these prompts -> {projected:,.0f} s to embed {args.rows:,} rows", flush=True)

    if args.real_embeddings:

        def embed(texts: Sequence[str]) -> np.ndarray:
            return minilm(list(texts), batch_size=128)

        item_embed = embed
    else:
        embed, _ = random_embedder(len(prompts), paraphrases)
        item_rng = np.random.default_rng(1)

        def item_embed(texts: Sequence[str]) -> np.ndarray:
            v = item_rng.standard_normal((len(texts), EMBEDDING_DIM), dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    with peak.measure() as dedup_phase:
        result = deduplicate(ids, prompts, embed, DedupSettings(batch_size=4096))
    kept = np.nonzero(result.keep)[0]
    print(f"dedup: {dedup_phase} kept {len(kept):,}; dropped {result.counts}; planted {planted}", flush=True)

    with peak.measure() as index_phase:
        index = BenchmarkIndex(items, item_embed, DecontamSettings())
    with peak.measure() as screen_phase:
        hits = screen([prompts[i] for i in kept], [responses[i] for i in kept], result.embeddings[kept].astype(np.float32), index)
    by = {}
    for hit in hits:
        by[f"{hit.benchmark}/{hit.measure}"] = by.get(f"{hit.benchmark}/{hit.measure}", 0) + 1
    print(f"decontamination: index {index_phase}, screen {screen_phase}; dropped {by}", flush=True)
    own = dedup_phase["seconds"] + index_phase["seconds"] + screen_phase["seconds"]
    if args.real_embeddings:
        ratio = own / max(projected, 1e-9)
        verdict = f"total {own:,.0f} s including the embeddings = {ratio:.2f}x the time to embed alone"
    else:
        ratio = (projected + own) / projected
        verdict = f"release work {own:,.0f} s on top of {projected:,.0f} s of embedding = {ratio:.3f}x the embedding time (goal <= 1.2x)"
    print(verdict, flush=True)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "bench_items": len(items),
                "embed_rows_per_s": round(rate, 1),
                "projected_embed_s": round(projected, 1),
                "real_embeddings": args.real_embeddings,
                "dedup": dedup_phase,
                "dropped": result.counts,
                "planted": planted,
                "benchmark_index": index_phase,
                "screen": screen_phase,
                "contaminated": by,
                "ratio_to_embedding": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
