"""Connected (task, instruction, knowledge point) combinations drawn from the graph, seeded and reproducible."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from infinisynth.knowledge_graph.graph import (
    KINDS,
    KeywordGraph,
)
from infinisynth.records import content_id

log = logging.getLogger(__name__)


# Sampling weights (see sample_combinations). A task is drawn with probability
# ∝ count**COUNT_EXPONENT / (1 + used)**USED_EXPONENT. At equilibrium that gives
# (1 + used) ∝ count**(COUNT_EXPONENT / USED_EXPONENT) = count**0.25: a task mentioned 16x as often
# is used only ~2x as often, so frequent tasks still lead but the long tail gets covered; with
# USED_EXPONENT = 1 usage would stay proportional to popularity instead.
COUNT_EXPONENT = 0.5
USED_EXPONENT = 2.0


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

    def __init__(self, graph: KeywordGraph, seed: int, max_hops: int):
        self.graph = graph
        self.kind = graph.kind_codes()
        self.count = graph.count.astype(np.float64)
        self.used = graph.used  # the graph's own array: draws count on the graph
        self.rng = np.random.default_rng(seed)
        self.max_hops = max_hops

        self.indptr, self.cols, self.weights = _adjacency(graph)

        self.tasks = np.flatnonzero(self.kind == KINDS.index("task"))
        # A task without an instruction neighbour can never start a triple: weight 0 from the start.
        self.task_weight = np.array([self._task_weight(t) if self._instructions(t)[0].size else 0.0 for t in self.tasks], dtype=np.float64)
        self.instruction_open: dict[int, np.ndarray] = {}
        # Per (task, instruction) pair: the adjacent knowledge nodes already drawn with it (one entry
        # per combination; its candidates are recomputed when the pair comes up again: caching them
        # cost ~30 bytes per adjacent node per pair, 300 MB at 50,000 draws), and, once those ran
        # out, the pair's farther candidates (a breadth-first search, worth keeping).
        self.drawn_adjacent: dict[tuple[int, int], list[int]] = {}
        self.farther: dict[tuple[int, int], _Candidates] = {}

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
            self.used[[t, i, k]] += 1
            self.task_weight[p] = self._task_weight(t)
            name, text = self.graph.nodes.column("node"), self.graph.nodes.column("text")
            t_name, i_name, k_name = (name[node].as_py() for node in (t, i, k))
            return Combination(
                id=content_id(t_name, i_name, k_name),
                task=text[t].as_py(),
                instruction=text[i].as_py(),
                knowledge=text[k].as_py(),
                task_node=t_name,
                instruction_node=i_name,
                knowledge_node=k_name,
                coherence=coherence,
                hops=hops,
            )

    def _knowledge(self, t: int, i: int, w_ti: float) -> tuple[int, float, int] | None:
        cands = self.farther.get((t, i))
        if cands is None:
            cands = self._adjacent(t, i, w_ti)
            drawn = self.drawn_adjacent.get((t, i))
            if drawn:
                cands.is_open[np.searchsorted(cands.nodes, drawn)] = False  # nodes are sorted
        while True:
            j = self._draw(cands.affinity * cands.is_open / self._penalty(cands.nodes))
            if j is not None:
                cands.is_open[j] = False
                if cands.tier == 1:
                    self.drawn_adjacent.setdefault((t, i), []).append(int(cands.nodes[j]))
                return int(cands.nodes[j]), float(cands.coherence[j]), int(cands.hops[j])
            if cands.tier == 2 or self.max_hops < 2:
                return None
            self.drawn_adjacent.pop((t, i), None)
            cands = self.farther[(t, i)] = self._within_hops(t, i, w_ti)

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
        n = self.graph.num_nodes
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


def _adjacency(graph: KeywordGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays (indptr, neighbour, weight) with each node's neighbours in index order.

    Edges are sorted by (source, target) with source < target, so a node's neighbours are the
    sources of its edges as target (smaller indices), then the targets of its edges as source
    (larger ones), each group already sorted: placed directly, without sorting both directions.
    """
    n, edges = graph.num_nodes, graph.num_edges
    smaller, larger = np.bincount(graph.target, minlength=n), np.bincount(graph.source, minlength=n)
    indptr = np.concatenate([[0], np.cumsum(smaller + larger)])
    cols, weights = np.empty(2 * edges, dtype=np.int32), np.empty(2 * edges)

    def place(nodes: np.ndarray, neighbours: np.ndarray, weight: np.ndarray, start: np.ndarray, per_node: np.ndarray) -> None:
        """Write each node's run of neighbours (``nodes`` sorted, runs in order) from ``start[node]`` on."""
        run_start = np.concatenate([[0], np.cumsum(per_node)[:-1]])
        slots = start[nodes] + np.arange(nodes.size) - run_start[nodes]
        cols[slots], weights[slots] = neighbours, weight

    by_target = np.argsort(graph.target, kind="stable")  # stable: sources stay ascending within a target
    place(graph.target[by_target], graph.source[by_target], graph.weight[by_target], indptr[:-1], smaller)
    del by_target
    place(graph.source, graph.target, graph.weight, indptr[:-1] + smaller, larger)
    return indptr, cols, weights


def sample_combinations(graph: KeywordGraph, n: int, *, seed: int, max_hops: int = 2) -> list[Combination]:
    """Up to ``n`` distinct connected (task, instruction, knowledge) combinations; mutates ``used``.

    1. task ∝ ``count**COUNT_EXPONENT / (1 + used)**USED_EXPONENT`` over task nodes;
    2. instruction adjacent to it ∝ ``edge weight / (1 + used)**USED_EXPONENT``;
    3. knowledge adjacent to the instruction or the task ∝ ``(w(i, k) + w(t, k)) / (1 + used)**USED_EXPONENT``
       (adjacent to both counts twice); once a pair has no new adjacent knowledge node, nodes within
       ``max_hops`` of the pair are drawn instead, ∝ mean path weight / distance, usage-penalised.

    After each draw the three nodes' ``used`` counts are incremented on ``graph`` itself, so
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
