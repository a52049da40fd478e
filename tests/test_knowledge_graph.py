"""The Backfeeding knowledge graph: building, merging, persistence, and combination sampling."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest

from infinisynth import knowledge_graph
from infinisynth.knowledge_graph import (
    KEYWORD_SCHEMA_FIELDS,
    KeywordGraph,
    build_graph,
    graph_summary,
    latest_graph_before,
    load_graph,
    normalize_keyword,
    sample_combinations,
    save_graph,
)
from infinisynth.records import content_id
from infinisynth.storage import StorageError, Store

PIPELINE = "code_instruct"


def row(pid: str, task=(), instruction=(), knowledge=(), relations=None) -> dict:
    return {
        "id": pid,
        "task_keywords": list(task),
        "instruction_keywords": list(instruction),
        "knowledge_keywords": list(knowledge),
        "relations": relations,
    }


def rel(head: str, relation: str, tail: str) -> dict:
    return {"head": head, "relation": relation, "tail": tail}


def typed_graph(nodes: dict[str, int], edges: list[tuple[str, str, float]]) -> KeywordGraph:
    """A graph by hand: ``{"task:x": used}`` and weighted edges, count 1 everywhere."""
    graph = nx.Graph()
    for name, used in nodes.items():
        kind, text = name.split(":", 1)
        graph.add_node(name, kind=kind, text=text, count=1, used=used, first_seen="2025-01-01")
    for a, b, w in edges:
        graph.add_edge(a, b, weight=w, problems=1, relations=[])
    return KeywordGraph.from_networkx(graph)


def random_rows(problems: int, vocab: tuple[int, int, int], seed: int) -> list[dict]:
    """Keyword rows drawn from fixed vocabularies (2 task, 3 instruction, 3 knowledge each)."""
    rng = np.random.default_rng(seed)
    pick = lambda kind, size, k: [f"{kind} {x}" for x in rng.choice(size, k, replace=False)]  # noqa: E731
    return [row(f"p{p}", pick("task", vocab[0], 2), pick("instr", vocab[1], 3), pick("know", vocab[2], 3)) for p in range(problems)]


def edge_dict(graph: nx.Graph | KeywordGraph) -> dict:
    if isinstance(graph, KeywordGraph):
        graph = graph.to_networkx()
    return {tuple(sorted((a, b))): d for a, b, d in graph.edges(data=True)}


def used(graph: KeywordGraph, name: str) -> int:
    return int(graph.used[graph.index(name)])


# -- building ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Parse JSON ", "parse json"),
        ("parse json.", "parse json"),
        ("  Parse \n\t JSON!? ", "parse json"),
        ("`json.loads`.", "json.loads"),
        ("C++", "c++"),
        ("   ", None),
        ("x" * 81, None),
        (42, None),
    ],
)
def test_normalize_keyword(raw, expected):
    assert normalize_keyword(raw) == expected


def test_small_graph_has_exact_nodes_counts_and_weights():
    rows = [
        row("p1", ["Parse JSON "], ["validate input"], ["json module", "dict"]),
        row("p2", ["parse json."], ["Validate  Input"], ["JSON module"]),
    ]
    built, stats = build_graph(rows, ds="2025-01-01")
    graph = built.to_networkx()

    assert {n: (d["kind"], d["text"], d["count"], d["used"], d["first_seen"]) for n, d in graph.nodes(data=True)} == {
        "task:parse json": ("task", "parse json", 2, 0, "2025-01-01"),
        "instruction:validate input": ("instruction", "validate input", 2, 0, "2025-01-01"),
        "knowledge:json module": ("knowledge", "json module", 2, 0, "2025-01-01"),
        "knowledge:dict": ("knowledge", "dict", 1, 0, "2025-01-01"),
    }
    weights = {k: (d["weight"], d["problems"], d["relations"]) for k, d in edge_dict(graph).items()}
    assert weights == {
        ("instruction:validate input", "task:parse json"): (2.0, 2, []),
        ("knowledge:json module", "task:parse json"): (2.0, 2, []),
        ("instruction:validate input", "knowledge:json module"): (2.0, 2, []),
        ("knowledge:dict", "task:parse json"): (1.0, 1, []),
        ("instruction:validate input", "knowledge:dict"): (1.0, 1, []),
        ("knowledge:dict", "knowledge:json module"): (1.0, 1, []),
    }
    assert (stats.problems, stats.nodes, stats.edges, stats.nodes_added) == (2, 4, 6, 4)
    assert graph.graph == {"ds": "2025-01-01", "problems": 2}


def test_relations_add_weighted_labelled_edges_and_count_unmatched_endpoints():
    rows = [
        row(
            "p1",
            ["parse json"],
            ["validate input"],
            ["json module"],
            relations=[
                rel("Parse JSON", "uses", "json module"),
                rel("parse json", "uses", "json module."),  # the same statement again: once
                rel("parse json", "needs", "a keyword nobody extracted"),
                rel("validate input", "checked with", "Schema"),  # a keyword of another problem
                rel("json module", "is", "JSON module"),  # head and tail are one node
                {"head": "parse json", "tail": "json module"},  # no label
            ],
        ),
        row(
            "p2",
            [],
            [],
            ["schema"],
            relations=[rel("parse json", label, "json module") for label in ("requires", "calls", "imports")],
        ),
    ]
    built, stats = build_graph(rows, ds="2025-01-01", relation_weight=2.5)
    graph = built.to_networkx()

    assert (stats.relations, stats.relations_unmatched, stats.relations_invalid) == (5, 1, 2)
    stated = graph.edges["task:parse json", "knowledge:json module"]
    # co-occurrence once, "uses" once (deduplicated), three labels from p2
    assert (stated["weight"], stated["relations"], stated["problems"]) == (
        1.0 + 4 * 2.5,
        ["calls", "imports", "requires", "uses"],
        2,
    )
    cross = graph.edges["instruction:validate input", "knowledge:schema"]
    assert (cross["weight"], cross["relations"], cross["problems"]) == (2.5, ["checked with"], 1)
    assert graph_summary(built)["relation_edges"] == 2


def test_keyword_table_with_the_exported_schema_builds_the_same_graph():
    rows = [
        row("p1", ["sort"], ["in place"], ["quicksort"], relations=[rel("sort", "via", "quicksort")]),
        row("p2", ["sort"], ["stable"], ["merge sort"], relations=None),
    ]
    table = pa.Table.from_pylist(rows, schema=pa.schema(KEYWORD_SCHEMA_FIELDS))
    from_table, _ = build_graph(table, ds="2025-01-01")
    from_dicts, _ = build_graph(rows, ds="2025-01-01")
    assert dict(from_table.to_networkx().nodes(data=True)) == dict(from_dicts.to_networkx().nodes(data=True))
    assert edge_dict(from_table) == edge_dict(from_dicts)


def test_missing_column_raises_and_malformed_rows_are_skipped_and_counted():
    table = pa.table({"id": ["p1"], "task_keywords": [["a"]], "instruction_keywords": [["b"]]})
    with pytest.raises(ValueError, match="knowledge_keywords"):
        build_graph(table, ds="2025-01-01")
    with pytest.raises(ValueError, match="instruction_keywords"):
        build_graph([{"id": "p1", "task_keywords": [], "knowledge_keywords": []}], ds="2025-01-01")

    rows = [
        row("good", ["sort"], ["stable"], ["merge sort", "", "x" * 200, None]),
        {**row("bad-string", [], [], []), "task_keywords": "sort"},
        {**row("bad-relations", ["sort"], [], []), "relations": "sort uses merge sort"},
        {**row("null-kind", ["sort"], ["stable"], []), "knowledge_keywords": None},  # null = none extracted
        row("good", ["other task"]),  # duplicate id
        row("nothing", ["  "]),
    ]
    built, stats = build_graph(rows, ds="2025-01-01")
    graph = built.to_networkx()
    assert (stats.rows, stats.problems, stats.rows_skipped, stats.rows_duplicate, stats.rows_empty) == (6, 2, 2, 1, 1)
    assert stats.keywords_dropped == 4
    assert graph.nodes["task:sort"]["count"] == 2
    assert "task:other task" not in graph


def test_merging_into_previous_adds_counts_and_keeps_used_and_first_seen():
    night1, _ = build_graph(
        [row("p1", ["sort"], ["stable"], ["merge sort"], relations=[rel("sort", "via", "merge sort")])],
        ds="2025-01-01",
    )
    night1.used[night1.index("task:sort")] = 5
    night2, stats = build_graph(
        [row("p2", ["sort"], ["stable"], ["timsort"], relations=[rel("sort", "by", "merge sort")])],
        ds="2025-01-02",
        previous=night1,
    )

    night1, night2 = night1.to_networkx(), night2.to_networkx()
    sort = night2.nodes["task:sort"]
    assert (sort["count"], sort["used"], sort["first_seen"]) == (2, 5, "2025-01-01")
    assert night2.nodes["knowledge:timsort"]["first_seen"] == "2025-01-02"
    assert night2.edges["task:sort", "instruction:stable"]["weight"] == 2.0
    merged = night2.edges["task:sort", "knowledge:merge sort"]
    assert (merged["weight"], merged["relations"], merged["problems"]) == (1 + 2 + 2, ["by", "via"], 2)
    assert (stats.nodes_added, stats.problems) == (1, 1)
    assert night2.graph == {"ds": "2025-01-02", "problems": 2}
    # the previous night's graph is untouched
    assert night1.nodes["task:sort"]["count"] == 1
    assert night1.edges["task:sort", "knowledge:merge sort"]["relations"] == ["via"]


# -- persistence ---------------------------------------------------------------------------------


def test_save_load_round_trip_and_graph_json_loads_in_networkx(tmp_path: Path):
    store = Store(f"file://{tmp_path}")
    graph, _ = build_graph(
        [
            row("p1", ["sort"], ["stable"], ["merge sort"], relations=[rel("sort", "via", "merge sort")]),
            row("p2", ["search"], ["binary"], ["bisect"]),
        ],
        ds="2025-01-02",
    )
    graph.used[graph.index("task:sort")] = 3

    result = save_graph(store, PIPELINE, "2025-01-02", graph)
    loaded = load_graph(store, PIPELINE, "2025-01-02").to_networkx()
    graph = graph.to_networkx()

    assert (result["nodes"], result["edges"]) == (6, 6)
    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert edge_dict(loaded) == edge_dict(graph)
    assert loaded.graph == graph.graph
    manifest = store.partition(PIPELINE, "kg_nodes", "2025-01-02").manifest()
    assert (manifest.meta["nodes"], manifest.meta["edges"], manifest.rows) == (6, 6, 6)

    with open(tmp_path / PIPELINE / "kg_graph" / "ds=2025-01-02" / "graph.json") as fh:
        from_json = nx.node_link_graph(json.load(fh))
    assert dict(from_json.nodes(data=True)) == dict(graph.nodes(data=True))
    assert edge_dict(from_json) == edge_dict(graph)


def test_load_refuses_nodes_and_edges_from_different_writes(tmp_path: Path):
    store = Store(f"file://{tmp_path}")
    graph, _ = build_graph([row("p1", ["sort"], ["stable"])], ds="2025-01-01")
    save_graph(store, PIPELINE, "2025-01-01", graph)
    # a re-run that committed its edges and died before its nodes
    edges = store.partition(PIPELINE, "kg_edges", "2025-01-01")
    edges.write_and_commit(edges.read(), meta={"version": "rerun"})
    with pytest.raises(StorageError, match="different writes"):
        load_graph(store, PIPELINE, "2025-01-01")


def test_latest_graph_before_picks_newest_earlier_committed_graph(tmp_path: Path):
    store = Store(f"file://{tmp_path}")
    assert latest_graph_before(store, PIPELINE, "2025-01-05") is None  # nothing yet
    for ds in ("2025-01-01", "2025-01-03", "2025-01-05"):
        graph, _ = build_graph([row(f"p-{ds}", [f"task of {ds}"], ["x"])], ds=ds)
        save_graph(store, PIPELINE, ds, graph)
    # written but never committed: invisible
    graph, _ = build_graph([row("p", ["uncommitted"], ["x"])], ds="2025-01-04")
    store.partition(PIPELINE, "kg_nodes", "2025-01-04").write_table(0, pa.table({"node": ["task:uncommitted"]}))

    assert latest_graph_before(store, PIPELINE, "2025-01-05").attrs["ds"] == "2025-01-03"
    assert latest_graph_before(store, PIPELINE, "2025-01-04").attrs["ds"] == "2025-01-03"
    assert latest_graph_before(store, PIPELINE, "2025-01-02").attrs["ds"] == "2025-01-01"
    assert latest_graph_before(store, PIPELINE, "2025-01-01") is None


def test_a_night_never_grows_from_a_later_nights_graph_whatever_the_backfill_order(tmp_path: Path):
    from infinisynth.pipelines.code_instruct import SPEC, CodeInstructSettings, PlanBackfeed
    from infinisynth.steps import RunContext

    store = Store(f"file://{tmp_path}")
    settings = CodeInstructSettings(backfeed_languages=["python"], backfeed_ratio=1.0)
    days = ("2026-01-01", "2026-01-02", "2026-01-03")
    for ds in days:  # each night's own keywords, committed as the keyword step would
        keywords = [row(f"p-{ds}-{i}", [f"task {ds}"], [f"instruction {ds} {i}"], [f"knowledge {ds} {i}"]) for i in range(3)]
        store.partition(PIPELINE, "keywords", ds).write_and_commit(pa.Table.from_pylist(keywords))
        store.partition(PIPELINE, "reverse", ds).write_and_commit(pa.table({"id": [k["id"] for k in keywords]}))

    def plan(ds: str) -> str | None:
        """Run the night's graph step; the date it grew from."""
        return PlanBackfeed(RunContext(SPEC, store, ds, settings)).run().meta["grown_from"]

    def nights_in(ds: str) -> set[str]:
        return {
            data["text"].removeprefix("task ")
            for _, data in load_graph(store, PIPELINE, ds).to_networkx().nodes(data=True)
            if data["kind"] == "task"
        }

    # A backfill out of order: the first night, then the third, then the second.
    assert plan(days[0]) is None
    assert plan(days[2]) == days[0]
    assert plan(days[1]) == days[0]  # the third night's graph is newer, but later: never read
    assert nights_in(days[1]) == {days[0], days[1]}
    # Re-running the first night after the others: still grown from nothing later.
    assert plan(days[0]) is None and nights_in(days[0]) == {days[0]}
    # Re-running the third night now grows it from the second: dates run in order form one chain.
    assert plan(days[2]) == days[1] and nights_in(days[2]) == set(days)


