"""The keyword graph itself: typed keyword nodes and weighted edges as Arrow and numpy arrays.

Nodes are an Arrow table sorted by name, edges int32 index pairs with weight, problem-count and
relation columns: tens of bytes an edge where networkx (a dict per node and per edge) cost hundreds.
``networkx`` is imported only by :meth:`KeywordGraph.to_networkx` and :meth:`KeywordGraph.from_networkx`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.storage import StorageError

if TYPE_CHECKING:
    import networkx as nx


KINDS = ("task", "instruction", "knowledge")
KEYWORD_COLUMNS = {"task": "task_keywords", "instruction": "instruction_keywords", "knowledge": "knowledge_keywords"}
REQUIRED_COLUMNS = ("id", *KEYWORD_COLUMNS.values())  # ``relations`` is optional: extraction may skip it
INPUT_COLUMNS = (*REQUIRED_COLUMNS, "relations")
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
# What build_graph reads: the same columns, every one nullable (a null id marks a row to skip).
INPUT_SCHEMA = pa.schema([f.with_nullable(True) for f in KEYWORD_SCHEMA_FIELDS])

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


# -- the graph -----------------------------------------------------------------------------------


@dataclass(eq=False)
class KeywordGraph:
    """The keyword graph as columns: node ``i`` is row ``i`` of ``nodes`` (sorted by name), an edge
    is the index pair ``source[e] < target[e]``, edges sorted by that pair.

    ``count`` and ``used`` are numpy arrays so sampling can update ``used`` in place. Build one with
    :func:`build_graph`, :func:`load_graph`, :meth:`from_tables` or :meth:`from_networkx`.
    """

    nodes: pa.Table  # node ("kind:text"), kind, text, first_seen
    count: np.ndarray  # int64: problems mentioning the node
    used: np.ndarray  # int64: times drawn into a combination
    source: np.ndarray  # int32 node index
    target: np.ndarray  # int32 node index, > source
    weight: np.ndarray  # float64
    problems: np.ndarray  # int64: problems that contributed to the edge
    relations: pa.Array  # list<string>: sorted distinct relation labels
    attrs: dict[str, Any] = field(default_factory=dict)  # ds and the cumulative problems

    @property
    def num_nodes(self) -> int:
        return self.nodes.num_rows

    @property
    def num_edges(self) -> int:
        return int(self.source.size)

    @property
    def names(self) -> pa.Array:
        return one_array(self.nodes.column("node"))

    def kind_codes(self) -> np.ndarray:
        """Each node's kind as its index in ``KINDS`` (-1 for another kind)."""
        kinds = one_array(self.nodes.column("kind"))
        return np.asarray(pc.index_in(kinds, value_set=pa.array(KINDS)).fill_null(-1), dtype=np.int8)

    def index(self, name: str) -> int:
        """The index of node ``name``; KeyError if there is none."""
        position = pc.index(self.names, name).as_py()
        if position < 0:
            raise KeyError(name)
        return int(position)

    def copy(self) -> KeywordGraph:
        """An independent copy: sampling one does not change the other's ``used``."""
        return replace(self, count=self.count.copy(), used=self.used.copy(), attrs=dict(self.attrs))

    def node_table(self) -> pa.Table:
        return pa.table(
            {
                "node": self.nodes.column("node"),
                "kind": self.nodes.column("kind"),
                "text": self.nodes.column("text"),
                "count": self.count,
                "used": self.used,
                "first_seen": self.nodes.column("first_seen"),
            },
            schema=NODE_SCHEMA,
        )

    def edge_table(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """The edges (or the slice ``start:stop`` of them) with node names, sorted by (source, target)."""
        window = slice(start, stop)
        names = self.names
        return pa.table(
            {
                "source": names.take(self.source[window]),
                "target": names.take(self.target[window]),
                "weight": self.weight[window],
                "problems": self.problems[window],
                "relations": self.relations[window],
            },
            schema=EDGE_SCHEMA,
        )

    @classmethod
    def from_tables(cls, node_table: pa.Table, edge_table: pa.Table, attrs: Mapping[str, Any] | None = None) -> KeywordGraph:
        """A graph from ``kg_nodes``/``kg_edges``-shaped tables (any row order, either edge direction)."""
        node_table = node_table.select(list(NODE_SCHEMA.names)).cast(NODE_SCHEMA)
        node_table = node_table.take(pc.sort_indices(node_table.column("node")))
        names = one_array(node_table.column("node"))
        source = pc.index_in(edge_table.column("source"), value_set=names)
        target = pc.index_in(edge_table.column("target"), value_set=names)
        if source.null_count or target.null_count:
            raise StorageError("knowledge graph edges name nodes the node table does not have")
        a, b = np.asarray(source, dtype=np.int32), np.asarray(target, dtype=np.int32)
        source, target = np.minimum(a, b), np.maximum(a, b)
        order = np.lexsort((target, source))
        relations = one_array(edge_table.column("relations").cast(EDGE_SCHEMA.field("relations").type)).take(order)
        return cls(
            nodes=node_table.select(["node", "kind", "text", "first_seen"]),
            count=np.asarray(node_table.column("count"), dtype=np.int64).copy(),
            used=np.asarray(node_table.column("used"), dtype=np.int64).copy(),
            source=source[order],
            target=target[order],
            weight=np.asarray(edge_table.column("weight"), dtype=np.float64)[order],
            problems=np.asarray(edge_table.column("problems"), dtype=np.int64)[order],
            relations=sorted_lists(relations),
            attrs=dict(attrs or {}),
        )

    @classmethod
    def from_networkx(cls, graph: nx.Graph) -> KeywordGraph:
        """A graph from a networkx graph with this module's attributes (missing ones: 0, or none)."""
        nodes = list(graph.nodes(data=True))
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
        edges = list(graph.edges(data=True))
        edge_table = pa.table(
            {
                "source": [a for a, _, _ in edges],
                "target": [b for _, b, _ in edges],
                "weight": [float(d.get("weight", 1.0)) for _, _, d in edges],
                "problems": [int(d.get("problems", 0)) for _, _, d in edges],
                "relations": [list(d.get("relations", ())) for _, _, d in edges],
            },
            schema=EDGE_SCHEMA,
        )
        return cls.from_tables(node_table, edge_table, graph.graph)

    def to_networkx(self) -> nx.Graph:
        """The same graph in networkx (node and edge attributes as in ``kg_nodes``/``kg_edges``)."""
        import networkx as nx  # only for callers who want it: the pipeline never builds one

        graph = nx.Graph(**self.attrs)
        for row in self.node_table().to_pylist():
            graph.add_node(row.pop("node"), **row)
        for row in self.edge_table().to_pylist():
            graph.add_edge(row.pop("source"), row.pop("target"), **row)
        return graph


def one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (the chunks of a table column joined; an empty one if it has none)."""
    if isinstance(values, pa.ChunkedArray):
        return pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], values.type)
    return values


def lists_from_pairs(pairs: pa.Table, keys: np.ndarray) -> pa.Array:
    """A list<string> per entry of the sorted ``keys``: the sorted labels of ``pairs`` (edge, label) with that key."""
    pairs = pairs.sort_by([("edge", "ascending"), ("label", "ascending")])
    pair_keys = np.asarray(pairs.column("edge"), dtype=np.int64)
    offsets = np.append(np.searchsorted(pair_keys, keys, side="left"), pair_keys.size).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), one_array(pairs.column("label")).cast(pa.string()))


def sorted_lists(lists: pa.Array) -> pa.Array:
    """Each list's distinct values, sorted."""
    lists = one_array(lists)
    parents = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    pairs = pa.table({"edge": parents, "label": pc.list_flatten(lists)}).group_by(["edge", "label"], use_threads=False).aggregate([])
    return lists_from_pairs(pairs, np.arange(len(lists), dtype=np.int64))


def graph_summary(graph: KeywordGraph, top: int = 10) -> dict[str, Any]:
    """Sizes, connectivity, coverage (nodes used at least once) and the top nodes by degree per kind."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, edges = graph.num_nodes, graph.num_edges
    kind = graph.kind_codes()
    degree = np.bincount(graph.source, minlength=nodes) + np.bincount(graph.target, minlength=nodes)
    by_degree = np.lexsort((np.arange(nodes), -degree))  # most connected first, then by name
    names = graph.nodes.column("node")
    adjacency = coo_matrix((np.ones(edges, dtype=np.int8), (graph.source, graph.target)), shape=(nodes, nodes))
    return {
        "ds": graph.attrs.get("ds"),
        "problems": graph.attrs.get("problems"),
        "nodes": nodes,
        "nodes_per_kind": {name: int((kind == code).sum()) for code, name in enumerate(KINDS)},
        "used_nodes_per_kind": {name: int(((kind == code) & (graph.used > 0)).sum()) for code, name in enumerate(KINDS)},
        "edges": edges,
        "relation_edges": int(pc.sum(pc.greater(pc.list_value_length(graph.relations), 0)).as_py() or 0),
        "mean_degree": 2 * edges / nodes if nodes else 0.0,
        "connected_components": int(connected_components(adjacency, directed=False)[0]) if nodes else 0,
        "top_nodes": {
            name: [
                {"node": names[i].as_py(), "degree": int(degree[i]), "count": int(graph.count[i])}
                for i in by_degree[kind[by_degree] == code][:top]
            ]
            for code, name in enumerate(KINDS)
        },
    }
