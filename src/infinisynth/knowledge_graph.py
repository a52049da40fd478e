"""Backfeeding Construction (Infinite-Instruct 3.2): the keyword knowledge graph and its combinations.

An LLM extracts keywords of three kinds from each problem (task, instruction, knowledge point) and
optionally relations it states between them. This module

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

Pipeline order matters for coverage: ``latest_graph_before`` -> ``build_graph(previous=...)`` ->
``sample_combinations`` (increments ``used`` on the graph) -> ``save_graph``, so the usage counts
carry over to the next night. A night grows from the newest graph of a strictly earlier date, never
a later one (see :func:`latest_graph_before`).
"""

from __future__ import annotations

import itertools
import json
import logging
import posixpath
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.records import content_id
from infinisynth.storage import PartitionNotFound, StorageError, Store, is_local

if TYPE_CHECKING:
    import networkx as nx

log = logging.getLogger(__name__)

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
_INPUT_SCHEMA = pa.schema([f.with_nullable(True) for f in KEYWORD_SCHEMA_FIELDS])

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

# Rows parsed per pass, and edges named per write (Parquet and graph.json): the working memory
# beyond the graph itself is bounded by these, not by the night.
BATCH_ROWS = 10_000
PRODUCT_PROBLEMS = 10_000
WRITE_ROWS = 20_000

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
        return _array(self.nodes.column("node"))

    def kind_codes(self) -> np.ndarray:
        """Each node's kind as its index in ``KINDS`` (-1 for another kind)."""
        kinds = _array(self.nodes.column("kind"))
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
        names = _array(node_table.column("node"))
        source = pc.index_in(edge_table.column("source"), value_set=names)
        target = pc.index_in(edge_table.column("target"), value_set=names)
        if source.null_count or target.null_count:
            raise StorageError("knowledge graph edges name nodes the node table does not have")
        a, b = np.asarray(source, dtype=np.int32), np.asarray(target, dtype=np.int32)
        source, target = np.minimum(a, b), np.maximum(a, b)
        order = np.lexsort((target, source))
        relations = _array(edge_table.column("relations").cast(EDGE_SCHEMA.field("relations").type)).take(order)
        return cls(
            nodes=node_table.select(["node", "kind", "text", "first_seen"]),
            count=np.asarray(node_table.column("count"), dtype=np.int64).copy(),
            used=np.asarray(node_table.column("used"), dtype=np.int64).copy(),
            source=source[order],
            target=target[order],
            weight=np.asarray(edge_table.column("weight"), dtype=np.float64)[order],
            problems=np.asarray(edge_table.column("problems"), dtype=np.int64)[order],
            relations=_sorted_lists(relations),
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


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (the chunks of a table column joined; an empty one if it has none)."""
    if isinstance(values, pa.ChunkedArray):
        return pa.concat_arrays(values.chunks) if values.num_chunks else pa.array([], values.type)
    return values


def _sorted_lists(lists: pa.Array) -> pa.Array:
    """Each list's distinct values, sorted."""
    lists = _array(lists)
    parents = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    pairs = pa.table({"edge": parents, "label": pc.list_flatten(lists)}).group_by(["edge", "label"], use_threads=False).aggregate([])
    return _lists_from_pairs(pairs, np.arange(len(lists), dtype=np.int64))


def _lists_from_pairs(pairs: pa.Table, keys: np.ndarray) -> pa.Array:
    """A list<string> per entry of the sorted ``keys``: the sorted labels of ``pairs`` (edge, label) with that key."""
    pairs = pairs.sort_by([("edge", "ascending"), ("label", "ascending")])
    pair_keys = np.asarray(pairs.column("edge"), dtype=np.int64)
    offsets = np.append(np.searchsorted(pair_keys, keys, side="left"), pair_keys.size).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), _array(pairs.column("label")).cast(pa.string()))


# -- building ------------------------------------------------------------------------------------


