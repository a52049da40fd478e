"""Backfeeding Construction (Infinite-Instruct 3.2): the keyword knowledge graph and its combinations.

An LLM extracts keywords of three kinds from each problem (task, instruction, knowledge point) and
optionally relations it states between them. This package

1. builds ONE graph over a run's keyword rows (:func:`build_graph`): keywords are typed nodes,
   co-occurrence within a problem and stated relations are weighted edges; it merges into the
   previous night's graph so the graph grows night over night;
2. persists it (:func:`save_graph`, :func:`load_graph`, :func:`latest_graph_before`) as two
   committed Parquet tables (``kg_nodes``, ``kg_edges``) plus ``graph.json`` (networkx node-link)
   beside them, for people who want ``networkx`` directly;
3. derives connected (task, instruction, knowledge) combinations from it
   (:func:`sample_combinations`), seeded and reproducible, preferring under-used nodes.

The graph is a :class:`KeywordGraph`: nodes and edges as Arrow and numpy arrays (node names
sorted, edges as index pairs), built with vectorised passes over batches of keyword rows, so a
graph costs tens of bytes an edge where a networkx graph (a dict per node and per edge) cost
hundreds. ``networkx`` is imported only by :meth:`KeywordGraph.to_networkx`.

Modules along the data flow: ``graph`` (the :class:`KeywordGraph`, its schemas and summary), ``build``
(keyword rows -> graph), ``store`` (graph <-> committed partitions and ``graph.json``), ``sample``
(graph -> combinations).

Pipeline order matters for coverage: ``latest_graph_before`` -> ``build_graph(previous=...)`` ->
``sample_combinations`` (increments ``used`` on the graph) -> ``save_graph``, so the usage counts
carry over to the next night. A night grows from the newest graph of a strictly earlier date, never
a later one (see :func:`latest_graph_before`).
"""

from infinisynth.knowledge_graph.build import build_graph
from infinisynth.knowledge_graph.graph import (
    EDGE_SCHEMA,
    INPUT_COLUMNS,
    KEYWORD_COLUMNS,
    KEYWORD_SCHEMA_FIELDS,
    KINDS,
    NODE_SCHEMA,
    REQUIRED_COLUMNS,
    GraphStats,
    KeywordGraph,
    graph_summary,
    node_id,
    normalize_keyword,
)
from infinisynth.knowledge_graph.sample import Combination, sample_combinations
from infinisynth.knowledge_graph.store import EDGES_STAGE, GRAPH_AREA, GRAPH_FILE, NODES_STAGE, latest_graph_before, load_graph, save_graph

__all__ = [
    "EDGES_STAGE",
    "EDGE_SCHEMA",
    "GRAPH_AREA",
    "GRAPH_FILE",
    "INPUT_COLUMNS",
    "KEYWORD_COLUMNS",
    "KEYWORD_SCHEMA_FIELDS",
    "KINDS",
    "NODES_STAGE",
    "NODE_SCHEMA",
    "REQUIRED_COLUMNS",
    "Combination",
    "GraphStats",
    "KeywordGraph",
    "build_graph",
    "graph_summary",
    "latest_graph_before",
    "load_graph",
    "node_id",
    "normalize_keyword",
    "sample_combinations",
    "save_graph",
]
