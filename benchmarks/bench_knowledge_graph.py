"""Time and peak memory of the code pipeline's knowledge-graph step (issue 16), by night size.

    python benchmarks/bench_knowledge_graph.py [--sizes 2000 10000 50000] [--implementation FILE]

For each size, in a fresh process (peak RSS never goes down, so sizes must not share one):
synthetic keyword rows for that many problems, then what ``PlanBackfeed`` does with them:
``build_graph`` -> ``sample_combinations`` (as many as there are problems) -> ``save_graph`` to a
local ``Store`` (Parquet tables and graph.json) -> ``graph_summary``. Then a second night of as
many new problems grown from the first (``latest_graph_before`` + ``build_graph(previous=...)``,
same steps): the graph grows night over night, and so does what the step holds.

The rows are realistic in shape: each problem has 2-3 task, 2-4 instruction and 3-5 knowledge
keywords (~45 keyword pairs a problem, as extraction gives), drawn Zipf-like (a few keywords
everywhere, a long tail) from vocabularies that grow with the corpus, in varied spellings
("Parse JSON", "parse json."), and ~1 stated relation a problem. The keyword table is built
before measuring: the step's input is held by the task anyway.

Prints wall time, CPU time and peak memory above the process's memory before the step (RSS and
RssAnon, sampled every 20 ms; see ``_memory.py``) per night, and a ``RESULT`` JSON line.
``--implementation FILE`` measures another version of ``infinisynth/knowledge_graph.py`` with
the same functions (e.g. ``git show <rev>:src/infinisynth/knowledge_graph.py > /tmp/kg_old.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
from _memory import Peak  # benchmarks/_memory.py

from infinisynth import knowledge_graph
from infinisynth.storage import Store

PIPELINE = "code_instruct"
KEYWORDS_PER_PROBLEM = {"task": (2, 3), "instruction": (2, 4), "knowledge": (3, 5)}  # inclusive ranges
VOCABULARY_AT_10K = {"task": 1_500, "instruction": 4_000, "knowledge": 12_000}  # distinct keywords at 10,000 problems
LABELS = ["uses", "requires", "implemented with", "part of", "tested by"]


def keyword_table(problems: int, seed: int, id_prefix: str = "p") -> pa.Table:
    """``problems`` keyword rows in the keyword stage's schema."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {"id": [f"{id_prefix}{i}" for i in range(problems)]}
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind, (low, high) in KEYWORDS_PER_PROBLEM.items():
        vocabulary = max(50, int(VOCABULARY_AT_10K[kind] * (problems / 10_000) ** 0.7))  # Heaps-like growth
        sizes = rng.integers(low, high + 1, problems)
        ranks = zipf_ranks(rng, vocabulary, int(sizes.sum()))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        drawn[kind] = (ranks, offsets)
        columns[knowledge_graph.KEYWORD_COLUMNS[kind]] = pa.ListArray.from_arrays(offsets, spellings(rng, kind, ranks))
    columns["relations"] = relations(rng, problems, drawn)
    return pa.table(columns, schema=pa.schema(knowledge_graph.KEYWORD_SCHEMA_FIELDS))


def zipf_ranks(rng: np.random.Generator, vocabulary: int, size: int) -> np.ndarray:
    """Ranks 0..vocabulary-1 with P(r) ∝ 1 / (r + 3)."""
    weights = 1.0 / (np.arange(vocabulary) + 3.0)
    return rng.choice(vocabulary, size=size, p=weights / weights.sum())


def spellings(rng: np.random.Generator, kind: str, ranks: np.ndarray) -> pa.Array:
    """``{kind} keyword {rank}``, a tenth of them capitalised or with a trailing full stop."""
    variant = rng.integers(0, 20, ranks.size)
    words = [
        (f"{kind.title()} Keyword {r}" if v == 0 else f"{kind} keyword {r}." if v == 1 else f"{kind} keyword {r}")
        for r, v in zip(ranks.tolist(), variant.tolist(), strict=True)
    ]
    return pa.array(words, pa.string())