# -- combinations --------------------------------------------------------------------------------


def test_combinations_are_unique_connected_triples_of_each_kind():
    built, _ = build_graph(random_rows(60, (15, 25, 30), seed=1), ds="2025-01-01")
    combos = sample_combinations(built, 150, seed=3, max_hops=2)
    graph = built.to_networkx()

    assert len(combos) == 150
    assert len({(c.task_node, c.instruction_node, c.knowledge_node) for c in combos}) == 150
    for c in combos:
        assert [graph.nodes[n]["kind"] for n in (c.task_node, c.instruction_node, c.knowledge_node)] == [
            "task",
            "instruction",
            "knowledge",
        ]
        assert (c.task, c.instruction, c.knowledge) == tuple(
            graph.nodes[n]["text"] for n in (c.task_node, c.instruction_node, c.knowledge_node)
        )
        assert graph.has_edge(c.task_node, c.instruction_node)
        adjacent = graph.has_edge(c.instruction_node, c.knowledge_node) or graph.has_edge(c.task_node, c.knowledge_node)
        distance = min(
            nx.shortest_path_length(graph, c.task_node, c.knowledge_node),
            nx.shortest_path_length(graph, c.instruction_node, c.knowledge_node),
        )
        assert adjacent if c.hops == 1 else (distance == c.hops <= 2)
        assert c.id == content_id(c.task_node, c.instruction_node, c.knowledge_node)
        assert c.coherence > 0
    # the graph records the draws: each combination used one node of each kind
    for kind in ("task", "instruction", "knowledge"):
        assert sum(d["used"] for _, d in graph.nodes(data=True) if d["kind"] == kind) == 150


