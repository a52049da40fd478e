"""Partitioned Parquet storage on local disk and on a real S3-compatible server (moto over HTTP).

The S3 store is built the way tasks build it: ``store_for("s3://...", lookup)`` with the
``infinisynth_s3`` connection (access key pair + ``extra.endpoint_url``), so the connection to
s3fs mapping is exercised too. Where a test needs "another process" (a writer or reader on a
different worker) it uses a store on a fresh filesystem instance, with its own s3fs caches.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infinisynth.runner import Checkpoint, Passed, Rejected
from infinisynth.settings import DEFAULT_STORAGE_CONN, store_for
from infinisynth.storage import (
    MANIFEST,
    CorruptPartition,
    Partition,
    PartitionNotFound,
    SchemaMismatch,
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

    def list_names(self, partition: Partition) -> set[str]:
        """The file names really present in the partition's directory."""
        if self.kind == "file":
            directory = Path(partition.path)
            return {p.name for p in directory.iterdir()} if directory.exists() else set()
        assert self.s3 is not None
        prefix = self._key(partition.path) + "/"
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
    assert data_file.name in backend.list_names(part)  # the bytes are there ...

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
    names = backend.list_names(part)
    assert {f.name for f in gen1} <= names, "the replaced generation is kept one more commit"

    failed = _generation(part, "failed", [9])  # an attempt that died before committing
    assert part.read().column("text").to_pylist() == ["gen2"] * 6

    gen3 = _generation(part, "gen3", [5])
    part.commit(gen3, SCHEMA, {"attempt": 3})
    assert part.read().column("text").to_pylist() == ["gen3"] * 5
    names = backend.list_names(part)
    assert not ({f.name for f in gen1} & names), "two generations back: collected"
    assert not ({f.name for f in failed} & names), "never committed: collected"
    assert names == {MANIFEST} | {f.name for f in gen2} | {f.name for f in gen3}


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

    # ... and its next commit collects what it never saw being written.
    gen3 = _generation(first, "gen3", [1])
    first.commit(gen3, SCHEMA)
    assert backend.list_names(first) == {MANIFEST} | {f.name for f in gen2} | {f.name for f in gen3}
    assert not ({f.name for f in failed} & backend.list_names(first))
    assert second.read().column("text").to_pylist() == ["gen3"]


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
