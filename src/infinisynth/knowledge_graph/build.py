"""Building the graph (:func:`build_graph`) from a night's keyword rows, merged into the previous night's."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infinisynth.knowledge_graph.graph import (
    INPUT_COLUMNS,
    INPUT_SCHEMA,
    KEYWORD_COLUMNS,
    KINDS,
    RELATION_FIELDS,
    REQUIRED_COLUMNS,
    GraphStats,
    KeywordGraph,
    lists_from_pairs,
    normalize_keyword,
    one_array,
)

# Rows parsed per pass, and problems per co-occurrence product: the working memory beyond the
# graph itself is bounded by these, not by the night.
BATCH_ROWS = 10_000
PRODUCT_PROBLEMS = 10_000


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
        relations=lists_from_pairs(labels, keys),
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
        first_seen = pa.concat_arrays([first_seen, one_array(previous.nodes.column("first_seen")).cast(pa.string())])
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
    relations = one_array(previous.relations)
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
    """The input as a table of ``INPUT_SCHEMA``; a row to skip (a value of the wrong type, no id) has a null id."""
    if isinstance(rows, pa.Table):
        missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
        if missing:
            raise ValueError(f"keyword rows lack required column(s) {missing}; they have {rows.column_names}")
        return pa.Table.from_batches([_conform_batch(b) for b in rows.to_batches(max_chunksize=BATCH_ROWS)], schema=INPUT_SCHEMA)
    batches: list[pa.RecordBatch] = []
    pending: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"keyword row {index} lacks required column(s) {missing}; it has {sorted(row)}")
        pending.append(_clean_row(row))
        if len(pending) == BATCH_ROWS:
            batches.append(pa.RecordBatch.from_pylist(pending, schema=INPUT_SCHEMA))
            pending = []
    batches.append(pa.RecordBatch.from_pylist(pending, schema=INPUT_SCHEMA))
    return pa.Table.from_batches(batches, schema=INPUT_SCHEMA)


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
    """A batch of a keyword table in ``INPUT_SCHEMA``; a column that cannot be cast to its type
    skips the rows that have a value there (as a non-list value in a Python row does)."""
    skip = np.zeros(batch.num_rows, dtype=bool)
    columns = []
    for field_ in INPUT_SCHEMA:
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
    return pa.RecordBatch.from_arrays(columns, schema=INPUT_SCHEMA)


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
    codes = np.asarray(one_array(ids).take(rows).dictionary_encode().indices, dtype=np.int64)
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
        column = one_array(batch.column(column_name))
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

    column = one_array(batch.column("relations"))
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