def test_sampling_is_reproducible_per_seed_and_differs_across_seeds():
    rows = random_rows(60, (15, 25, 30), seed=1)
    draw = lambda seed: sample_combinations(build_graph(rows, ds="2025-01-01")[0], 40, seed=seed)  # noqa: E731
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_knowledge_falls_back_to_within_max_hops_with_path_coherence():
    # t1 - i1 (3); i1 - t2 (1); t2 - k1 (2): k1 is adjacent to t2 but two hops from the pair (t1, i1)
    graph = typed_graph(
        {"task:t1": 0, "task:t2": 0, "instruction:i1": 0, "knowledge:k1": 0},
        [("task:t1", "instruction:i1", 3.0), ("instruction:i1", "task:t2", 1.0), ("task:t2", "knowledge:k1", 2.0)],
    )
    assert [(c.task, c.hops, c.coherence) for c in sample_combinations(graph.copy(), 10, seed=0, max_hops=1)] == [
        ("t2", 1, 1.5)  # mean of t2-i1 (1) and t2-k1 (2)
    ]
    combos = sorted(sample_combinations(graph, 10, seed=0, max_hops=2), key=lambda c: c.task)
    assert [(c.task, c.hops, c.coherence) for c in combos] == [
        ("t1", 2, 2.0),  # mean of t1-i1 (3), i1-t2 (1), t2-k1 (2)
        ("t2", 1, 1.5),
    ]