def relations(rng: np.random.Generator, problems: int, drawn: dict[str, tuple[np.ndarray, np.ndarray]]) -> pa.Array:
    """0-2 relations a problem: one of its task keywords -> one of its knowledge keywords."""
    rows = []
    (task_ranks, task_offsets), (knowledge_ranks, knowledge_offsets) = drawn["task"], drawn["knowledge"]
    counts = rng.integers(0, 3, problems)
    for p in range(problems):
        rows.append(
            [
                {
                    "head": f"task keyword {task_ranks[rng.integers(task_offsets[p], task_offsets[p + 1])]}",
                    "relation": LABELS[int(rng.integers(len(LABELS)))],
                    "tail": f"knowledge keyword {knowledge_ranks[rng.integers(knowledge_offsets[p], knowledge_offsets[p + 1])]}",
                }
                for _ in range(counts[p])
            ]
        )
    return pa.array(rows, knowledge_graph.KEYWORD_SCHEMA_FIELDS[-1].type)


def night(kg: ModuleType, store: Store, rows: pa.Table, ds: str, memory: Peak) -> dict[str, Any]:
    """PlanBackfeed's graph work for one night, measured as one block and per step."""
    steps: dict[str, float] = {}

    def step(name: str, started: float) -> float:
        now = time.perf_counter()
        steps[name] = round(now - started, 2)
        return now

    with memory.measure() as result:
        started = time.perf_counter()
        previous = kg.latest_graph_before(store, PIPELINE, ds)
        started = step("load_previous", started)
        graph, stats = kg.build_graph(rows, ds=ds, previous=previous)
        del previous
        started = step("build", started)
        combinations = kg.sample_combinations(graph, rows.num_rows, seed=0)
        started = step("sample", started)
        kg.save_graph(store, PIPELINE, ds, graph)
        started = step("save", started)
        summary = kg.graph_summary(graph)
        step("summary", started)
    return {
        **result,
        "steps_seconds": steps,
        "problems": stats.problems,
        "nodes": summary["nodes"],
        "edges": summary["edges"],
        "combinations": len(combinations),
        "bytes_per_edge_above_start": round(result["peak_above_start_mb"] * 2**20 / max(summary["edges"], 1)),
    }


def measure_one(problems: int, implementation: str | None) -> dict[str, Any]:
    kg = load_implementation(implementation) if implementation else knowledge_graph
    first, second = keyword_table(problems, seed=1), keyword_table(problems, seed=2, id_prefix="q")
    memory = Peak()
    with tempfile.TemporaryDirectory() as root:
        store = Store(f"file://{root}")
        return {
            "problems": problems,
            "implementation": implementation or "infinisynth.knowledge_graph",
            "night_1": night(kg, store, first, "2026-01-01", memory),
            "night_2": night(kg, store, second, "2026-01-02", memory),
        }


def load_implementation(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("kg_under_test", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000, 50_000], help="problems a night")
    parser.add_argument("--implementation", help="another knowledge_graph.py to measure instead")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process measuring one size
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.implementation)))
        return []

    results = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size)]
        if args.implementation:
            command += ["--implementation", args.implementation]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        results.append(result)
        for name in ("night_1", "night_2"):
            r = result[name]
            print(
                f"{size:>7,} problems, {name.replace('_', ' ')}: {r['nodes']:,} nodes, {r['edges']:,} edges; "
                f"{r['seconds']} s ({r['cpu_seconds']} s CPU) {r['steps_seconds']}; "
                f"peak +{r['peak_above_start_mb']} MB RSS (+{r['peak_anon_above_start_mb']} MB anon), "
                f"{r['bytes_per_edge_above_start']} B an edge"
            )
    print("RESULT " + json.dumps(results))
    return results


if __name__ == "__main__":
    main()
