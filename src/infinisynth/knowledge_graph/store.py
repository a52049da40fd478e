"""Persisting the graph: the ``kg_nodes`` and ``kg_edges`` partitions of a date, and ``graph.json`` beside them."""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.knowledge_graph.graph import (
    EDGE_SCHEMA,
    KeywordGraph,
    one_array,
)
from infinisynth.storage import PartitionNotFound, StorageError, Store, is_local

log = logging.getLogger(__name__)


NODES_STAGE = "kg_nodes"
EDGES_STAGE = "kg_edges"
GRAPH_FILE = "graph.json"
GRAPH_AREA = "kg_graph"  # graph.json per date, outside the kg_nodes table folder
# Edges named per write (Parquet and graph.json): bounds the working memory of a save.
WRITE_ROWS = 20_000


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
    encoded = one_array(values).dictionary_encode()
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