def test_heavily_used_node_is_rarely_picked():
    nodes = {"task:fresh": 0, "task:worn": 100, "instruction:i": 0, "knowledge:k": 0}
    edges = [("task:fresh", "instruction:i", 1.0), ("task:worn", "instruction:i", 1.0)]
    edges.append(("instruction:i", "knowledge:k", 1.0))
    first_picks = Counter(sample_combinations(typed_graph(nodes, edges), 1, seed=s)[0].task for s in range(200))
    assert first_picks["worn"] <= 2  # p ≈ 1/101² per draw; uniform picking would give ~100
    assert first_picks["fresh"] >= 198


def test_heavier_edges_steer_instruction_and_knowledge_choice():
    nodes = dict.fromkeys(["task:t", "instruction:strong", "instruction:weak", "knowledge:strong", "knowledge:weak"], 0)
    edges = [("task:t", "instruction:strong", 9.0), ("task:t", "instruction:weak", 1.0)]
    edges += [(i, "knowledge:strong", 9.0) for i in ("instruction:strong", "instruction:weak")]
    edges += [(i, "knowledge:weak", 1.0) for i in ("instruction:strong", "instruction:weak")]
    firsts = [sample_combinations(typed_graph(nodes, edges), 1, seed=s)[0] for s in range(200)]
    # p = 0.9 each; uniform picking would give ~100
    assert sum(c.instruction == "strong" for c in firsts) >= 160
    assert sum(c.knowledge == "strong" for c in firsts) >= 160


