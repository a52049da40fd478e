"""Partitioned Parquet on any fsspec URL (``file://`` by default, ``s3://`` in production).

Layout: ``{root}/{pipeline}/{stage}/ds={YYYY-MM-DD}/part-{shard}-{token}.parquet`` plus
``_manifest.json``. Rejected rows of a stage live in their own table at
``{root}/{pipeline}/rejected/{stage}/ds=.../``.

Visibility rule: a partition exists for readers only through its manifest, which is written last
and atomically (a rename on local disk, a single PUT on S3) and names the exact data files. Data
files carry a fresh token per write, so a re-run never overwrites a file a reader may be reading;
files of the previous generation are kept until the next commit, which lets a reader that started
before a swap finish on the snapshot it began with.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
ROW_GROUP_ROWS = 10_000
READ_RETRIES = 3


class StorageError(RuntimeError):
    """Base class: every message names the URL it is about."""


class PartitionNotFound(StorageError):
    """No committed manifest at that partition (never written, or still being written)."""


class CorruptPartition(StorageError):
    """A data file or manifest cannot be read as what it claims to be."""


class SchemaMismatch(StorageError):
    """The data lacks columns the reader needs, or has them with other types."""


@dataclass(frozen=True)
class DataFile:
    """One written Parquet file, relative to its partition: what XCom carries between tasks."""

    name: str
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> DataFile:
        return cls(name=str(value["name"]), rows=int(value["rows"]))


@dataclass
class Manifest:
    files: list[DataFile]
    schema: str
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> str:
        body = {
            "files": [f.to_dict() for f in self.files],
            "rows": self.rows,
            "schema": self.schema,
            "created_at": self.created_at,
            **self.meta,
        }
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        files = [DataFile.from_dict(f) for f in body.pop("files")]
        body.pop("rows", None)
        schema = body.pop("schema")
        created_at = body.pop("created_at", "")
        return cls(files=files, schema=schema, meta=body, created_at=created_at)


def partition_key(ds: str) -> str:
    return f"ds={ds}"


class Store:
    """The root of all pipeline data, on one filesystem."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root_url = root.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:  # never shows storage options: they may hold secrets
        return f"Store({self.root_url!r})"

    def url(self, path: str) -> str:
        """A path on this store as a URL a person can paste."""
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path}" if protocol != "file" else f"file://{path}"

    def partition(self, pipeline: str, stage: str, ds: str) -> Partition:
        return Partition(self, posixpath.join(self.root, pipeline, stage, partition_key(ds)))

    def rejected(self, pipeline: str, stage: str, ds: str) -> Partition:
        return Partition(self, posixpath.join(self.root, pipeline, "rejected", stage, partition_key(ds)))

    def committed_dates(self, pipeline: str, stage: str, *, before: str | None = None, at_or_before: str | None = None) -> list[str]:
        """Dates of ``stage``'s committed partitions, newest first, optionally only those before
        (or at or before) a date. Folders without a manifest (a crashed first write) do not count."""
        root = posixpath.join(self.root, pipeline, stage)
        self.fs.invalidate_cache(root)
        try:
            names = [posixpath.basename(p) for p in self.fs.ls(root, detail=False)]
        except FileNotFoundError:
            return []
        dates = sorted((n[3:] for n in names if n.startswith("ds=")), reverse=True)
        if before is not None:
            dates = [d for d in dates if d < before]
        if at_or_before is not None:
            dates = [d for d in dates if d <= at_or_before]
        return [d for d in dates if self.partition(pipeline, stage, d).exists()]

    def work_dir(self, pipeline: str, stage: str, ds: str, shard: int) -> str:
        """Scratch space for a shard's checkpoints; cleared when the stage commits."""
        return posixpath.join(self.root, pipeline, "_work", stage, partition_key(ds), f"shard-{shard:05d}")

    def write_json(self, path: str, value: Any) -> None:
        self._atomic_write(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        try:
            with self.fs.open(path, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptPartition(f"{self.url(path)}: not valid JSON ({exc})") from exc

    def _atomic_write(self, path: str, data: bytes) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if is_local(self.fs):
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, path)  # rename(2): readers see the old file or the new, never half
        else:
            self.fs.pipe_file(path, data)  # one PUT: object stores publish it whole


class Partition:
    """One ``ds=`` partition of one stage's table."""

    def __init__(self, store: Store, path: str):
        self.store = store
        self.fs = store.fs
        self.path = path

    def __repr__(self) -> str:
        return f"Partition({self.url!r})"

    @property
    def url(self) -> str:
        return self.store.url(self.path)

    @property
    def manifest_path(self) -> str:
        return posixpath.join(self.path, MANIFEST)

    # -- writing -------------------------------------------------------------------------------

    def write_file(
        self,
        shard: int,
        batches: Iterable[pa.RecordBatch | pa.Table],
        schema: pa.Schema,
        *,
        metadata: dict[str, str] | None = None,
    ) -> DataFile:
        """Stream batches into a new data file; invisible to readers until :meth:`commit`.

        Memory stays at one row group however many batches come in.
        """
        name = f"part-{shard:05d}-{uuid.uuid4().hex[:8]}.parquet"
        final = posixpath.join(self.path, name)
        target = final if not is_local(self.fs) else f"{final}.inprogress"
        self.fs.makedirs(self.path, exist_ok=True)
        if metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        rows = 0
        with self.fs.open(target, "wb") as sink, pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                table = _conform(table, schema, where=self.url)
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                rows += table.num_rows
        if target != final:
            self.fs.mv(target, final)
        return DataFile(name=name, rows=rows)

    def write_table(self, shard: int, table: pa.Table, schema: pa.Schema | None = None) -> DataFile:
        schema = schema or table.schema
        return self.write_file(shard, table.to_batches(max_chunksize=ROW_GROUP_ROWS), schema)

    def commit(self, files: Sequence[DataFile], schema: pa.Schema, meta: dict[str, Any] | None = None) -> Manifest:
        """Publish exactly ``files`` as this partition, then collect garbage.

        Data files named by neither the new manifest nor the one it replaces are deleted: they are
        leftovers of failed attempts. The replaced generation survives one more commit so that a
        reader which started on it can finish.
        """
        previous = self._manifest_or_none()
        manifest = Manifest(
            files=sorted(files, key=lambda f: f.name),
            schema=schema.to_string(show_schema_metadata=False),
            meta=dict(meta or {}),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.store._atomic_write(self.manifest_path, manifest.to_json().encode())
        keep = {f.name for f in manifest.files}
        if previous is not None:
            keep |= {f.name for f in previous.files}
        for path in self._data_paths():
            if posixpath.basename(path) not in keep:
                self.fs.rm_file(path)
        return manifest

    def write_and_commit(self, table: pa.Table, meta: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> Manifest:
        """Convenience for small, single-file partitions (reports, graphs, vocabularies)."""
        schema = schema or table.schema
        return self.commit([self.write_table(0, table, schema)], schema, meta)

    # -- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        self.fs.invalidate_cache(self.path)  # another worker may have committed since we listed
        return self.fs.exists(self.manifest_path)

    def manifest(self) -> Manifest:
        manifest = self._manifest_or_none()
        if manifest is None:
            raise PartitionNotFound(f"{self.url}: no committed partition here (no {MANIFEST})")
        return manifest

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 4_096) -> Iterator[pa.RecordBatch]:
        """Stream the committed snapshot in record batches; memory is one batch, not the partition."""
        manifest = self.manifest()
        for data_file in manifest.files:
            yield from self._iter_file(data_file, columns, batch_size)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole partition as one table (use :meth:`iter_batches` for large ones).

        If a concurrent re-run swaps the manifest and collects the files this read began with,
        the read starts over on the new snapshot (a bounded number of times).
        """
        for attempt in range(READ_RETRIES):
            manifest = self.manifest()
            try:
                tables = [
                    pa.Table.from_batches(list(self._iter_file(f, columns, 65_536)), schema=None) if f.rows else None
                    for f in manifest.files
                ]
            except FileNotFoundError:
                if attempt == READ_RETRIES - 1:
                    raise
                log.info("%s changed while being read; reading the new snapshot", self.url)
                continue
            tables = [t for t in tables if t is not None]
            if not tables:
                return _empty_from_manifest(self, manifest, columns)
            return pa.concat_tables(tables, promote_options="default")
        raise AssertionError("unreachable")

    def read_file(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One data file of this partition (a shard), e.g. the input of a mapped task."""
        path = posixpath.join(self.path, name)
        with self._parquet(path) as parquet:
            try:
                table = parquet.read(columns=self._checked_columns(parquet, path, columns))
            except (pa.ArrowInvalid, OSError) as exc:
                raise CorruptPartition(f"{self.store.url(path)}: not a readable Parquet file ({exc})") from exc
        return table

    @contextmanager
    def _parquet(self, path: str) -> Iterator[pq.ParquetFile]:
        """A data file opened for reading; a file that is not Parquet is a :class:`CorruptPartition`."""
        with self.fs.open(path, "rb") as fh:
            try:
                parquet = pq.ParquetFile(fh)
            except (pa.ArrowInvalid, OSError) as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise CorruptPartition(f"{self.store.url(path)}: not a readable Parquet file ({exc})") from exc
            yield parquet

    def _checked_columns(self, parquet: pq.ParquetFile, path: str, columns: Sequence[str] | None) -> list[str] | None:
        if columns is None:
            return None
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise SchemaMismatch(f"{self.store.url(path)}: missing column(s) {missing}; the file has {parquet.schema_arrow.names}")
        return list(columns)

    def _iter_file(self, data_file: DataFile, columns: Sequence[str] | None, batch_size: int) -> Iterator[pa.RecordBatch]:
        path = posixpath.join(self.path, data_file.name)
        with self._parquet(path) as parquet:
            selected = self._checked_columns(parquet, path, columns)
            try:
                yield from parquet.iter_batches(batch_size=batch_size, columns=selected or None)
            except (pa.ArrowInvalid, OSError) as exc:
                raise CorruptPartition(f"{self.store.url(path)}: data is corrupt ({exc})") from exc

    def _manifest_or_none(self) -> Manifest | None:
        # Every snapshot starts here. Drop cached listings (s3fs keeps them, and a listing taken
        # before another worker's commit hides its files), then fetch the manifest in one GET:
        # open() would HEAD first and fail if the manifest is swapped between HEAD and GET.
        self.fs.invalidate_cache(self.path)
        try:
            raw = self.fs.cat_file(self.manifest_path)
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(raw.decode("utf-8"))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptPartition(f"{self.store.url(self.manifest_path)}: unreadable manifest ({exc})") from exc

    def _data_paths(self) -> list[str]:
        self.fs.invalidate_cache(self.path)  # list what is there now, not what was cached
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return [p for p in entries if posixpath.basename(p).startswith("part-")]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _conform(table: pa.Table, schema: pa.Schema, *, where: str) -> pa.Table:
    """Select and cast ``table`` to ``schema``, or say which column is wrong."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise SchemaMismatch(f"{where}: rows lack column(s) {missing}; they have {table.column_names}")
    table = table.select(schema.names)
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaMismatch(f"{where}: columns do not fit the schema ({exc})") from exc


def _empty_from_manifest(partition: Partition, manifest: Manifest, columns: Sequence[str] | None) -> pa.Table:
    """An empty partition still has a schema: read it from any (empty) data file."""
    for data_file in manifest.files:
        path = posixpath.join(partition.path, data_file.name)
        with partition.fs.open(path, "rb") as fh:
            schema = pq.read_schema(fh)
        table = schema.empty_table()
        return table.select(list(columns)) if columns else table
    return pa.table({})
