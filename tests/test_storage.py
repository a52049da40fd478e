"""Partitioned Parquet storage on local disk and on a real S3-compatible server (moto over HTTP).

The S3 store is built the way tasks build it: ``store_for("s3://...", lookup)`` with the
``infinisynth_s3`` connection (access key pair + ``extra.endpoint_url``), so the connection to
s3fs mapping is exercised too. Where a test needs "another process" (a writer or reader on a
different worker) it uses a store on a fresh filesystem instance, with its own s3fs caches; where
it needs real concurrency (two runs committing one date), it starts real Python processes.
"""

from __future__ import annotations

import json
import logging
import posixpath
import random
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from infinisynth.runner import Checkpoint, Passed, Rejected
from infinisynth.settings import DEFAULT_STORAGE_CONN, store_for
from infinisynth.storage import (
    MANIFEST,
    CorruptPartition,
    Lease,
    LeaseLost,
    LeaseTimeout,
    Partition,
    PartitionNotFound,
    SchemaMismatch,
    SnapshotGone,
    Store,
)
from tests.support.s3 import S3Endpoint, moto_s3

SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.int32()), ("text", pa.string())])
DS = "2024-05-01"


def rows_table(shard: int, n: int, text: str = "hello", start: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": [f"s{shard}-r{i:06d}" for i in range(start, start + n)],
            "shard": pa.array([shard] * n, pa.int32()),
            "text": [text] * n,
        },
        schema=SCHEMA,
    )


# -- backends -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        yield endpoint