def test_usage_spreads_evenly_over_equal_tasks():
    tasks = [f"task:t{n}" for n in range(20)]
    instructions = [f"instruction:i{n}" for n in range(5)]
    knowledge = [f"knowledge:k{n}" for n in range(10)]
    graph = typed_graph(
        dict.fromkeys(tasks + instructions + knowledge, 0),
        [(t, i, 1.0) for t in tasks for i in instructions] + [(i, k, 1.0) for i in instructions for k in knowledge],
    )
    sample_combinations(graph, 200, seed=0)
    used_counts = [used(graph, t) for t in tasks]
    # 10 each on average; independent uniform draws give a min of ~4 and a max of ~15
    assert min(used_counts) >= 6 and max(used_counts) <= 2 * min(used_counts), used_counts


def test_sampling_stops_cleanly_when_the_graph_is_exhausted(caplog):
    graph = typed_graph(
        {"task:t": 0, "task:lonely": 0, "instruction:i": 0, "knowledge:k1": 0, "knowledge:k2": 0},
        [("task:t", "instruction:i", 1.0), ("instruction:i", "knowledge:k1", 1.0), ("task:t", "knowledge:k2", 1.0)],
    )
    with caplog.at_level(logging.WARNING, logger="infinisynth.knowledge_graph"):
        combos = sample_combinations(graph, 10, seed=0)
    assert sorted(c.knowledge for c in combos) == ["k1", "k2"]
    assert "2 of 10 combinations" in caplog.text
    assert used(graph, "task:lonely") == 0
    assert sample_combinations(typed_graph({"task:t": 0}, []), 5, seed=0) == []


def test_graph_summary_reports_sizes_and_top_nodes():
    graph, _ = build_graph(
        [
            row("p1", ["sort"], ["stable"], ["merge sort"]),
            row("p2", ["sort"], ["in place"], ["quicksort"]),
            row("p3", ["search"], [], []),
        ],
        ds="2025-01-01",
    )
    summary = graph_summary(graph)
    assert summary["nodes_per_kind"] == {"task": 2, "instruction": 2, "knowledge": 2}
    assert (summary["edges"], summary["relation_edges"], summary["connected_components"]) == (6, 0, 2)
    assert summary["mean_degree"] == pytest.approx(2.0)
    assert summary["top_nodes"]["task"][0] == {"node": "task:sort", "degree": 4, "count": 2}
    assert summary["used_nodes_per_kind"] == {"task": 0, "instruction": 0, "knowledge": 0}


def test_medium_graph_builds_and_samples_quickly():
    start = time.perf_counter()
    graph, stats = build_graph(random_rows(2_000, (300, 700, 1_000), seed=5), ds="2025-01-01")
    combos = sample_combinations(graph, 1_000, seed=1)
    elapsed = time.perf_counter() - start
    assert stats.nodes > 1_900  # nearly every vocabulary word was drawn
    assert len({c.id for c in combos}) == 1_000
    assert elapsed < 15, f"took {elapsed:.1f}s"


