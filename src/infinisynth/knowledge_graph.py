"""Backfeeding Construction (Infinite-Instruct 3.2): the keyword knowledge graph and its combinations.

An LLM extracts keywords of three kinds from each problem (task, instruction, knowledge point) and
optionally relations it states between them. This module

1. builds ONE graph over a run's keyword rows (:func:`build_graph`): keywords are typed nodes,
   co-occurrence within a problem and stated relations are weighted edges; it merges into the
   previous night's graph so the graph grows night over night;
2. persists it (:func:`save_graph`, :func:`load_graph`, :func:`latest_graph_before`) as two
   committed Parquet tables (``kg_nodes``, ``kg_edges``) plus ``graph.json`` (networkx node-link)
   in the ``kg_nodes`` partition directory, for people who want ``networkx`` directly;
3. derives connected (task, instruction, knowledge) combinations from it
   (:func:`sample_combinations`), seeded and reproducible, preferring under-used nodes.

Pipeline order matters for coverage: ``latest_graph_before`` -> ``build_graph(previous=...)`` ->
``sample_combinations`` (increments ``used`` on the graph) -> ``save_graph``, so the usage counts
carry over to the next night. A night grows from the newest graph of a strictly earlier date, never
a later one (see :func:`latest_graph_before`).
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import networkx as nx
import numpy as np
import pyarrow as pa

from infinisynth.records import content_id
from infinisynth.storage import PartitionNotFound, StorageError, Store

log = logging.getLogger(__name__)

KINDS = ("task", "instruction", "knowledge")
KEYWORD_COLUMNS = {"task": "task_keywords", "instruction": "instruction_keywords", "knowledge": "knowledge_keywords"}
REQUIRED_COLUMNS = ("id", *KEYWORD_COLUMNS.values())  # ``relations`` is optional: extraction may skip it
MAX_KEYWORD_CHARS = 80  # longer "keywords" are sentences the model failed to condense
RELATION_FIELDS = ("head", "relation", "tail")

# Schema of the keyword-extraction stage's own columns (one row per problem).
KEYWORD_SCHEMA_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("task_keywords", pa.list_(pa.string())),
    pa.field("instruction_keywords", pa.list_(pa.string())),
    pa.field("knowledge_keywords", pa.list_(pa.string())),
    pa.field(
        "relations",
        pa.list_(pa.struct([pa.field(name, pa.string()) for name in RELATION_FIELDS])),
    ),
]

NODE_SCHEMA = pa.schema(
    [
        pa.field("node", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("used", pa.int64(), nullable=False),
        pa.field("first_seen", pa.string()),
    ]
)
EDGE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("problems", pa.int64(), nullable=False),
        pa.field("relations", pa.list_(pa.string()), nullable=False),
    ]
)
NODES_STAGE = "kg_nodes"
EDGES_STAGE = "kg_edges"
GRAPH_FILE = "graph.json"
GRAPH_AREA = "kg_graph"  # graph.json per date, outside the kg_nodes table folder

# Sampling weights (see sample_combinations). A task is drawn with probability
# ∝ count**COUNT_EXPONENT / (1 + used)**USED_EXPONENT. At equilibrium that gives
# (1 + used) ∝ count**(COUNT_EXPONENT / USED_EXPONENT) = count**0.25: a task mentioned 16x as often
# is used only ~2x as often, so frequent tasks still lead but the long tail gets covered; with
# USED_EXPONENT = 1 usage would stay proportional to popularity instead.
COUNT_EXPONENT = 0.5
USED_EXPONENT = 2.0

_TRAILING = ".,;:!?\"'` "
_LEADING = "\"'` "


def normalize_keyword(value: Any) -> str | None:
    """Canonical keyword text, or None if it is not a usable keyword.

    NFKC, collapsed whitespace, lower case, no quotes/backticks around it and no trailing
    punctuation (models write "Parse JSON." and "`parse json`" for the same thing).
    """
    if not isinstance(value, str):
        return None
    text = " ".join(unicodedata.normalize("NFKC", value).split()).lower()
    text = text.lstrip(_LEADING).rstrip(_TRAILING)
    if not text or len(text) > MAX_KEYWORD_CHARS:
        return None
    return text


def node_id(kind: str, text: str) -> str:
    return f"{kind}:{text}"


@dataclass
class GraphStats:
    """What one :func:`build_graph` call did with its input (for logs, manifests and reports)."""

    ds: str
    rows: int = 0  # input rows seen
    problems: int = 0  # rows that contributed keywords
    rows_skipped: int = 0  # a keyword/relations column held a non-list value, or the id is missing
    rows_duplicate: int = 0  # same problem id seen before in this input
    rows_empty: int = 0  # no usable keyword at all
    keywords_dropped: int = 0  # empty, over-long or non-string keywords
    relations: int = 0  # stated relations applied as edges
    relations_unmatched: int = 0  # an endpoint's text matches no node
    relations_invalid: int = 0  # malformed entry, or head and tail are the same node
    nodes_added: int = 0
    edges_added: int = 0
    nodes: int = 0
    edges: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_graph(
    rows: pa.Table | Iterable[Mapping[str, Any]],
    *,
    ds: str,
    previous: nx.Graph | None = None,
    relation_weight: float = 2.0,
) -> tuple[nx.Graph, GraphStats]:
    """The keyword graph of ``rows``, merged into a copy of ``previous`` if given.

    Nodes ``"{kind}:{text}"`` carry ``kind``, ``text``, ``count`` (problems mentioning it),
    ``used`` (times drawn into a combination) and ``first_seen`` (ds); merging adds counts and
    keeps ``used`` and ``first_seen``. Every pair of keywords of one problem gets +1 weight; each
    stated relation adds ``relation_weight`` and its label (normalized like a keyword) to the edge's
    sorted ``relations``.
    ``problems`` on an edge counts the problems that contributed to it. Relation endpoints are
    resolved after all keywords are in, so they may name keywords of other problems; when the text
    exists under several kinds, this problem's own keyword wins, then the order of ``KINDS``.
    ``graph.graph`` holds ``ds`` and the cumulative ``problems``.
    """
    graph = previous.copy() if previous is not None else nx.Graph()
    stats = GraphStats(ds=ds)
    nodes_before, edges_before = graph.number_of_nodes(), graph.number_of_edges()
    problems: list[tuple[list[str], list[tuple[str, str, str]]]] = []  # (node ids, relations) per problem
    seen_ids: set[str] = set()

    for row in _iter_rows(rows):
        stats.rows += 1
        parsed = _parse_row(row, stats)
        if parsed is None:
            continue
        problem_id, nodes, relations = parsed
        if problem_id in seen_ids:
            stats.rows_duplicate += 1
            continue
        seen_ids.add(problem_id)
        if not nodes:
            stats.rows_empty += 1
            continue
        stats.problems += 1
        for node in nodes:
            if node in graph:
                graph.nodes[node]["count"] = graph.nodes[node].get("count", 0) + 1
            else:
                kind, text = node.split(":", 1)
                graph.add_node(node, kind=kind, text=text, count=1, used=0, first_seen=ds)
        problems.append((nodes, relations))

    for nodes, relations in problems:
        touched: set[tuple[str, str]] = set()  # each problem counts once per edge
        for a, b in itertools.combinations(nodes, 2):
            _add_weight(graph, a, b, 1.0)
            touched.add(_edge_key(a, b))
        for head, label, tail in relations:
            head_id, tail_id = _resolve(graph, head, nodes), _resolve(graph, tail, nodes)
            if head_id is None or tail_id is None:
                stats.relations_unmatched += 1
                continue
            if head_id == tail_id:
                stats.relations_invalid += 1
                continue
            data = _add_weight(graph, head_id, tail_id, relation_weight)
            # A new list, never an in-place append: graph.copy() shares attribute values with previous.
            data["relations"] = sorted({*data.get("relations", ()), label})
            stats.relations += 1
            touched.add(_edge_key(head_id, tail_id))
        for a, b in touched:
            graph.edges[a, b]["problems"] = graph.edges[a, b].get("problems", 0) + 1

    graph.graph["ds"] = ds
    graph.graph["problems"] = int(graph.graph.get("problems", 0)) + stats.problems
    stats.nodes, stats.edges = graph.number_of_nodes(), graph.number_of_edges()
    stats.nodes_added, stats.edges_added = stats.nodes - nodes_before, stats.edges - edges_before
    return graph, stats


def _iter_rows(rows: pa.Table | Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    if isinstance(rows, pa.Table):
        missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
        if missing:
            raise ValueError(f"keyword rows lack required column(s) {missing}; they have {rows.column_names}")
        for batch in rows.to_batches(max_chunksize=10_000):
            yield from batch.to_pylist()
        return
    for index, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"keyword row {index} lacks required column(s) {missing}; it has {sorted(row)}")
        yield row


def _parse_row(row: Mapping[str, Any], stats: GraphStats) -> tuple[str, list[str], list[tuple[str, str, str]]] | None:
    """(problem id, its sorted distinct node ids, its distinct normalized relations), or None to skip."""
    problem_id = row["id"]
    values = [row[KEYWORD_COLUMNS[kind]] for kind in KINDS] + [row.get("relations")]
    if not isinstance(problem_id, str) or not problem_id or any(v is not None and not isinstance(v, (list, tuple)) for v in values):
        stats.rows_skipped += 1
        return None
    nodes: set[str] = set()
    for kind, keywords in zip(KINDS, values[:3], strict=True):
        for keyword in keywords or ():
            text = normalize_keyword(keyword)
            if text is None:
                stats.keywords_dropped += 1
            else:
                nodes.add(node_id(kind, text))
    relations: set[tuple[str, str, str]] = set()
    for entry in values[3] or ():
        parts = [normalize_keyword(entry.get(f)) for f in RELATION_FIELDS] if isinstance(entry, Mapping) else [None]
        texts = [p for p in parts if p is not None]
        if len(texts) < len(parts):
            stats.relations_invalid += 1
        else:
            relations.add((texts[0], texts[1], texts[2]))
    return problem_id, sorted(nodes), sorted(relations)


def _resolve(graph: nx.Graph, text: str, own: list[str]) -> str | None:
    candidates = [node_id(kind, text) for kind in KINDS]
    own_set = set(own)
    for candidate in candidates:
        if candidate in own_set:
            return candidate
    return next((c for c in candidates if c in graph), None)


def _edge_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _add_weight(graph: nx.Graph, a: str, b: str, weight: float) -> dict[str, Any]:
    if graph.has_edge(a, b):
        data = graph.edges[a, b]
        data["weight"] = data.get("weight", 0.0) + weight
    else:
        graph.add_edge(a, b, weight=weight, problems=0, relations=[])
        data = graph.edges[a, b]
    return data


# -- persistence -------------------------------------------------------------------------------


def save_graph(store: Store, pipeline: str, ds: str, graph: nx.Graph) -> dict[str, Any]:
    """Commit ``graph`` as the ``kg_nodes`` and ``kg_edges`` partitions of ``ds``; return counts and URLs.

    ``graph.json`` (networkx node-link, ``nx.node_link_graph(json.load(f))``) is written first
    (under ``{pipeline}/kg_graph/ds=.../``, beside the tables, not in one), then edges are committed, then nodes: the ``kg_nodes`` manifest
    is the commit point for the whole graph, so a reader that finds it finds the edges too. Both
    manifests carry the same ``version`` token, which :func:`load_graph` checks.
    """
    version = uuid.uuid4().hex[:12]
    nodes = sorted(graph.nodes(data=True), key=lambda item: item[0])
    node_table = pa.table(
        {
            "node": [n for n, _ in nodes],
            "kind": [d.get("kind") for _, d in nodes],
            "text": [d.get("text") for _, d in nodes],
            "count": [int(d.get("count", 0)) for _, d in nodes],
            "used": [int(d.get("used", 0)) for _, d in nodes],
            "first_seen": [d.get("first_seen") for _, d in nodes],
        },
        schema=NODE_SCHEMA,
    )
    edges = sorted((*_edge_key(a, b), d) for a, b, d in graph.edges(data=True))
    edge_table = pa.table(
        {
            "source": [a for a, _, _ in edges],
            "target": [b for _, b, _ in edges],
            "weight": [float(d.get("weight", 1.0)) for _, _, d in edges],
            "problems": [int(d.get("problems", 0)) for _, _, d in edges],
            "relations": [sorted(d.get("relations", ())) for _, _, d in edges],
        },
        schema=EDGE_SCHEMA,
    )
    graph_attrs = dict(graph.graph)
    meta = {"version": version, "graph": graph_attrs, "nodes": len(nodes), "edges": len(edges)}

    nodes_partition = store.partition(pipeline, NODES_STAGE, ds)
    edges_partition = store.partition(pipeline, EDGES_STAGE, ds)
    link_data = nx.node_link_data(graph, edges="edges")
    link_data["graph"] = {**graph_attrs, "version": version}
    graph_path = store.side_path(pipeline, GRAPH_AREA, ds, GRAPH_FILE)
    store.write_json(graph_path, link_data)
    edges_partition.write_and_commit(edge_table, meta=meta)
    nodes_partition.write_and_commit(node_table, meta={**meta, "graph_file": store.url(graph_path)})
    return {
        "nodes": len(nodes),
        "edges": len(edges),
        "version": version,
        "nodes_url": nodes_partition.url,
        "edges_url": edges_partition.url,
        "graph_url": store.url(graph_path),
    }


def load_graph(store: Store, pipeline: str, ds: str) -> nx.Graph:
    """The graph committed for ``ds``, rebuilt from its node and edge tables.

    Raises ``PartitionNotFound`` if there is none, and ``StorageError`` if the two tables come from
    different writes (a re-run has committed its edges but not yet its nodes; retrying the task
    after that re-run finishes succeeds).
    """
    nodes_partition = store.partition(pipeline, NODES_STAGE, ds)
    edges_partition = store.partition(pipeline, EDGES_STAGE, ds)
    nodes_manifest, edges_manifest = nodes_partition.manifest(), edges_partition.manifest()
    if nodes_manifest.meta.get("version") != edges_manifest.meta.get("version"):
        raise StorageError(
            f"{nodes_partition.url} and {edges_partition.url} are from different writes "
            f"({nodes_manifest.meta.get('version')} vs {edges_manifest.meta.get('version')})"
        )
    graph = nx.Graph(**nodes_manifest.meta.get("graph", {}))
    for row in nodes_partition.read().to_pylist():
        graph.add_node(row.pop("node"), **row)
    for row in edges_partition.read().to_pylist():
        graph.add_edge(row.pop("source"), row.pop("target"), **row)
    return graph


def latest_graph_before(store: Store, pipeline: str, ds: str) -> nx.Graph | None:
    """The graph committed for the newest date strictly before ``ds``, or None (the first night).

    What a night's graph grows from. Never a later date's graph, nor the date's own: re-running a
    date, or backfilling dates out of order, cannot carry a later night's keywords and usage counts
    into an earlier night. The graph read is the newest earlier one committed when this is called,
    so dates run one at a time in order form one chain, night over night.
    """
    for date in store.committed_dates(pipeline, NODES_STAGE, before=ds):
        try:
            return load_graph(store, pipeline, date)
        except PartitionNotFound:
            log.warning("knowledge graph of %s has nodes but no edges; trying an older one", date)
    return None


# -- combinations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    """A connected (task, instruction, knowledge point) triple to reconstruct a problem from."""

    id: str
    task: str
    instruction: str
    knowledge: str
    task_node: str
    instruction_node: str
    knowledge_node: str
    coherence: float  # mean weight of the edges connecting the three nodes
    hops: int  # 1 if the knowledge node is adjacent to the task or instruction, else the path length


@dataclass
class _Candidates:
    """Knowledge nodes for one (task, instruction) pair in the current tier (adjacent, then farther)."""

    nodes: np.ndarray  # node indices
    affinity: np.ndarray  # sampling weight before the usage penalty
    coherence: np.ndarray
    hops: np.ndarray
    is_open: np.ndarray  # False once (task, instruction, node) has been produced
    tier: int  # 1 = adjacent, 2 = within max_hops


class _Sampler:
    """Index arrays over a graph: nodes in sorted order, neighbours as CSR sorted by index."""

    def __init__(self, graph: nx.Graph, seed: int, max_hops: int):
        self.graph = graph
        self.names = sorted(graph.nodes)
        index = {name: i for i, name in enumerate(self.names)}
        kind_code = {kind: code for code, kind in enumerate(KINDS)}
        self.kind = np.array([kind_code.get(graph.nodes[n].get("kind"), -1) for n in self.names], dtype=np.int8)
        self.count = np.array([graph.nodes[n].get("count", 1) for n in self.names], dtype=np.float64)
        self.used = np.array([graph.nodes[n].get("used", 0) for n in self.names], dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.max_hops = max_hops

        edges = list(graph.edges(data="weight", default=1.0))  # one pass: the view recounts on len()
        src = np.array([index[a] for a, _, _ in edges], dtype=np.int64)
        dst = np.array([index[b] for _, b, _ in edges], dtype=np.int64)
        weight = np.array([w for _, _, w in edges], dtype=np.float64)
        rows, cols, weights = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([weight, weight])
        order = np.lexsort((cols, rows))
        self.cols, self.weights = cols[order], weights[order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(self.names)))])

        self.tasks = np.flatnonzero(self.kind == kind_code["task"])
        # A task without an instruction neighbour can never start a triple: weight 0 from the start.
        self.task_weight = np.array([self._task_weight(t) if self._instructions(t)[0].size else 0.0 for t in self.tasks], dtype=np.float64)
        self.instruction_open: dict[int, np.ndarray] = {}
        self.candidates: dict[tuple[int, int], _Candidates] = {}

    def _task_weight(self, t: int | np.integer[Any]) -> float:
        return self.count[t] ** COUNT_EXPONENT / (1.0 + self.used[t]) ** USED_EXPONENT

    def _neighbours(self, node: int | np.integer[Any], kind: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[node], self.indptr[node + 1]
        cols, weights = self.cols[lo:hi], self.weights[lo:hi]
        mask = self.kind[cols] == kind
        return cols[mask], weights[mask]

    def _instructions(self, t: int | np.integer[Any]) -> tuple[np.ndarray, np.ndarray]:
        return self._neighbours(t, KINDS.index("instruction"))

    def _draw(self, weights: np.ndarray) -> int | None:
        cumulative = np.cumsum(weights)
        if cumulative.size == 0 or cumulative[-1] <= 0:
            return None
        total = cumulative[-1]
        # side="right" never lands on a zero-weight entry; rounding can make the product equal
        # the total, which would index past the end: take the last positive entry then.
        j = int(np.searchsorted(cumulative, self.rng.random() * total, side="right"))
        return j if j < cumulative.size else int(np.searchsorted(cumulative, total, side="left"))

    def _penalty(self, nodes: np.ndarray) -> np.ndarray:
        return (1.0 + self.used[nodes]) ** USED_EXPONENT

    def next(self) -> Combination | None:
        """One new combination, or None when no task has a new connected triple left."""
        while True:
            p = self._draw(self.task_weight)
            if p is None:
                return None
            t = int(self.tasks[p])
            instructions, weights = self._instructions(t)
            is_open = self.instruction_open.setdefault(t, np.ones(instructions.size, dtype=bool))
            j = self._draw(weights * is_open / self._penalty(instructions))
            if j is None:
                self.task_weight[p] = 0.0  # every instruction of this task is exhausted
                continue
            i, w_ti = int(instructions[j]), float(weights[j])
            picked = self._knowledge(t, i, w_ti)
            if picked is None:
                is_open[j] = False
                continue
            k, coherence, hops = picked
            for node in (t, i, k):
                self.used[node] += 1
                self.graph.nodes[self.names[node]]["used"] = int(self.used[node])
            self.task_weight[p] = self._task_weight(t)
            t_name, i_name, k_name = self.names[t], self.names[i], self.names[k]
            return Combination(
                id=content_id(t_name, i_name, k_name),
                task=self.graph.nodes[t_name].get("text", t_name),
                instruction=self.graph.nodes[i_name].get("text", i_name),
                knowledge=self.graph.nodes[k_name].get("text", k_name),
                task_node=t_name,
                instruction_node=i_name,
                knowledge_node=k_name,
                coherence=coherence,
                hops=hops,
            )

    def _knowledge(self, t: int, i: int, w_ti: float) -> tuple[int, float, int] | None:
        cands = self.candidates.get((t, i))
        if cands is None:
            cands = self.candidates[(t, i)] = self._adjacent(t, i, w_ti)
        while True:
            j = self._draw(cands.affinity * cands.is_open / self._penalty(cands.nodes))
            if j is not None:
                cands.is_open[j] = False
                return int(cands.nodes[j]), float(cands.coherence[j]), int(cands.hops[j])
            if cands.tier == 2 or self.max_hops < 2:
                return None
            cands = self.candidates[(t, i)] = self._within_hops(t, i, w_ti)

    def _adjacent(self, t: int, i: int, w_ti: float) -> _Candidates:
        """Knowledge nodes adjacent to the instruction or the task; both counts for more."""
        knowledge = KINDS.index("knowledge")
        from_i, w_i = self._neighbours(i, knowledge)
        from_t, w_t = self._neighbours(t, knowledge)
        nodes = np.union1d(from_i, from_t)
        at_i, at_t = np.searchsorted(nodes, from_i), np.searchsorted(nodes, from_t)
        w_ik, w_tk = np.zeros(nodes.size), np.zeros(nodes.size)
        w_ik[at_i], w_tk[at_t] = w_i, w_t
        edge_count = np.ones(nodes.size)
        edge_count[at_i] += 1
        edge_count[at_t] += 1
        return _Candidates(
            nodes=nodes,
            affinity=w_ik + w_tk,
            coherence=(w_ti + w_ik + w_tk) / edge_count,
            hops=np.ones(nodes.size, dtype=np.int64),
            is_open=np.ones(nodes.size, dtype=bool),
            tier=1,
        )

    def _within_hops(self, t: int, i: int, w_ti: float) -> _Candidates:
        """Knowledge nodes 2..max_hops away from the pair, by breadth-first search from both at once."""
        n = len(self.names)
        dist = np.full(n, -1, dtype=np.int64)
        path_weight = np.zeros(n)
        frontier = np.array(sorted((t, i)), dtype=np.int64)
        dist[frontier] = 0
        for hop in range(1, self.max_hops + 1):
            starts, ends = self.indptr[frontier], self.indptr[frontier + 1]
            lengths = ends - starts
            if lengths.sum() == 0:
                break
            # Gather all neighbour slots of the frontier at once (CSR rows laid end to end).
            slots = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            parents = np.repeat(frontier, lengths)
            cols = self.cols[slots]
            fresh = dist[cols] < 0
            cols, parents, weights = cols[fresh], parents[fresh], self.weights[slots][fresh]
            # First discovery wins; np.unique keeps the first occurrence, so this is deterministic.
            frontier, first = np.unique(cols, return_index=True)
            dist[frontier] = hop
            path_weight[frontier] = path_weight[parents[first]] + weights[first]
        knowledge = KINDS.index("knowledge")
        nodes = np.flatnonzero((dist >= 2) & (self.kind == knowledge))
        coherence = (w_ti + path_weight[nodes]) / (1 + dist[nodes])
        return _Candidates(
            nodes=nodes,
            affinity=coherence / dist[nodes],  # nearer and stronger paths first
            coherence=coherence,
            hops=dist[nodes],
            is_open=np.ones(nodes.size, dtype=bool),
            tier=2,
        )


def sample_combinations(graph: nx.Graph, n: int, *, seed: int, max_hops: int = 2) -> list[Combination]:
    """Up to ``n`` distinct connected (task, instruction, knowledge) combinations; mutates ``used``.

    1. task ∝ ``count**COUNT_EXPONENT / (1 + used)**USED_EXPONENT`` over task nodes;
    2. instruction adjacent to it ∝ ``edge weight / (1 + used)**USED_EXPONENT``;
    3. knowledge adjacent to the instruction or the task ∝ ``(w(i, k) + w(t, k)) / (1 + used)**USED_EXPONENT``
       (adjacent to both counts twice); once a pair has no new adjacent knowledge node, nodes within
       ``max_hops`` of the pair are drawn instead, ∝ mean path weight / distance, usage-penalised.

    After each draw the three nodes' ``used`` attributes are incremented on ``graph`` itself, so
    later draws (and, once saved, later nights) prefer other nodes. Triples never repeat within a
    call; ids are content hashes of the node ids, so repeats across nights can be recognised.
    The same graph and seed give the same list. Returns fewer than ``n`` (and logs it) when no new
    connected triple is left.
    """
    if max_hops < 1:
        raise ValueError(f"max_hops must be at least 1, got {max_hops}")
    sampler = _Sampler(graph, seed, max_hops)
    out: list[Combination] = []
    while len(out) < n:
        combination = sampler.next()
        if combination is None:
            log.warning("knowledge graph exhausted: %d of %d combinations produced", len(out), n)
            break
        out.append(combination)
    return out


def graph_summary(graph: nx.Graph, top: int = 10) -> dict[str, Any]:
    """Sizes, connectivity, coverage (nodes used at least once) and the top nodes by degree per kind."""
    by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for name, kind in graph.nodes(data="kind"):
        by_kind.setdefault(str(kind), []).append(name)
    nodes = graph.number_of_nodes()
    return {
        "ds": graph.graph.get("ds"),
        "problems": graph.graph.get("problems"),
        "nodes": nodes,
        "nodes_per_kind": {kind: len(names) for kind, names in by_kind.items()},
        "used_nodes_per_kind": {kind: sum(1 for name in names if graph.nodes[name].get("used", 0) > 0) for kind, names in by_kind.items()},
        "edges": graph.number_of_edges(),
        "relation_edges": sum(1 for _, _, rel in graph.edges(data="relations") if rel),
        "mean_degree": 2 * graph.number_of_edges() / nodes if nodes else 0.0,
        "connected_components": nx.number_connected_components(graph) if nodes else 0,
        "top_nodes": {
            kind: [
                {"node": name, "degree": graph.degree(name), "count": graph.nodes[name].get("count", 0)}
                for name in sorted(names, key=lambda name: (-graph.degree(name), name))[:top]
            ]
            for kind, names in by_kind.items()
        },
    }