@dataclass
class Backend:
    """One place to keep tables, plus raw access to it that bypasses fsspec and the library."""

    kind: str
    root: str
    make_store: Callable[[], Store]  # each call: a new "process" (its own filesystem instance)
    s3: S3Endpoint | None = None
    local_dir: Path | None = None

    def _key(self, path: str) -> str:
        bucket, _, key = path.partition("/")
        assert self.s3 is not None and bucket == self.s3.bucket, path
        return key

    def list_names(self, partition: Partition, area: str = "table") -> set[str]:
        """The file names really present in the partition's folder in the table (what directory
        readers see), or in its ``staging`` or ``retired`` area."""
        path = {"table": partition.path, "staging": partition.staging_path, "retired": partition.retired_path}[area]
        if self.kind == "file":
            directory = Path(path)
            return {p.name for p in directory.iterdir()} if directory.exists() else set()
        assert self.s3 is not None
        prefix = self._key(path) + "/"
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=prefix)
        return {obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", [])}

    def put_bytes(self, path: str, data: bytes) -> None:
        """Overwrite a file out of band (bit rot, a stray tool), not through the store."""
        if self.kind == "file":
            Path(path).write_bytes(data)
        else:
            assert self.s3 is not None
            self.s3.client().put_object(Bucket=self.s3.bucket, Key=self._key(path), Body=data)

    def get_bytes(self, path: str) -> bytes:
        if self.kind == "file":
            return Path(path).read_bytes()
        assert self.s3 is not None
        return self.s3.client().get_object(Bucket=self.s3.bucket, Key=self._key(path))["Body"].read()

    def config(self) -> dict[str, Any]:
        """How a separate Python process opens this store: its root and storage options."""
        if self.kind == "file":
            return {"root": self.root, "options": {}}
        assert self.s3 is not None
        endpoint = self.s3
        return {
            "root": self.root,
            "options": {"key": endpoint.key, "secret": endpoint.secret, "client_kwargs": {"endpoint_url": endpoint.endpoint_url}},
        }

    def path_exists(self, path: str) -> bool:
        if self.kind == "file":
            return Path(path).exists()
        assert self.s3 is not None
        listing = self.s3.client().list_objects_v2(Bucket=self.s3.bucket, Prefix=self._key(path))
        return listing.get("KeyCount", 0) > 0


def _no_connections(conn_id: str) -> dict[str, Any] | None:
    return None


def _s3_backend(endpoint: S3Endpoint) -> Backend:
    root = f"s3://{endpoint.bucket}/t-{uuid.uuid4().hex[:10]}"
    looked_up: list[str] = []

    def lookup(conn_id: str) -> dict[str, Any] | None:
        looked_up.append(conn_id)
        return endpoint.connection() if conn_id == DEFAULT_STORAGE_CONN else None

    def make_store() -> Store:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # a fresh process has a fresh filesystem
        store = store_for(root, lookup)
        assert looked_up and looked_up[-1] == DEFAULT_STORAGE_CONN
        return store

    return Backend("s3", root, make_store, s3=endpoint)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    monkeypatch.delenv("INFINISYNTH_STORAGE_CONN", raising=False)
    if request.param == "file":
        root = f"file://{tmp_path / 'data'}"
        return Backend("file", root, lambda: store_for(root, _no_connections), local_dir=tmp_path / "data")
    return _s3_backend(request.getfixturevalue("s3_server"))


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make_store()


@pytest.fixture
def local_store(tmp_path: Path) -> Store:
    return store_for(f"file://{tmp_path / 'data'}", _no_connections)


# -- 1. round trip --------------------------------------------------------------------------------


def test_round_trip_preserves_rows_in_shard_order_and_records_the_manifest(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    # Shards finish in any order; one shard arrives as a stream of small batches.
    files = [
        part.write_table(2, rows_table(2, 5)),
        part.write_file(0, (b for t in [rows_table(0, 3), rows_table(0, 4, start=3)] for b in t.to_batches()), SCHEMA),
        part.write_table(1, rows_table(1, 6)),
    ]
    assert [f.rows for f in files] == [5, 7, 6]
    meta = {"run_id": "manual__1", "model": "tiny", "usage": {"teacher/generate": {"requests": 3}}}
    committed = part.commit(files, SCHEMA, meta)

    expected = pa.concat_tables([rows_table(0, 7), rows_table(1, 6), rows_table(2, 5)])
    table = part.read()
    assert table.schema.equals(SCHEMA)
    assert table.to_pylist() == expected.to_pylist()

    streamed = list(part.iter_batches(batch_size=4))
    assert max(b.num_rows for b in streamed) <= 4
    assert pa.Table.from_batches(streamed).to_pylist() == expected.to_pylist()
    assert part.read(columns=["id"]).column_names == ["id"]
    assert part.read(columns=["id"]).column("id").to_pylist() == expected.column("id").to_pylist()

    # What a reader in another process finds.
    manifest = backend.make_store().partition("demo", "generate", DS).manifest()
    assert manifest.rows == committed.rows == 18
    assert [f.rows for f in manifest.files] == [7, 6, 5]
    assert [f.name.split("-")[1] for f in manifest.files] == ["00000", "00001", "00002"]
    assert manifest.schema == SCHEMA.to_string(show_schema_metadata=False)
    assert "id: string" in manifest.schema and "shard: int32" in manifest.schema
    assert manifest.meta == meta
    assert manifest.created_at
    raw = json.loads(backend.get_bytes(part.manifest_path))
    assert raw["rows"] == 18 and raw["run_id"] == "manual__1"
    assert backend.list_names(part) == {MANIFEST} | {f.name for f in files}

    # The URL is something a person can paste: it points at the real directory / prefix.
    if backend.kind == "file":
        assert part.url == f"file://{backend.local_dir}/demo/generate/ds={DS}"
        assert Path(part.url.removeprefix("file://"), MANIFEST).is_file()
    else:
        assert part.url == f"{backend.root}/demo/generate/ds={DS}"
        assert backend.path_exists(part.url.removeprefix("s3://") + "/" + MANIFEST)
    assert repr(part) == f"Partition({part.url!r})"


def test_read_file_reads_one_shard(store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    first = part.write_table(0, rows_table(0, 3))
    second = part.write_table(1, rows_table(1, 2))
    part.commit([first, second], SCHEMA)
    assert part.read_file(second.name).to_pylist() == rows_table(1, 2).to_pylist()
    assert part.read_file(first.name, columns=["text", "id"]).column_names == ["text", "id"]


# -- 2. invisible until committed ------------------------------------------------------------------


def test_written_files_are_invisible_until_commit(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    data_file = part.write_table(0, rows_table(0, 4))
    assert data_file.name in backend.list_names(part, "staging")  # the bytes are there ...
    assert not backend.list_names(part)  # ... outside the table folder

    for reader in (part, backend.make_store().partition("demo", "generate", DS)):
        assert not reader.exists()  # ... but no reader sees a partition
        with pytest.raises(PartitionNotFound) as excinfo:
            reader.read()
        assert part.url in str(excinfo.value)
        with pytest.raises(PartitionNotFound, match="no committed partition"):
            list(reader.iter_batches())

    part.commit([data_file], SCHEMA)
    assert part.exists()
    assert part.read().num_rows == 4


# -- 3. re-commit, garbage collection ---------------------------------------------------------------


def _generation(part: Partition, label: str, sizes: list[int]) -> list:
    return [part.write_table(shard, rows_table(shard, n, text=label)) for shard, n in enumerate(sizes)]


def test_recommit_replaces_rows_and_collects_older_generations(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    gen1 = _generation(part, "gen1", [3, 4])
    part.commit(gen1, SCHEMA, {"attempt": 1})
    assert part.read().num_rows == 7

    gen2 = _generation(part, "gen2", [2, 2, 2])
    part.commit(gen2, SCHEMA, {"attempt": 2})
    table = part.read()
    assert table.column("text").to_pylist() == ["gen2"] * 6  # only the new rows, no duplicates
    assert len(set(table.column("id").to_pylist())) == 6
    assert part.manifest().meta == {"attempt": 2}
    assert backend.list_names(part) == {MANIFEST} | {f.name for f in gen2}, "directory readers see the new rows only"
    assert {f.name for f in gen1} <= backend.list_names(part, "retired"), "the replaced generation is kept one more commit"

    failed = _generation(part, "failed", [9])  # an attempt that died before committing
    assert part.read().column("text").to_pylist() == ["gen2"] * 6

    gen3 = _generation(part, "gen3", [5])
    part.commit(gen3, SCHEMA, {"attempt": 3})
    assert part.read().column("text").to_pylist() == ["gen3"] * 5
    names = {area: backend.list_names(part, area) for area in ("table", "staging", "retired")}
    assert not ({f.name for f in gen1} & set().union(*names.values())), "two generations back: collected"
    assert names["table"] == {MANIFEST} | {f.name for f in gen3}
    assert names["retired"] == {f.name for f in gen2}
    # A staged file may belong to a run that has yet to commit: it stays until older than any run lasts.
    assert {f.name for f in failed} <= names["staging"]
    part.collect_garbage(staged_older_than=0)
    assert not ({f.name for f in failed} & backend.list_names(part, "staging")), "never committed: collected"
    assert part.read().column("text").to_pylist() == ["gen3"] * 5


def test_recommit_from_another_process_is_seen_and_collected(backend: Backend) -> None:
    """Shards and commits of a re-run come from other workers than the ones that wrote before."""
    first = backend.make_store().partition("demo", "generate", DS)
    gen1 = _generation(first, "gen1", [3])
    first.commit(gen1, SCHEMA)
    assert first.read().num_rows == 3

    # A failed attempt on some worker, then a re-run committed by yet another worker.
    failed = _generation(backend.make_store().partition("demo", "generate", DS), "failed", [2])
    second = backend.make_store().partition("demo", "generate", DS)
    gen2 = _generation(second, "gen2", [4])
    second.commit(gen2, SCHEMA)

    # The first worker (which listed the partition when it committed) sees the new snapshot.
    assert first.read().column("text").to_pylist() == ["gen2"] * 4
    assert [b.num_rows for b in first.iter_batches()] == [4]
    assert first.manifest().rows == 4
    assert first.exists()

    # ... and its next commit retires what it never saw being committed, and leaves what it never
    # saw being written out of the table (collected once stale).
    gen3 = _generation(first, "gen3", [1])
    first.commit(gen3, SCHEMA)
    assert backend.list_names(first) == {MANIFEST} | {f.name for f in gen3}
    assert backend.list_names(first, "retired") == {f.name for f in gen2}
    assert second.read().column("text").to_pylist() == ["gen3"]
    backend.make_store().partition("demo", "generate", DS).collect_garbage(staged_older_than=0)
    assert not ({f.name for f in failed} & backend.list_names(first, "staging"))


# -- 4. a reader racing a writer --------------------------------------------------------------------


def test_reader_racing_a_writer_always_sees_one_whole_generation(backend: Backend) -> None:
    sizes = {"A": [700, 500, 300], "B": [400, 400]}  # N = 1500 rows of "A", M = 800 rows of "B"
    expected = {label: sum(n) for label, n in sizes.items()}
    writer = backend.make_store().partition("demo", "generate", DS)
    reader = backend.make_store().partition("demo", "generate", DS)  # another worker
    writer.commit(_generation(writer, "A", sizes["A"]), SCHEMA)

    stop = threading.Event()
    commits: list[str] = []
    errors: list[BaseException] = []

    def rewrite() -> None:
        try:
            label = "A"
            while not stop.is_set():
                label = "B" if label == "A" else "A"
                writer.commit(_generation(writer, label, sizes[label]), SCHEMA, {"label": label})
                commits.append(label)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=rewrite, daemon=True)
    thread.start()
    seen: dict[str, int] = {"A": 0, "B": 0}
    reads = 0
    deadline = time.monotonic() + (3.0 if backend.kind == "s3" else 2.0)
    try:
        while reads < 200 and (time.monotonic() < deadline or min(seen.values()) == 0) and not errors:
            if time.monotonic() > deadline + 10:
                break
            table = reader.read()
            reads += 1
            labels = set(table.column("text").to_pylist())
            assert len(labels) == 1, f"read {reads} mixed generations: {labels}"
            (label,) = labels
            assert table.num_rows == expected[label], f"read {reads}: partial {label} ({table.num_rows} rows)"
            assert len(set(table.column("id").to_pylist())) == table.num_rows
            seen[label] += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, f"the writer failed: {errors[0]!r}"
    assert not thread.is_alive()
    assert reads >= 20, f"only {reads} reads"
    assert len(commits) >= 3, f"the writer committed only {len(commits)} times while {reads} reads ran"
    assert seen["A"] and seen["B"], f"the reads never saw both generations: {seen} over {len(commits)} commits"


# -- 5. streaming -----------------------------------------------------------------------------------

STREAM_ROWS = 300_000
STREAM_BATCH = 1_000
TEXTS = [f"{i:03d} " + "lorem ipsum dolor sit amet " * 6 for i in range(97)]


def _stream_batches() -> Iterator[pa.RecordBatch]:
    for start in range(0, STREAM_ROWS, STREAM_BATCH):
        ids = range(start, start + STREAM_BATCH)
        yield pa.record_batch(
            [
                pa.array([f"row-{i:07d}" for i in ids]),
                pa.array([i % 64 for i in ids], pa.int32()),
                pa.array([TEXTS[i % 97] for i in ids]),
            ],
            schema=SCHEMA,
        )


class _PeakMemory:
    """Peak Arrow memory (a private proxy pool made the default) and peak Python heap."""

    def __enter__(self) -> _PeakMemory:
        self._previous = pa.default_memory_pool()
        self.pool = pa.proxy_memory_pool(self._previous)
        pa.set_memory_pool(self.pool)
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _, self.python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        pa.set_memory_pool(self._previous)
        self.arrow_peak = self.pool.max_memory()


def test_streaming_write_and_read_keep_memory_far_below_the_partition(local_store: Store) -> None:
    part = local_store.partition("demo", "generate", DS)
    with _PeakMemory() as writing:
        data_file = part.write_file(0, _stream_batches(), SCHEMA)
    part.commit([data_file], SCHEMA)
    assert data_file.rows == STREAM_ROWS

    with _PeakMemory() as streaming:
        rows = 0
        next_id = 0
        for batch in part.iter_batches(batch_size=4_096):
            ids = batch.column(0)
            assert ids[0].as_py() == f"row-{next_id:07d}" and ids[-1].as_py() == f"row-{next_id + batch.num_rows - 1:07d}"
            next_id += batch.num_rows
            rows += batch.num_rows
            del batch, ids
    assert rows == STREAM_ROWS

    with _PeakMemory() as materialized:
        full = part.read()
    full_bytes = full.nbytes
    assert full.num_rows == STREAM_ROWS and full_bytes > 50_000_000
    del full

    # The meter does see a whole partition when one is materialized ...
    assert materialized.arrow_peak >= full_bytes * 0.9
    # ... and streaming in either direction stays a small fraction of it.
    for phase, peak in (("write", writing), ("read", streaming)):
        assert peak.arrow_peak < full_bytes / 4, f"{phase}: Arrow peak {peak.arrow_peak:,} vs table {full_bytes:,}"
        assert peak.python_peak < full_bytes / 4, f"{phase}: Python peak {peak.python_peak:,} vs table {full_bytes:,}"


# -- 6. bad input -----------------------------------------------------------------------------------


def test_corrupt_data_file_names_the_file(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    good = part.write_table(0, rows_table(0, 3))
    bad = part.write_table(1, rows_table(1, 3))
    part.commit([good, bad], SCHEMA)
    bad_path = posixpath.join(part.path, bad.name)
    backend.put_bytes(bad_path, b"this is not parquet at all" * 10)

    bad_url = store.url(bad_path)
    reader = backend.make_store().partition("demo", "generate", DS)
    for read in (reader.read, lambda: list(reader.iter_batches()), lambda: reader.read_file(bad.name)):
        with pytest.raises(CorruptPartition) as excinfo:
            read()
        assert bad_url in str(excinfo.value)
    assert reader.read_file(good.name).num_rows == 3


def test_truncated_data_file_is_corrupt(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    data_file = part.write_table(0, rows_table(0, 5000, text="x" * 50))
    part.commit([data_file], SCHEMA)
    path = posixpath.join(part.path, data_file.name)
    backend.put_bytes(path, backend.get_bytes(path)[:-100])
    with pytest.raises(CorruptPartition, match=data_file.name):
        backend.make_store().partition("demo", "generate", DS).read()


def test_corrupt_manifest_names_the_manifest(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    part.commit([part.write_table(0, rows_table(0, 3))], SCHEMA)
    backend.put_bytes(part.manifest_path, b"{not json")
    reader = backend.make_store().partition("demo", "generate", DS)
    with pytest.raises(CorruptPartition) as excinfo:
        reader.read()
    assert store.url(part.manifest_path) in str(excinfo.value)
    # Binary junk, and valid JSON that is not a manifest, are just as corrupt.
    for junk in (b"\xff\xfe\x00\x81 binary", b'{"rows": 3}'):
        backend.put_bytes(part.manifest_path, junk)
        with pytest.raises(CorruptPartition, match=MANIFEST):
            backend.make_store().partition("demo", "generate", DS).manifest()
        with pytest.raises(CorruptPartition, match=MANIFEST):
            part.read()  # the worker that committed it, too


def test_reading_a_missing_column_names_it_and_the_present_ones(store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    part.commit([part.write_table(0, rows_table(0, 3))], SCHEMA)
    for read in (lambda: part.read(columns=["id", "nope"]), lambda: list(part.iter_batches(columns=["nope"]))):
        with pytest.raises(SchemaMismatch) as excinfo:
            read()
        message = str(excinfo.value)
        assert "nope" in message
        assert all(name in message for name in ("id", "shard", "text"))


def test_writing_rows_that_do_not_fit_the_schema_is_refused(store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    lacking = pa.table({"id": ["a"], "text": ["t"]})
    with pytest.raises(SchemaMismatch) as excinfo:
        part.write_table(0, lacking, SCHEMA)
    assert "shard" in str(excinfo.value) and part.url in str(excinfo.value)

    wrong_type = pa.table({"id": ["a"], "shard": ["not a number"], "text": ["t"]})
    with pytest.raises(SchemaMismatch) as excinfo:
        part.write_table(0, wrong_type, SCHEMA)
    assert part.url in str(excinfo.value)

    nested = pa.table({"id": ["a"], "shard": [1], "text": [[1, 2]]})
    with pytest.raises(SchemaMismatch):
        part.write_table(0, nested, SCHEMA)

    # Compatible data is cast, extra columns are dropped.
    extra = pa.table({"text": ["t"], "id": ["a"], "shard": pa.array([7], pa.int64()), "junk": [1.5]})
    part.commit([part.write_table(0, extra, SCHEMA)], SCHEMA)
    assert part.read().to_pylist() == [{"id": "a", "shard": 7, "text": "t"}]
    assert part.read().schema.equals(SCHEMA)


def test_read_file_of_a_missing_file_raises_file_not_found(store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    part.commit([part.write_table(0, rows_table(0, 1))], SCHEMA)
    with pytest.raises(FileNotFoundError):
        part.read_file("part-00009-deadbeef.parquet")


# -- 7. empty partitions ----------------------------------------------------------------------------


def test_empty_partition_reads_back_empty_with_its_schema(backend: Backend, store: Store) -> None:
    part = store.partition("demo", "generate", DS)
    empty = part.write_table(0, SCHEMA.empty_table())
    assert empty.rows == 0
    part.commit([empty], SCHEMA)
    assert part.exists()
    table = backend.make_store().partition("demo", "generate", DS).read()
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMA)
    assert part.read(columns=["text"]).schema.names == ["text"]
    assert sum(b.num_rows for b in part.iter_batches()) == 0
    assert part.manifest().rows == 0

    # An empty shard next to full ones contributes nothing and breaks nothing.
    part.commit([part.write_table(0, SCHEMA.empty_table()), part.write_table(1, rows_table(1, 2))], SCHEMA)
    assert part.read().to_pylist() == rows_table(1, 2).to_pylist()


# -- 8. checkpoints ---------------------------------------------------------------------------------


def test_checkpoint_round_trip_truncated_chunk_and_clear(backend: Backend, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    directory = store.work_dir("demo", "generate", DS, 3)
    checkpoint = Checkpoint(store, directory)
    assert checkpoint.load() == ({}, {})

    usage1 = {"teacher/generate": {"requests": 2, "failed_requests": 0, "prompt_tokens": 10, "completion_tokens": 5}}
    usage2 = {"teacher/generate": {"requests": 1, "failed_requests": 1, "prompt_tokens": 4, "completion_tokens": 0}}
    checkpoint.save(
        [("r1:k", Passed([{"id": "o1", "text": "ünïcode"}])), ("r2:k", Rejected("bad_json", "no JSON", raw_answer="{"))],
        usage1,
    )
    checkpoint.save([("r3:k", Passed([{"id": "o3"}, {"id": "o4"}]))], usage2)
    checkpoint.save([], usage2)  # nothing finished: nothing written

    outcomes, usage = Checkpoint(backend.make_store(), directory).load()  # a retry on another worker
    assert outcomes == {
        "r1:k": Passed([{"id": "o1", "text": "ünïcode"}]),
        "r2:k": Rejected("bad_json", "no JSON", raw_answer="{"),
        "r3:k": Passed([{"id": "o3"}, {"id": "o4"}]),
    }
    assert usage["teacher/generate"]["requests"] == 3
    assert usage["teacher/generate"]["failed_requests"] == 1
    assert usage["teacher/generate"]["total_tokens"] == 19

    # A chunk cut short by a kill: ignored with a warning, the others still load.
    chunk = sorted(p for p in store.fs.ls(directory, detail=False) if p.endswith(".parquet"))[-1]
    backend.put_bytes(chunk, backend.get_bytes(chunk)[:20])
    with caplog.at_level(logging.WARNING, logger="infinisynth.runner"):
        outcomes, usage = Checkpoint(backend.make_store(), directory).load()
    assert set(outcomes) == {"r1:k", "r2:k"}
    assert usage["teacher/generate"]["requests"] == 2
    assert any(
        "ignoring unreadable checkpoint chunk" in r.getMessage() and posixpath.basename(chunk) in r.getMessage() for r in caplog.records
    )

    checkpoint.clear()
    assert not backend.path_exists(directory)
    assert Checkpoint(backend.make_store(), directory).load() == ({}, {})
    checkpoint.clear()  # clearing twice is fine


# -- 9. secrets ------------------------------------------------------------------------------------


def test_store_repr_does_not_leak_the_secret(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFINISYNTH_STORAGE_CONN", raising=False)
    backend = _s3_backend(s3_server)
    store = backend.make_store()
    assert store.fs.storage_options["secret"] == s3_server.secret  # the secret did reach s3fs ...
    assert store.fs.storage_options["client_kwargs"]["endpoint_url"] == s3_server.endpoint_url
    part = store.partition("demo", "generate", DS)
    part.commit([part.write_table(0, rows_table(0, 1))], SCHEMA)  # ... and it works
    for text in (repr(store), str(store), repr(part), part.url, f"{store!r} {part!r}"):
        assert s3_server.secret not in text
        assert s3_server.key not in text
    with pytest.raises(PartitionNotFound) as excinfo:
        store.partition("demo", "generate", "1999-01-01").read()
    assert s3_server.secret not in str(excinfo.value)


# -- 10. two runs of one date at once (separate processes) ---------------------------------------------

# One run of a date in its own Python process. For each job it reads on stdin it writes the shards
# (pausing between them, as mapped tasks finish at different times), commits them, and answers with
# the outcome and when its writes began and its commit ended.
_RUN = r"""
import json, random, sys, time
import pyarrow as pa
from infinisynth.storage import Store

config = json.loads(sys.stdin.readline())
store = Store(config["root"], config["options"])
store.lease_wait = 60.0
schema = pa.schema([("id", pa.string()), ("shard", pa.int32()), ("text", pa.string())])
print("READY", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pauses = random.Random(job["seed"])
    time.sleep(job["offset"])
    began = time.time()
    part = store.partition("demo", "generate", job["ds"])
    files = []
    for shard, n in enumerate(job["sizes"]):
        ids = [f"{job['label']}-s{shard}-r{i}" for i in range(n)]
        rows = pa.table({"id": ids, "shard": pa.array([shard] * n, pa.int32()), "text": [job["label"]] * n}, schema=schema)
        files.append(part.write_table(shard, rows, schema))
        time.sleep(pauses.uniform(0, job["pause"]))
    try:
        reply = {"ok": True, "rows": part.commit(files, schema, {"run_id": job["label"]}).rows}
    except Exception as exc:
        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({**reply, "began": began, "ended": time.time()}), flush=True)
"""

CONCURRENT_TRIALS = 10


@contextmanager
def run_process(backend: Backend, log_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that runs jobs of ``_RUN`` on the backend's store; its log goes to ``log_path``."""
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-c", _RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(backend.config()) + "\n")
            process.stdin.flush()
            assert process.stdout.readline().strip() == "READY", log_path.read_text()
            yield process
        finally:
            process.stdin.close()  # the process's way out
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_two_runs_committing_one_date_at_once_leave_one_whole_run(backend: Backend, tmp_path: Path) -> None:
    """Two processes (two schedulers, a manual run racing the nightly one) write shards of the same
    date and commit them, with random start offsets. Both commits succeed (the later one waits for
    the earlier one's lease); the partition then holds one run's rows, whole, never a mix; its
    manifest names only files that are there, and its folder holds nothing else."""
    rng = random.Random(20240501)
    dates = ["2024-06-01", "2024-06-02", "2024-06-03"]  # trials come back to a date: they race a re-commit too
    at_once = 0
    store = backend.make_store()  # a third process: it only reads
    with run_process(backend, tmp_path / "run-a.log") as run_a, run_process(backend, tmp_path / "run-b.log") as run_b:
        runs = {"A": run_a, "B": run_b}
        for trial in range(CONCURRENT_TRIALS):
            ds = dates[trial % len(dates)]
            jobs = {
                name: {
                    "ds": ds,
                    "label": f"t{trial}{name}",
                    "sizes": [rng.randint(1, 30) for _ in range(rng.randint(2, 5))],
                    "seed": rng.random(),
                    "offset": rng.uniform(0, 0.05),
                    "pause": 0.01,
                }
                for name in runs
            }
            if sum(jobs["A"]["sizes"]) == sum(jobs["B"]["sizes"]):
                jobs["B"]["sizes"].append(1)  # the row count tells the runs apart
            for name, process in runs.items():
                assert process.stdin is not None
                process.stdin.write(json.dumps(jobs[name]) + "\n")
                process.stdin.flush()
            replies = {name: json.loads(process.stdout.readline() if process.stdout else "{}") for name, process in runs.items()}
            for name, reply in replies.items():
                assert reply.get("ok"), f"trial {trial}: run {name} failed: {reply.get('error')}"
            a, b = replies["A"], replies["B"]
            at_once += a["began"] < b["ended"] and b["began"] < a["ended"]

            part = store.partition("demo", "generate", ds)
            manifest = part.manifest()
            named = {f.name for f in manifest.files}
            present = backend.list_names(part)
            assert named <= present, f"trial {trial}: the manifest names missing files {sorted(named - present)}"
            assert present == {MANIFEST} | named, f"trial {trial}: the table folder holds files no manifest names"
            table = part.read()
            labels = set(table.column("text").to_pylist())
            assert len(labels) == 1, f"trial {trial}: rows of several runs {labels}"
            (label,) = labels
            winner = label[-1]
            assert label == jobs[winner]["label"], f"trial {trial}: rows of an earlier trial ({label})"
            assert table.num_rows == manifest.rows == sum(jobs[winner]["sizes"]) == replies[winner]["rows"]

    assert at_once >= CONCURRENT_TRIALS // 2, f"only {at_once} of {CONCURRENT_TRIALS} trials ran the two runs at once"
    committed = sum(store.partition("demo", "generate", ds).manifest().rows for ds in dates)
    assert pads.dataset(f"{store.root}/demo/generate", partitioning="hive", filesystem=store.fs).count_rows() == committed


# -- 11. leases -----------------------------------------------------------------------------------------


def test_a_stale_lease_is_taken_over_and_its_holder_publishes_nothing(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    crashed = Lease(backend.make_store().partition("demo", "generate", DS), "nightly run (crashed)", ttl=0.5)
    crashed.acquire(wait=0)  # ... and its process died holding it
    part = backend.make_store().partition("demo", "generate", DS)
    files = _generation(part, "rerun", [3])
    time.sleep(0.6)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="infinisynth.storage"):
        part.commit(files, SCHEMA)
    assert time.monotonic() - started < 5, "a stale lease is taken over, not waited for"
    assert any("took over the commit lease of nightly run (crashed)" in r.getMessage() for r in caplog.records)
    assert part.read().column("text").to_pylist() == ["rerun"] * 3

    # Had the holder only stalled (a zombie task), it finds its lease gone when it wakes: a commit
    # renews its lease before it publishes, so it stops there.
    with pytest.raises(LeaseLost, match="nightly run"):
        crashed.renew()


def test_a_live_lease_makes_a_commit_wait_a_bounded_time(backend: Backend) -> None:
    holder = backend.make_store().partition("demo", "generate", DS)
    store = backend.make_store()
    store.lease_wait = 1.0
    part = store.partition("demo", "generate", DS)
    part.commit(_generation(part, "nightly", [2]), SCHEMA)
    files = _generation(part, "manual", [5])

    with holder.lease("nightly run (committing)", ttl=60):
        started = time.monotonic()
        with pytest.raises(LeaseTimeout) as excinfo:
            part.commit(files, SCHEMA)
        waited = time.monotonic() - started
    assert 1.0 <= waited < 5
    message = str(excinfo.value)
    assert part.url in message and "nightly run (committing)" in message and "until" in message and "waiting 1s" in message
    # Nothing moved: the committed run stands, the new files are still staged.
    assert part.read().column("text").to_pylist() == ["nightly"] * 2
    assert backend.list_names(part) == {MANIFEST} | {f.name for f in part.manifest().files}
    assert {f.name for f in files} <= backend.list_names(part, "staging")

    # A holder that finishes within the wait lets the commit through.
    store.lease_wait = 30.0
    held = threading.Event()

    def hold_briefly() -> None:
        with holder.lease("nightly run (finishing)", ttl=60):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    assert held.wait(10)
    started = time.monotonic()
    part.commit(files, SCHEMA)
    waited = time.monotonic() - started
    thread.join(timeout=10)
    assert waited >= 0.3, "the commit did not wait for the holder"
    assert part.read().column("text").to_pylist() == ["manual"] * 5


# -- 12. a replacement says what it replaces ------------------------------------------------------------


def test_a_commit_that_replaces_a_partition_logs_what_it_replaces(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    nightly = backend.make_store().partition("demo", "generate", DS)
    with caplog.at_level(logging.INFO, logger="infinisynth.storage"):
        first = nightly.commit(_generation(nightly, "nightly", [3, 4]), SCHEMA, {"run_id": "scheduled__2024-05-01T00:00:00+00:00"})
    assert not [r for r in caplog.records if "replaced" in r.getMessage()], "a first commit replaces nothing"
    caplog.clear()

    manual = backend.make_store().partition("demo", "generate", DS)
    with caplog.at_level(logging.INFO, logger="infinisynth.storage"):
        second = manual.commit(_generation(manual, "manual", [5]), SCHEMA, {"run_id": "manual__2024-05-01T09:00:00+00:00"})
    (record,) = [r for r in caplog.records if "replaced" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert manual.url in message
    assert f"committed at {first.created_at}" in message and "scheduled__2024-05-01T00:00:00+00:00" in message
    assert "(7 rows, 2 files) with 5 rows, 1 files" in message
    assert second.committed_by.startswith("run manual__2024-05-01T09:00:00+00:00")
    assert backend.make_store().partition("demo", "generate", DS).manifest().committed_by == second.committed_by


# -- 13. readers that started before a re-commit ---------------------------------------------------------


def test_a_stream_begun_before_a_recommit_finishes_on_its_snapshot(backend: Backend) -> None:
    writer = backend.make_store().partition("demo", "generate", DS)
    reader = backend.make_store().partition("demo", "generate", DS)
    old = _generation(writer, "old", [1500, 1200, 900])
    writer.commit(old, SCHEMA)

    stream = reader.iter_batches(batch_size=100)
    first = next(stream)
    writer.commit(_generation(writer, "new", [10]), SCHEMA)
    assert not ({f.name for f in old} & backend.list_names(writer)), "the replaced files left the table folder"

    table = pa.Table.from_batches([first, *stream])
    assert table.column("text").to_pylist() == ["old"] * 3600
    assert len(set(table.column("id").to_pylist())) == 3600
    assert reader.read_file(old[1].name).num_rows == 1200  # a shard handed out before the re-commit
    assert reader.read().column("text").to_pylist() == ["new"] * 10


def test_a_stream_that_lost_its_snapshot_says_so_and_a_new_read_starts_over(backend: Backend) -> None:
    writer = backend.make_store().partition("demo", "generate", DS)
    reader = backend.make_store().partition("demo", "generate", DS)
    writer.commit(_generation(writer, "old", [300, 300]), SCHEMA)
    stream = reader.iter_batches(batch_size=100)
    next(stream)
    writer.commit(_generation(writer, "newer", [4]), SCHEMA)
    writer.commit(_generation(writer, "newest", [6]), SCHEMA)  # the "old" files are collected now
    with pytest.raises(SnapshotGone, match="re-committed twice"):
        list(stream)
    assert reader.read().column("text").to_pylist() == ["newest"] * 6
    assert sum(b.num_rows for b in reader.iter_batches()) == 6


# -- 14. a commit that fails half way -------------------------------------------------------------------


class _Unprintable:
    def __str__(self) -> str:
        raise ValueError("this value has no text")


def test_a_commit_that_fails_after_moving_files_leaves_the_table_as_its_manifest_says(backend: Backend) -> None:
    part = backend.make_store().partition("demo", "generate", DS)
    gen1 = _generation(part, "gen1", [3])
    part.commit(gen1, SCHEMA)
    gen2 = _generation(part, "gen2", [2, 2])
    with pytest.raises(ValueError, match="no text"):  # the manifest cannot be written: its meta breaks
        part.commit(gen2, SCHEMA, {"bad": _Unprintable()})
    assert backend.list_names(part) == {MANIFEST} | {f.name for f in gen1}, "directory readers see the committed rows only"
    assert part.read().column("text").to_pylist() == ["gen1"] * 3

    # The retry finds the files where the failed attempt left them.
    part.commit(gen2, SCHEMA, {"attempt": 2})
    assert part.read().column("text").to_pylist() == ["gen2"] * 4
    assert backend.list_names(part) == {MANIFEST} | {f.name for f in gen2}