# -- the array-backed graph ----------------------------------------------------------------------


def test_combinations_are_the_ones_the_networkx_implementation_drew():
    # Drawn by the networkx-backed sampler this module replaced (same graph, same seeds):
    # the arrays must not change which combinations a night gets.
    graph, _ = build_graph(random_rows(60, (15, 25, 30), seed=1), ds="2025-01-01")
    combos = sample_combinations(graph, 150, seed=3, max_hops=2)
    assert [(c.task_node, c.instruction_node, c.knowledge_node, c.hops, round(c.coherence, 6)) for c in combos[:3]] == [
        ("task:task 1", "instruction:instr 16", "knowledge:know 29", 1, 1.666667),
        ("task:task 4", "instruction:instr 12", "knowledge:know 18", 1, 2.333333),
        ("task:task 2", "instruction:instr 11", "knowledge:know 29", 1, 1.0),
    ]
    assert content_id(*[c.id for c in combos]) == "e485dd2408e355bb"

    sparse, _ = build_graph(random_rows(40, (15, 25, 30), seed=2), ds="2025-01-01")
    combos = sample_combinations(sparse, 1_200, seed=4, max_hops=2)  # deep enough to need 2-hop knowledge
    assert (len(combos), sum(c.hops == 2 for c in combos)) == (1_200, 64)
    assert content_id(*[c.id for c in combos]) == "ac540bed4fdef591"


def test_building_in_small_batches_gives_the_same_graph_and_graph_json(tmp_path: Path, monkeypatch):
    rows = random_rows(50, (10, 12, 15), seed=9)
    rows[3]["relations"] = [rel("task 1", "uses", "know 2"), rel("instr 4", "needs", "task 7")]
    rows[20] = {**rows[7], "task_keywords": ["duplicate of p7"]}
    whole, whole_stats = build_graph(rows, ds="2025-01-01")
    monkeypatch.setattr(knowledge_graph.build, "BATCH_ROWS", 7)
    monkeypatch.setattr(knowledge_graph.build, "PRODUCT_PROBLEMS", 3)
    monkeypatch.setattr(knowledge_graph.store, "WRITE_ROWS", 4)
    batched, batched_stats = build_graph(rows, ds="2025-01-01")

    assert batched_stats == whole_stats and whole_stats.rows_duplicate == 1
    assert batched.node_table().equals(whole.node_table())
    assert batched.edge_table().equals(whole.edge_table())
    save_graph(Store(f"file://{tmp_path}"), PIPELINE, "2025-01-01", batched)
    with open(tmp_path / PIPELINE / "kg_graph" / "ds=2025-01-01" / "graph.json") as fh:
        from_json = nx.node_link_graph(json.load(fh))
    assert edge_dict(from_json) == edge_dict(whole)
    assert from_json.number_of_nodes() == whole.num_nodes


def test_tables_are_sorted_with_edges_as_index_pairs():
    graph, _ = build_graph(random_rows(30, (10, 12, 15), seed=4), ds="2025-01-01")
    names = graph.names.to_pylist()
    assert names == sorted(names)
    assert (graph.source < graph.target).all()
    pairs = list(zip(graph.source.tolist(), graph.target.tolist(), strict=True))
    assert pairs == sorted(set(pairs))
    assert (graph.source.dtype, graph.target.dtype) == (np.int32, np.int32)


def test_the_pipeline_path_never_imports_networkx(tmp_path: Path):
    script = f"""
import sys
from infinisynth.knowledge_graph import build_graph, graph_summary, latest_graph_before, sample_combinations, save_graph
from infinisynth.storage import Store
rows = [{{"id": f"p{{i}}", "task_keywords": ["t"], "instruction_keywords": [f"i{{i}}"], "knowledge_keywords": ["k"]}} for i in range(5)]
store = Store("file://{tmp_path}")
graph, _ = build_graph(rows, ds="2025-01-01")
sample_combinations(graph, 3, seed=0)
save_graph(store, "code_instruct", "2025-01-01", graph)
graph, _ = build_graph(rows, ds="2025-01-02", previous=latest_graph_before(store, "code_instruct", "2025-01-02"))
graph_summary(graph)
assert "networkx" not in sys.modules, "networkx was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True)