def build_graph(
    rows: pa.Table | Iterable[Mapping[str, Any]],
    *,
    ds: str,
    previous: KeywordGraph | None = None,
    relation_weight: float = 2.0,
) -> tuple[KeywordGraph, GraphStats]:
    """The keyword graph of ``rows``, merged into ``previous`` if given (which is left as it was).

    Nodes ``"{kind}:{text}"`` carry ``kind``, ``text``, ``count`` (problems mentioning it),
    ``used`` (times drawn into a combination) and ``first_seen`` (ds); merging adds counts and
    keeps ``used`` and ``first_seen``. Every pair of keywords of one problem gets +1 weight; each
    stated relation adds ``relation_weight`` and its label (normalized like a keyword) to the edge's
    sorted ``relations``.
    ``problems`` on an edge counts the problems that contributed to it. Relation endpoints are
    resolved after all keywords are in, so they may name keywords of other problems; when the text
    exists under several kinds, this problem's own keyword wins, then the order of ``KINDS``.
    ``attrs`` holds ``ds`` and the cumulative ``problems``.

    Works over Arrow columns in passes of ``BATCH_ROWS`` rows: only each batch's distinct strings
    become Python objects (to normalize them). Pairs are counted by a sparse matrix product, never
    listed one by one; the previous night's edges are summed in by their index pairs.
    """
    stats = GraphStats(ds=ds)
    table = _keyword_table(rows)
    stats.rows = table.num_rows
    keep = _first_occurrences(table.column("id"), stats)
    ordinal = np.cumsum(keep) - 1  # a kept row's problem number
    parsed = [
        _parse_batch(table.slice(start, BATCH_ROWS), keep[start : start + BATCH_ROWS], ordinal[start : start + BATCH_ROWS], stats)
        for start in range(0, table.num_rows, BATCH_ROWS)
    ]
    del table

    previous_names = previous.names if previous is not None else pa.array([], pa.string())
    names = pc.unique(pa.concat_arrays([previous_names, *(batch.names for batch in parsed)]))
    names = names.take(pc.sort_indices(names))
    n = len(names)
    # Every (problem, node) once, sorted by problem then node, as keys problem * n + node.
    member_keys = np.concatenate(
        [np.empty(0, np.int64)]
        + [
            np.unique(batch.problem * n + np.asarray(pc.index_in(batch.names, value_set=names), dtype=np.int64)[batch.code])
            for batch in parsed
        ]
    )
    member_problem, member_node = np.divmod(member_keys, n) if n else (member_keys, member_keys)
    relations = pa.concat_tables([batch.relations for batch in parsed]) if parsed else _empty_relations()
    del parsed

    count = np.bincount(member_node, minlength=n).astype(np.int64)
    contributions = [_cooccurrence(member_problem, member_node, n)]
    relation_edges, labels = _resolve_relations(relations, names, member_keys, relation_weight, stats)
    contributions.append(relation_edges)
    del member_keys, member_problem, member_node, relations
    nodes, used = _node_columns(names, ds, previous)
    if previous is not None:
        at = np.asarray(pc.index_in(previous.names, value_set=names), dtype=np.int64)  # old index -> new
        count[at] += previous.count
        previous_edges, previous_labels = _renumbered_edges(previous, at, n)
        contributions.insert(0, previous_edges)
        labels = pa.concat_tables([previous_labels, labels])

    keys, weight, problems = _sum_edges(contributions)
    labels = labels.group_by(["edge", "label"], use_threads=False).aggregate([])
    graph = KeywordGraph(
        nodes=nodes,
        count=count,
        used=used,
        source=(keys // n).astype(np.int32) if n else np.empty(0, np.int32),
        target=(keys % n).astype(np.int32) if n else np.empty(0, np.int32),
        weight=weight,
        problems=problems.astype(np.int64),
        relations=_lists_from_pairs(labels, keys),
        attrs={**(previous.attrs if previous is not None else {}), "ds": ds},
    )
    graph.attrs["problems"] = int(graph.attrs.get("problems", 0)) + stats.problems
    stats.nodes, stats.edges = graph.num_nodes, graph.num_edges
    stats.nodes_added = stats.nodes - (previous.num_nodes if previous is not None else 0)
    stats.edges_added = stats.edges - (previous.num_edges if previous is not None else 0)
    return graph, stats


def _node_columns(names: pa.Array, ds: str, previous: KeywordGraph | None) -> tuple[pa.Table, np.ndarray]:
    """(node, kind, text, first_seen) of the sorted ``names``, and ``used``: both carried over from
    ``previous`` for its nodes, new nodes first seen on ``ds`` and never used."""
    first_seen = pa.array([ds], pa.string())
    source = np.zeros(len(names), dtype=np.int64)  # 0: ds; i + 1: the previous graph's node i
    used = np.zeros(len(names), dtype=np.int64)
    if previous is not None:
        at = np.asarray(pc.index_in(previous.names, value_set=names), dtype=np.int64)
        first_seen = pa.concat_arrays([first_seen, _array(previous.nodes.column("first_seen")).cast(pa.string())])
        source[at] = np.arange(1, at.size + 1)
        used[at] = previous.used
    kind_text = pc.split_pattern(names, ":", max_splits=1)
    table = pa.table(
        {
            "node": names,
            "kind": pc.list_element(kind_text, 0),
            "text": pc.list_element(kind_text, 1),
            "first_seen": first_seen.take(source),
        }
    )
    return table, used


def _renumbered_edges(previous: KeywordGraph, at: np.ndarray, n: int) -> tuple[_Edges, pa.Table]:
    """The previous graph's edges as contributions under the new node numbering ``at``, and their (edge, label) pairs."""
    keys = at[previous.source] * n + at[previous.target]
    relations = _array(previous.relations)
    parents = np.asarray(pc.list_parent_indices(relations), dtype=np.int64)
    labels = pa.table({"edge": keys[parents], "label": pc.list_flatten(relations)})
    return _Edges(keys, previous.weight, previous.problems.astype(np.float64)), labels


@dataclass
class _Batch:
    """One batch's kept keywords and relations, problems numbered over the whole input."""

    problem: np.ndarray  # int64 problem number of each usable keyword (repeats are merged by build_graph)
    code: np.ndarray  # index into names
    names: pa.Array  # the batch's distinct node ids
    relations: pa.Table  # problem, head, relation, tail: distinct per problem, valid, of non-empty problems


@dataclass
class _Edges:
    """Contributions to edges: key source * n + target, weight, problems."""

    key: np.ndarray
    weight: np.ndarray
    problems: np.ndarray


def _keyword_table(rows: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
    """The input as a table of ``_INPUT_SCHEMA``; a row to skip (a value of the wrong type, no id) has a null id."""
    if isinstance(rows, pa.Table):
        missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
        if missing:
            raise ValueError(f"keyword rows lack required column(s) {missing}; they have {rows.column_names}")
        return pa.Table.from_batches([_conform_batch(b) for b in rows.to_batches(max_chunksize=BATCH_ROWS)], schema=_INPUT_SCHEMA)
    batches: list[pa.RecordBatch] = []
    pending: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"keyword row {index} lacks required column(s) {missing}; it has {sorted(row)}")
        pending.append(_clean_row(row))
        if len(pending) == BATCH_ROWS:
            batches.append(pa.RecordBatch.from_pylist(pending, schema=_INPUT_SCHEMA))
            pending = []
    batches.append(pa.RecordBatch.from_pylist(pending, schema=_INPUT_SCHEMA))
    return pa.Table.from_batches(batches, schema=_INPUT_SCHEMA)


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Python row in the input schema: non-string keywords and relation fields become nulls
    (dropped; invalid), so do non-mapping relation entries, and a row with a non-list value gets a
    null id (skipped)."""
    values: dict[str, Any] = {name: row.get(name) for name in INPUT_COLUMNS}
    problem_id = values["id"]
    if not isinstance(problem_id, str) or any(v is not None and not isinstance(v, (list, tuple)) for k, v in values.items() if k != "id"):
        return dict.fromkeys(INPUT_COLUMNS)
    for column in KEYWORD_COLUMNS.values():
        if values[column] is not None:
            values[column] = [k if isinstance(k, str) else None for k in values[column]]
    if values["relations"] is not None:
        values["relations"] = [
            {f: e.get(f) if isinstance(e.get(f), str) else None for f in RELATION_FIELDS} if isinstance(e, Mapping) else None
            for e in values["relations"]
        ]
    return values


def _conform_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of a keyword table in ``_INPUT_SCHEMA``; a column that cannot be cast to its type
    skips the rows that have a value there (as a non-list value in a Python row does)."""
    skip = np.zeros(batch.num_rows, dtype=bool)
    columns = []
    for field_ in _INPUT_SCHEMA:
        if field_.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, field_.type))
            continue
        column = batch.column(field_.name)
        try:
            if not _castable(column.type, field_.type):
                raise pa.ArrowInvalid(f"{field_.name}: {column.type}")
            columns.append(column.cast(field_.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            skip |= np.asarray(column.is_valid())
            columns.append(pa.nulls(batch.num_rows, field_.type))
    if skip.any():
        columns[0] = pc.if_else(pa.array(skip), pa.scalar(None, pa.string()), columns[0])
    return pa.RecordBatch.from_arrays(columns, schema=_INPUT_SCHEMA)


def _castable(given: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column's values are what ``wanted`` holds (strings, lists of them), not merely convertible."""
    if pa.types.is_null(given):
        return True
    if pa.types.is_string(wanted):
        return pa.types.is_string(given) or pa.types.is_large_string(given)
    if pa.types.is_list(wanted):
        if not (pa.types.is_list(given) or pa.types.is_large_list(given)):
            return False
        return pa.types.is_struct(wanted.value_type) or _castable(given.value_type, wanted.value_type)
    return True


def _first_occurrences(ids: pa.ChunkedArray, stats: GraphStats) -> np.ndarray:
    """Which rows are kept: a usable id, the first row with that id."""
    usable = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False), dtype=bool)
    stats.rows_skipped = int(ids.length() - usable.sum())
    rows = np.flatnonzero(usable)
    codes = np.asarray(_array(ids).take(rows).dictionary_encode().indices, dtype=np.int64)
    _, first = np.unique(codes, return_index=True)
    stats.rows_duplicate = int(rows.size - first.size)
    keep = np.zeros(len(ids), dtype=bool)
    keep[rows[first]] = True
    return keep


def _normalized(values: pa.Array) -> pa.Array:
    """``normalize_keyword`` of each string (null where it is not usable), computed once per distinct string."""
    encoded = values.dictionary_encode()
    texts = pa.array([normalize_keyword(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return texts.take(encoded.indices)


def _parse_batch(batch: pa.Table, keep: np.ndarray, ordinal: np.ndarray, stats: GraphStats) -> _Batch:
    parsed = np.asarray(pc.fill_null(pc.greater(pc.utf8_length(batch.column("id")), 0), False), dtype=bool)
    names, rows = [], []
    for kind, column_name in KEYWORD_COLUMNS.items():
        column = _array(batch.column(column_name))
        parents = np.asarray(pc.list_parent_indices(column), dtype=np.int64)
        texts = _normalized(pc.list_flatten(column))
        usable = np.asarray(texts.is_valid())
        stats.keywords_dropped += int((~usable & parsed[parents]).sum())
        wanted = usable & keep[parents]
        names.append(pc.binary_join_element_wise(f"{kind}:", texts.filter(pa.array(wanted)), ""))
        rows.append(parents[wanted])
    node_names = pa.concat_arrays(names).dictionary_encode()
    row = np.concatenate(rows)
    nonempty = np.zeros(batch.num_rows, dtype=bool)
    nonempty[row] = True
    stats.problems += int(nonempty.sum())
    stats.rows_empty += int((keep & ~nonempty).sum())

    column = _array(batch.column("relations"))
    parents = np.asarray(pc.list_parent_indices(column), dtype=np.int64)
    entries = pc.list_flatten(column).flatten()  # head, relation, tail, null where the entry is null
    head, label, tail = (_normalized(e) for e in entries)
    valid = np.asarray(pc.and_(pc.and_(head.is_valid(), label.is_valid()), tail.is_valid()))
    stats.relations_invalid += int((~valid & parsed[parents]).sum())
    wanted = pa.array(valid & nonempty[parents])
    relations = (
        pa.table(
            {
                "problem": ordinal[parents][wanted.to_numpy(zero_copy_only=False)],
                "head": head.filter(wanted),
                "relation": label.filter(wanted),
                "tail": tail.filter(wanted),
            }
        )
        .group_by(["problem", "head", "relation", "tail"], use_threads=False)
        .aggregate([])
    )
    return _Batch(
        problem=ordinal[row],
        code=np.asarray(node_names.indices, dtype=np.int64),
        names=node_names.dictionary,
        relations=relations,
    )


def _empty_relations() -> pa.Table:
    return pa.table({"problem": pa.array([], pa.int64()), **{f: pa.array([], pa.string()) for f in RELATION_FIELDS}})


def _cooccurrence(problem: np.ndarray, node: np.ndarray, n: int) -> _Edges:
    """+1 weight and +1 problem per pair of keywords of a problem, from (problem, node) pairs sorted
    by problem: the upper triangle of MᵀM for the problem x keyword matrix M, whose entry (a, b)
    counts the problems holding both a and b. scipy's sparse product, ``PRODUCT_PROBLEMS`` rows of M
    at a time: its working memory grows with the squared keyword counts of the rows it multiplies."""
    from scipy import sparse  # imported by the task that needs it, not by every importer of this module

    shared = sparse.csr_array((n, n), dtype=np.int32)
    problems = int(problem[-1]) + 1 if problem.size else 0
    bounds = np.searchsorted(problem, np.append(np.arange(0, problems, PRODUCT_PROBLEMS), problems))
    for lo, hi in itertools.pairwise(bounds):
        rows = problem[lo:hi] - problem[lo]
        membership = sparse.csr_array(
            (np.ones(hi - lo, dtype=np.int32), node[lo:hi].astype(np.int32), np.searchsorted(rows, np.arange(rows[-1] + 2))),
            shape=(int(rows[-1]) + 1, n),
        )
        shared = shared + _upper_triangle(membership.T.tocsr() @ membership)
    counts = shared.data.astype(np.float64)
    return _Edges(_row_indices(shared).astype(np.int64) * n + shared.indices, counts, counts)


def _row_indices(matrix: Any) -> np.ndarray:
    """The row of each stored entry of a CSR matrix."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int32), np.diff(matrix.indptr))


def _upper_triangle(matrix: Any) -> Any:
    """The entries above the diagonal, as a CSR matrix of the same shape."""
    from scipy import sparse

    rows = _row_indices(matrix)
    upper = matrix.indices > rows
    return sparse.csr_array((matrix.data[upper], (rows[upper], matrix.indices[upper])), shape=matrix.shape)


def _resolve_relations(
    relations: pa.Table, names: pa.Array, member_keys: np.ndarray, relation_weight: float, stats: GraphStats
) -> tuple[_Edges, pa.Table]:
    """The stated relations as edge contributions, and their (edge, label) pairs."""
    n = len(names)
    problem = np.asarray(relations.column("problem"), dtype=np.int64)

    def resolve(texts: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """Each text's node index (-1: none) and whether it is the problem's own keyword."""
        found = np.full(problem.size, -1, dtype=np.int64)
        own = np.zeros(problem.size, dtype=bool)
        for kind in reversed(KINDS):  # the earliest kind is written last, so it wins
            index = np.asarray(
                pc.index_in(pc.binary_join_element_wise(f"{kind}:", texts, ""), value_set=names).fill_null(-1), dtype=np.int64
            )
            exists = index >= 0
            keys = problem * n + index
            at = np.minimum(np.searchsorted(member_keys, keys), max(member_keys.size - 1, 0))
            is_own = exists & (member_keys[at] == keys) if member_keys.size else np.zeros_like(exists)
            found = np.where(exists & ~own, index, found)  # a kind that exists, unless an own one is found
            found = np.where(is_own, index, found)
            own |= is_own
        return found, own

    head, head_own = resolve(relations.column("head"))
    tail, tail_own = resolve(relations.column("tail"))
    matched = (head >= 0) & (tail >= 0)
    applied = matched & (head != tail)
    stats.relations_unmatched += int((~matched).sum())
    stats.relations_invalid += int((matched & (head == tail)).sum())
    stats.relations += int(applied.sum())

    key = np.minimum(head, tail)[applied] * n + np.maximum(head, tail)[applied]
    # A problem counts once per edge: a pair of its own keywords was counted with the co-occurrence.
    new_for_problem = np.unique(np.stack([problem[applied], key])[:, ~(head_own & tail_own)[applied]], axis=1)[1]
    edges = _Edges(
        np.concatenate([key, new_for_problem]),
        np.concatenate([np.full(key.size, float(relation_weight)), np.zeros(new_for_problem.size)]),
        np.concatenate([np.zeros(key.size), np.ones(new_for_problem.size)]),
    )
    labels = pa.table({"edge": key, "label": relations.column("relation").filter(pa.array(applied))})
    return edges, labels


def _sum_edges(contributions: list[_Edges]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted distinct keys, summed weight, summed problems), one contribution at a time."""
    keys = np.unique(np.concatenate([c.key for c in contributions]))
    weight, problems = np.zeros(keys.size), np.zeros(keys.size)
    for c in contributions:
        at = np.searchsorted(keys, c.key)
        weight += np.bincount(at, weights=c.weight, minlength=keys.size)
        problems += np.bincount(at, weights=c.problems, minlength=keys.size)
    return keys, weight, problems


# -- persistence -------------------------------------------------------------------------------


def save_graph(store: Store, pipeline: str, ds: str, graph: KeywordGraph) -> dict[str, Any]:
    """Commit ``graph`` as the ``kg_nodes`` and ``kg_edges`` partitions of ``ds``; return counts and URLs.

    ``graph.json`` (networkx node-link, ``nx.node_link_graph(json.load(f))``) is written first
    (under ``{pipeline}/kg_graph/ds=.../``, beside the tables, not in one), then edges are committed, then nodes: the ``kg_nodes`` manifest
    is the commit point for the whole graph, so a reader that finds it finds the edges too. Both
    manifests carry the same ``version`` token, which :func:`load_graph` checks.
    """
    version = uuid.uuid4().hex[:12]
    meta = {"version": version, "graph": dict(graph.attrs), "nodes": graph.num_nodes, "edges": graph.num_edges}

    nodes_partition = store.partition(pipeline, NODES_STAGE, ds)
    edges_partition = store.partition(pipeline, EDGES_STAGE, ds)
    graph_path = store.side_path(pipeline, GRAPH_AREA, ds, GRAPH_FILE)
    _write_graph_json(store, graph_path, graph, {**graph.attrs, "version": version})
    # Edges named a slice at a time: the names of every edge at once would be most of the graph's memory.
    slices = (graph.edge_table(start, start + WRITE_ROWS) for start in range(0, graph.num_edges, WRITE_ROWS))
    edges_partition.commit([edges_partition.write_file(0, slices, EDGE_SCHEMA)], EDGE_SCHEMA, meta=meta)
    nodes_partition.write_and_commit(graph.node_table(), meta={**meta, "graph_file": store.url(graph_path)})
    return {
        "nodes": graph.num_nodes,
        "edges": graph.num_edges,
        "version": version,
        "nodes_url": nodes_partition.url,
        "edges_url": edges_partition.url,
        "graph_url": store.url(graph_path),
    }


def _write_graph_json(store: Store, path: str, graph: KeywordGraph, attrs: Mapping[str, Any]) -> None:
    """networkx's node-link JSON, one record a line, written ``WRITE_ROWS`` records at a time.

    Each chunk's lines are put together by Arrow's string kernels; only distinct strings (node
    names, kinds, dates) and non-empty relation lists go through Python's JSON encoder. Written
    locally into a temporary file renamed into place, on an object store as one upload that
    appears when it completes: either way a reader sees the old file or the new one.
    """
    store.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if is_local(store.fs) else path
    names = _json_strings(graph.names)  # each node's name as a JSON literal, shared by its edges
    chunks = range(0, max(graph.num_nodes, graph.num_edges), WRITE_ROWS)
    with store.fs.open(target, "wb") as fh:
        fh.write(f'{{"directed": false, "multigraph": false, "graph": {json.dumps(attrs, sort_keys=True, default=str)},\n'.encode())
        fh.write(b'"nodes": [\n')
        _write_lines(fh, (_node_lines(graph, names, slice(start, start + WRITE_ROWS)) for start in chunks if start < graph.num_nodes))
        fh.write(b'\n],\n"edges": [\n')
        _write_lines(fh, (_edge_lines(graph, names, slice(start, start + WRITE_ROWS)) for start in chunks if start < graph.num_edges))
        fh.write(b"\n]}\n")
    if target != path:
        store.fs.mv(target, path)  # rename(2)


def _node_lines(graph: KeywordGraph, names: pa.Array, window: slice) -> pa.Array:
    nodes = graph.nodes.slice(window.start, window.stop - window.start)
    return _json_objects(
        {
            "id": names[window],
            "kind": _json_strings(nodes.column("kind")),
            "text": _json_strings(nodes.column("text")),
            "count": _json_numbers(graph.count[window]),
            "used": _json_numbers(graph.used[window]),
            "first_seen": _json_strings(nodes.column("first_seen")),
        }
    )


def _edge_lines(graph: KeywordGraph, names: pa.Array, window: slice) -> pa.Array:
    return _json_objects(
        {
            "source": names.take(graph.source[window]),
            "target": names.take(graph.target[window]),
            "weight": _json_numbers(graph.weight[window]),
            "problems": _json_numbers(graph.problems[window]),
            "relations": _json_string_lists(graph.relations[window]),
        }
    )


def _json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each string as a JSON literal (null as ``null``), encoding each distinct value once."""
    encoded = _array(values).dictionary_encode()
    literals = pa.array([json.dumps(value) for value in encoded.dictionary.to_pylist()], pa.string())
    return literals.take(encoded.indices).fill_null("null")


def _json_numbers(values: np.ndarray) -> pa.Array:
    """Numbers as JSON: floats in their shortest exact form, keeping ``.0`` so they load as floats."""
    text = pa.array(values).cast(pa.string())
    if values.dtype.kind != "f":
        return text
    integral = pc.match_substring_regex(text, r"^-?[0-9]+$")
    return pc.if_else(integral, pc.binary_join_element_wise(text, ".0", ""), text)


def _json_string_lists(lists: pa.Array) -> pa.Array:
    """list<string> as JSON arrays: ``[]`` for the (many) empty ones, Python's encoder for the rest."""
    nonempty = pc.greater(pc.list_value_length(lists), 0)
    encoded = [json.dumps(labels) for labels in lists.filter(nonempty).to_pylist()]
    return pc.replace_with_mask(pa.nulls(len(lists), pa.string()).fill_null("[]"), nonempty, pa.array(encoded, pa.string()))


def _json_objects(fields: Mapping[str, pa.Array]) -> pa.Array:
    """One JSON object per row from columns of JSON values."""
    parts: list[pa.Array | str] = []
    for position, (key, values) in enumerate(fields.items()):
        parts += [("{" if position == 0 else ", ") + json.dumps(key) + ": ", values]
    return pc.binary_join_element_wise(*parts, "}", "")


def _write_lines(fh: BinaryIO, chunks: Iterator[pa.Array]) -> None:
    """The strings of every chunk, separated by ``,\\n``, straight from Arrow's buffers."""
    skip = 2  # the first line has no ",\n" before it
    for lines in chunks:
        lines = pc.binary_join_element_wise(",\n", lines, "")  # a fresh array: its data starts at offset 0
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1)
        fh.write(memoryview(lines.buffers()[2])[offsets[0] + skip : offsets[-1]])
        skip = 0


def load_graph(store: Store, pipeline: str, ds: str) -> KeywordGraph:
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
    return KeywordGraph.from_tables(nodes_partition.read(), edges_partition.read(), nodes_manifest.meta.get("graph", {}))


def latest_graph_before(store: Store, pipeline: str, ds: str) -> KeywordGraph | None:
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
