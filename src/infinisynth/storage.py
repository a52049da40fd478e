"""Partitioned Parquet on any fsspec URL (``file://`` by default, ``s3://`` in production).

Layout of one table (``{table}`` is a stage, or ``rejected/{stage}``)::

    {root}/{pipeline}/{table}/ds=.../part-{shard}-{token}.parquet  the committed files, and only those
    {root}/{pipeline}/{table}/ds=.../.manifest.json                the commit: names exactly those files
    {root}/{pipeline}/_staging/{table}/ds=.../part-*.parquet        written, not (yet) committed
    {root}/{pipeline}/_staging/{table}/ds=.../_lease.json           who may commit the partition now
    {root}/{pipeline}/_retired/{table}/ds=.../part-*.parquet        the generation the last commit replaced

Two kinds of reader, both see exactly the committed rows:

- Directory readers (``datasets.load_dataset("parquet", data_dir=...)``, DuckDB globs,
  ``pyarrow.dataset``) see whatever is in the table folder, so nothing else may sit there between
  commits: uncommitted writes stay in ``_staging``, a replaced generation moves to ``_retired``, and
  the manifest is a hidden file (``datasets`` reads every ``.json`` of a data_dir as data; every
  reader skips hidden files). During a commit on S3 a directory reader can see both generations.
- Readers through the manifest (:meth:`Partition.read`, ``iter_batches``, ``read_file``) see one
  whole snapshot, always: the manifest is written last and atomically (a rename on local disk, one
  PUT on S3) and names the exact files; a reader that started on the replaced generation finishes
  on it from ``_retired``; one that lost its files altogether starts over on the new manifest.

Commits of one partition are serialized by a lease (an owner and an expiry, changed only by
compare-and-swap), so two runs of one date, or a zombie task, cannot interleave their moves; a
crashed committer's lease expires and is taken over. A commit checks that every file it names is
in the table folder before it writes the manifest, and writes it only over the manifest it read
when it took the lease (a conditional PUT on S3), so a committer that lost its lease cannot publish
over a newer commit. Garbage collection spares what a manifest or a live writer owns: the replaced
generation survives one more commit, and staged files are deleted only once older than any run.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import itertools
import json
import logging
import os
import posixpath
import random
import socket
import time
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

MANIFEST = ".manifest.json"
LEGACY_MANIFEST = "_manifest.json"  # partitions committed before the staging layout: read, replaced on re-commit
LEASE = "_lease.json"
STAGING = "_staging"
RETIRED = "_retired"
ROW_GROUP_ROWS = 10_000
READ_RETRIES = 3

LEASE_TTL = 600.0  # seconds; a commit renews its lease as it goes, so only a dead committer's runs out
LEASE_WAIT = 900.0  # longer than the TTL: a waiting commit always outlives a dead holder's lease
STAGING_GRACE = 3 * 24 * 3600.0  # a staged file this old has no live writer: no run lasts three days


def row_group_starts(parquet: pq.ParquetFile) -> list[int]:
    """The first row of each of the file's row groups."""
    sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
    return [0, *itertools.accumulate(sizes)][:-1]


def row_group_batches(
    parquet: pq.ParquetFile,
    batch_size: int,
    *,
    skip: int = 0,
    columns: Sequence[str] | None = None,
    group_starts: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The file's rows from row ``skip`` on, a row group at a time: one reader over a whole file
    holds memory for every row group it has read until it is done (+420 MB over a 1M-row file,
    +97 MB read like this). Reading starts at the row group holding row ``skip`` (found from
    ``group_starts``, :func:`row_group_starts` if not given): skipped groups are not even read."""
    starts = row_group_starts(parquet) if group_starts is None else group_starts
    first = max(0, bisect.bisect_right(starts, skip) - 1)
    skip -= starts[first] if starts else 0
    for group in range(first, len(starts)):
        for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip) if skip else batch
            skip = 0


class StorageError(RuntimeError):
    """Base class: every message names the URL it is about."""


class PartitionNotFound(StorageError):
    """No committed manifest at that partition (never written, or still being written)."""


class CorruptPartition(StorageError):
    """A data file or manifest cannot be read as what it claims to be."""


class SchemaMismatch(StorageError):
    """The data lacks columns the reader needs, or has them with other types."""


class MissingDataFiles(StorageError):
    """A commit names data files that are nowhere to be found: nothing was published."""


class LeaseTimeout(StorageError):
    """Another live committer held the partition's lease for longer than this one would wait."""


class LeaseLost(StorageError):
    """This committer's lease expired and was taken over before it published: nothing was published."""


class SnapshotGone(StorageError):
    """A streaming read lost the snapshot it had started on (two re-commits during one read)."""


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
    committed_by: str = ""  # the run (or process) that committed it, for the replacement log

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> str:
        body = {
            "files": [f.to_dict() for f in self.files],
            "rows": self.rows,
            "schema": self.schema,
            "created_at": self.created_at,
            "committed_by": self.committed_by,
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
        committed_by = body.pop("committed_by", "")
        return cls(files=files, schema=schema, meta=body, created_at=created_at, committed_by=committed_by)


def partition_key(ds: str) -> str:
    return f"ds={ds}"


class Store:
    """The root of all pipeline data, on one filesystem.

    ``lease_ttl``, ``lease_wait`` and ``staging_grace`` (seconds) tune commits; the defaults suit
    nightly runs, tests shorten them.
    """

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root_url = root.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.lease_ttl = LEASE_TTL
        self.lease_wait = LEASE_WAIT
        self.staging_grace = STAGING_GRACE

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

    def side_path(self, pipeline: str, area: str, ds: str, name: str) -> str:
        """A non-table file of a date (a report, a plot, a graph export): kept under ``area``, beside
        the tables rather than in one, so directory readers of a table see only its Parquet files."""
        return posixpath.join(self.root, pipeline, area, partition_key(ds), name)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._atomic_write(path, data)

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
    """One ``ds=`` partition of one table: its folder, its staging and retired areas, its lease."""

    def __init__(self, store: Store, path: str):
        self.store = store
        self.fs = store.fs
        self.path = path
        pipeline, _, table = posixpath.relpath(path, store.root).partition("/")
        if not table or pipeline.startswith(".."):
            raise StorageError(f"{store.url(path)}: not a partition under {store.root_url}/{{pipeline}}/")
        self.staging_path = posixpath.join(store.root, pipeline, STAGING, table)
        self.retired_path = posixpath.join(store.root, pipeline, RETIRED, table)
        self.lease_path = posixpath.join(self.staging_path, LEASE)

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
        """Stream batches into a new staged data file; invisible to readers until :meth:`commit`.

        Memory stays at one row group however many batches come in.
        """
        name = f"part-{shard:05d}-{uuid.uuid4().hex[:8]}.parquet"
        final = posixpath.join(self.staging_path, name)
        target = final if not is_local(self.fs) else f"{final}.inprogress"
        self.fs.makedirs(self.staging_path, exist_ok=True)
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
        """Publish exactly ``files`` as this partition, under its lease.

        The files move from staging into the table folder, the manifest is written once every one
        of them is there, and then whatever the table folder holds beyond them (the replaced
        generation, leftovers of a crashed commit) moves out to the retired area, where readers
        that started on it can finish; the generation retired by the commit before is deleted.
        Other staged files are left alone: another run may be about to commit them.
        """
        committed_by = _who(meta)
        manifest = Manifest(
            files=sorted(files, key=lambda f: f.name),
            schema=schema.to_string(show_schema_metadata=False),
            meta=dict(meta or {}),
            committed_by=committed_by,
        )
        with self.lease(committed_by) as lease:
            published = self._published()
            raw, version = published.read()  # what this commit replaces, and the version it must still be at
            previous = self._previous(raw)
            try:
                self._move_in(manifest.files, lease)
                lease.renew()  # a committer stalled past its lease stops here ...
                manifest.created_at = datetime.now(UTC).isoformat(timespec="seconds")
                if published.write(manifest.to_json().encode(), version) is None:  # ... or, at the latest, here
                    raise LeaseLost(f"{self.url}: another commit published this partition meanwhile; not publishing over it")
            except Exception:
                self._undo_moves(lease)
                raise
            if previous is not None:
                log.warning(
                    "%s: replaced the partition committed at %s by %s (%d rows, %d files) with %d rows, %d files",
                    self.url,
                    previous.created_at or "an unknown time",
                    previous.committed_by or "an unknown run",
                    previous.rows,
                    len(previous.files),
                    manifest.rows,
                    len(manifest.files),
                )
            self._tidy({f.name for f in manifest.files}, lease, retire_previous=True)
        return manifest

    def write_and_commit(self, table: pa.Table, meta: dict[str, Any] | None = None, schema: pa.Schema | None = None) -> Manifest:
        """Convenience for small, single-file partitions (reports, graphs, vocabularies)."""
        schema = schema or table.schema
        return self.commit([self.write_table(0, table, schema)], schema, meta)

    def collect_garbage(self, *, staged_older_than: float | None = None) -> None:
        """Tidy this partition without committing (a commit does the same): move data files the
        manifest does not name out of the table folder, and delete staged files older than
        ``staged_older_than`` seconds (default: the store's staging grace; younger ones may belong
        to a run that has yet to commit them). Also migrates a partition committed before the
        staging layout, so directory readers see only its committed rows."""
        with self.lease() as lease:
            manifest = self._manifest_or_none()
            if manifest is not None and not self.fs.exists(self.manifest_path):  # committed as LEGACY_MANIFEST
                self._published().write(manifest.to_json().encode(), None)
            keep = {f.name for f in manifest.files} if manifest else set()
            self._tidy(keep, lease, retire_previous=False, staged_older_than=staged_older_than)

    @contextmanager
    def lease(self, owner: str | None = None, *, ttl: float | None = None, wait: float | None = None) -> Iterator[Lease]:
        """Hold this partition's commit lease for the block: wait (at most ``wait`` seconds) while a
        live committer holds it, take it over once expired. :class:`LeaseTimeout` if it stays held."""
        lease = Lease(self, owner or _who(None), self.store.lease_ttl if ttl is None else ttl)
        lease.acquire(self.store.lease_wait if wait is None else wait)
        try:
            yield lease
        finally:
            lease.release()

    def _published(self) -> _Versioned:
        """The manifest, as an object only a compare-and-swap replaces (its lock lives in staging)."""
        return _Versioned(self.store, self.manifest_path, posixpath.join(self.staging_path, "_manifest.lock"))

    def _previous(self, raw: bytes | None) -> Manifest | None:
        """The manifest a commit replaces; one nobody can read is replaced all the same."""
        try:
            return _parse_manifest(self.store, self.manifest_path, raw) if raw is not None else self._manifest_or_none()
        except CorruptPartition as exc:
            log.warning("%s: replacing an unreadable manifest: %s", self.url, exc)
            return None

    def _move_in(self, files: Sequence[DataFile], lease: Lease) -> None:
        """Bring every file of a commit into the table folder, or fail before anything moves."""
        names = {f.name for f in files}
        in_table = self._part_names(self.path)
        staged = self._part_names(self.staging_path)
        retired = self._part_names(self.retired_path)  # a retried commit whose files a later one retired
        missing = sorted(names - in_table - staged - retired)
        if missing:
            raise MissingDataFiles(
                f"{self.url}: not committing: {len(missing)} of {len(names)} data files are neither staged nor in the "
                f"table: {missing[:5]} (written to another store, or collected after {self.store.staging_grace:.0f}s unclaimed)"
            )
        moves = [(posixpath.join(self.staging_path, n), posixpath.join(self.path, n)) for n in sorted(names & staged)]
        moves += [(posixpath.join(self.retired_path, n), posixpath.join(self.path, n)) for n in sorted(names & retired - staged - in_table)]
        self._move(moves, lease)
        absent = sorted(names - self._part_names(self.path))
        if absent:  # only another committer moving files out from under us gets here
            raise MissingDataFiles(f"{self.url}: not committing: data files vanished while being moved in: {absent[:5]}")

    def _undo_moves(self, lease: Lease) -> None:
        """After a failed commit, leave the table folder as its manifest describes it: the files
        moved in so far go to the retired area, where a retry of the commit finds them again."""
        try:
            lease.renew()  # never touch the folder under a lease another committer holds
            current = self._manifest_or_none()
            keep = {f.name for f in current.files} if current else set()
            stray = sorted(self._part_names(self.path) - keep)
            self._move([(posixpath.join(self.path, n), posixpath.join(self.retired_path, n)) for n in stray], lease)
        except Exception as exc:  # the commit's own error is the one to report
            log.warning("%s: could not undo a failed commit's moves (%s); the next commit or collect_garbage() will", self.url, exc)

    def _tidy(self, keep: set[str], lease: Lease, *, retire_previous: bool, staged_older_than: float | None = None) -> None:
        """Leave the table folder holding only ``keep``; collect what nobody can read or commit."""
        if retire_previous:  # the generation retired one commit ago has had a whole commit to finish its reads
            self._remove([posixpath.join(self.retired_path, n) for n in sorted(self._part_names(self.retired_path))])
        in_table = self._names(self.path)
        stray = sorted(_data_names(in_table) - keep)
        self._move([(posixpath.join(self.path, n), posixpath.join(self.retired_path, n)) for n in stray], lease)
        grace = self.store.staging_grace if staged_older_than is None else staged_older_than
        cutoff = time.time() - grace
        stale = [p for p, modified in self._listing(self.staging_path) if posixpath.basename(p).startswith("part-") and modified <= cutoff]
        if stale:
            log.info("%s: deleting %d staged files nobody committed within %.0fs", self.url, len(stale), grace)
            self._remove(stale)
        if LEGACY_MANIFEST in in_table:  # superseded by MANIFEST, and a data file to `datasets`
            self.fs.rm_file(posixpath.join(self.path, LEGACY_MANIFEST))

    def _move(self, moves: Sequence[tuple[str, str]], lease: Lease) -> None:
        if not moves:
            return
        for directory in {posixpath.dirname(dst) for _, dst in moves}:
            self.fs.makedirs(directory, exist_ok=True)
        if is_local(self.fs):
            for src, dst in moves:
                lease.keep_alive()  # before each move: a committer that stalled past its lease moves nothing more
                self.fs.mv(src, dst)  # rename(2): the file is whole in one place or the other
        else:  # S3 has no rename: copy (server side, concurrently), then delete the sources
            for start in range(0, len(moves), 200):
                chunk = moves[start : start + 200]
                lease.keep_alive()
                self.fs.copy([src for src, _ in chunk], [dst for _, dst in chunk])
                self.fs.rm([src for src, _ in chunk])
        for directory in {posixpath.dirname(p) for move in moves for p in move}:
            self.fs.invalidate_cache(directory)

    def _remove(self, paths: Sequence[str]) -> None:
        if paths:
            self.fs.rm(list(paths))

    # -- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        self.fs.invalidate_cache(self.path)  # another worker may have committed since we listed
        return self.fs.exists(self.manifest_path) or self.fs.exists(posixpath.join(self.path, LEGACY_MANIFEST))

    def manifest(self) -> Manifest:
        manifest = self._manifest_or_none()
        if manifest is None:
            raise PartitionNotFound(f"{self.url}: no committed partition here (no {MANIFEST})")
        return manifest

    def snapshot_batches(
        self, manifest: Manifest, columns: Sequence[str] | None = None, batch_size: int = 4_096
    ) -> Iterator[pa.RecordBatch]:
        """The rows of exactly the snapshot ``manifest`` names, one batch at a time: a re-commit
        meanwhile moves its files to the retired area, where they are still read."""
        for data_file in manifest.files:
            if data_file.rows:
                yield from self._iter_file(data_file, columns, batch_size)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 4_096) -> Iterator[pa.RecordBatch]:
        """Stream the committed snapshot in record batches; memory is one batch, not the partition.

        A re-commit during the stream does not disturb it (the replaced files are read from the
        retired area); if the snapshot is gone before the first batch, the stream starts on the
        new one; if it is gone after some batches, :class:`SnapshotGone`.
        """
        for attempt in range(READ_RETRIES):
            manifest = self.manifest()
            started = False
            try:
                for data_file in manifest.files:
                    for batch in self._iter_file(data_file, columns, batch_size):
                        started = True
                        yield batch
                return
            except FileNotFoundError as exc:
                if started:
                    raise SnapshotGone(f"{self.url}: re-committed twice while being streamed; start the read again ({exc})") from exc
                if attempt == READ_RETRIES - 1:
                    raise
                log.info("%s changed before it could be streamed; streaming the new snapshot", self.url)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole partition as one table (use :meth:`iter_batches` for large ones).

        A re-commit during the read does not disturb it (the replaced files are read from the
        retired area); if the files this read began with are gone altogether (re-committed twice
        since), the read starts over on the new snapshot (a bounded number of times).
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
        """One data file of this partition (a shard), committed or still staged (a fused step reads
        its predecessor's shard before the commit), e.g. the input of a mapped task."""
        for path in self._locations(name, staged=True):
            try:
                with self._parquet(path) as parquet:
                    try:
                        return parquet.read(columns=self._checked_columns(parquet, path, columns))
                    except FileNotFoundError:
                        raise
                    except (pa.ArrowInvalid, OSError) as exc:
                        raise CorruptPartition(f"{self.store.url(path)}: not a readable Parquet file ({exc})") from exc
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"{self.store.url(posixpath.join(self.path, name))}: no such data file, committed, staged or retired")

    def _locations(self, name: str, *, staged: bool = False) -> list[str]:
        """Where a data file can be, most likely first. Names carry a unique token, so a file found
        in two places (an S3 move between its copy and its delete) is the same file."""
        places = [self.path, self.staging_path, self.retired_path] if staged else [self.path, self.retired_path]
        return [posixpath.join(place, name) for place in places]

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
        """A committed file's batches from wherever it is: the table folder, or the retired area
        once a re-commit has moved it. Moved mid-read, it resumes after the rows already yielded."""
        done = 0
        paths = self._locations(data_file.name)
        for place, path in enumerate(paths):
            try:
                for batch in self._file_batches(path, columns, batch_size, skip=done):
                    done += batch.num_rows
                    yield batch
                return
            except FileNotFoundError:
                if place == len(paths) - 1:
                    raise

    def _file_batches(self, path: str, columns: Sequence[str] | None, batch_size: int, *, skip: int) -> Iterator[pa.RecordBatch]:
        with self._parquet(path) as parquet:
            selected = self._checked_columns(parquet, path, columns)
            try:
                yield from row_group_batches(parquet, batch_size, skip=skip, columns=selected or None)
            except FileNotFoundError:
                raise
            except (pa.ArrowInvalid, OSError) as exc:
                raise CorruptPartition(f"{self.store.url(path)}: data is corrupt ({exc})") from exc

    def _manifest_or_none(self) -> Manifest | None:
        # Every snapshot starts here. Drop cached listings (s3fs keeps them, and a listing taken
        # before another worker's commit hides its files), then fetch the manifest in one GET:
        # open() would HEAD first and fail if the manifest is swapped between HEAD and GET.
        self.fs.invalidate_cache(self.path)
        for name in (MANIFEST, LEGACY_MANIFEST):
            path = posixpath.join(self.path, name)
            try:
                raw = self.fs.cat_file(path)
            except FileNotFoundError:
                continue
            return _parse_manifest(self.store, path, raw)
        return None

    def _listing(self, directory: str) -> list[tuple[str, float]]:
        """(path, modification time) of each file in ``directory`` now, not as cached."""
        self.fs.invalidate_cache(directory)
        try:
            entries = self.fs.ls(directory, detail=True)
        except FileNotFoundError:
            return []
        return [(e["name"], _modified_at(e)) for e in entries if e.get("type") == "file"]

    def _names(self, directory: str) -> set[str]:
        return {posixpath.basename(p) for p, _ in self._listing(directory)}

    def _part_names(self, directory: str) -> set[str]:
        return _data_names(self._names(directory))


class Lease:
    """The right to commit one partition, held until ``expires_at`` unless renewed.

    A small JSON object in the partition's staging area; every change to it is a compare-and-swap
    (a conditional PUT on S3, a rewrite under ``flock`` on local disk) against the version last
    seen, so two committers never both hold it. Release marks it released rather than deleting it:
    a conditional PUT is all the protocol needs, and S3 has no conditional delete everywhere.
    """

    def __init__(self, partition: Partition, owner: str, ttl: float):
        self.partition = partition
        self.owner = owner
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self._object = _Versioned(partition.store, partition.lease_path, f"{partition.lease_path}.lock")
        self._version: str | None = None  # of the lease object as we last wrote it; None: not held
        self._renewed = 0.0  # time.monotonic() of that write
        self._acquired_at = ""

    def acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        pause = 0.02
        while True:
            record, version = self._read()
            if _lease_free(record, self.token):
                if self._write(version):
                    if record is not None and not record.get("released") and record.get("token") != self.token:
                        log.warning(
                            "%s: took over the commit lease of %s, which expired at %s",
                            self.partition.url,
                            record.get("owner", "an unknown owner"),
                            record.get("expires_at", "an unknown time"),
                        )
                    return
                pause = 0.02  # another committer moved between our read and write: look again soon
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = record or {}
                raise LeaseTimeout(
                    f"{self.partition.url}: another commit holds this partition's lease (owner {holder.get('owner')}, "
                    f"since {holder.get('acquired_at')}, until {holder.get('expires_at')}); gave up after waiting {wait:.0f}s. "
                    "If that commit is dead, its lease expires then and a retry takes it over."
                )
            time.sleep(min(remaining, pause * random.uniform(0.5, 1.5)))  # jitter: waiting committers do not march in step
            pause = min(pause * 2, 0.25)

    def renew(self) -> None:
        """Extend the lease by its TTL; :class:`LeaseLost` if another committer has taken it over."""
        if self._version is None or not self._write(self._version):
            holder = (self._read()[0] or {}).get("owner", "nobody")
            raise LeaseLost(
                f"{self.partition.url}: the commit lease of {self.owner} expired and is now held by {holder}; "
                "this commit stopped before publishing"
            )

    def keep_alive(self) -> None:
        """Renew once a third of the TTL has passed: cheap enough to call inside loops."""
        if time.monotonic() - self._renewed > self.ttl / 3:
            self.renew()

    def release(self) -> None:
        released = _lease_bytes({**self._record(time.time()), "expires_at": _iso(time.time()), "released": True})
        if self._version is None or self._object.write(released, self._version) is None:
            holder = (self._read()[0] or {}).get("owner")
            log.warning("%s: the commit lease of %s had been taken over by %s", self.partition.url, self.owner, holder)
        self._version = None

    def _record(self, now: float) -> dict[str, Any]:
        self._acquired_at = self._acquired_at or _iso(now)
        return {
            "owner": self.owner,
            "token": self.token,
            "acquired_at": self._acquired_at,
            "expires_at": _iso(now + self.ttl),
            "released": False,
        }

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        data, version = self._object.read()
        if data is None:
            return None, None
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s: unreadable commit lease, treated as expired", self.partition.store.url(self.partition.lease_path))
            record = {"owner": "an unreadable lease", "expires_at": _iso(0)}
        return record, version

    def _write(self, version: str | None) -> bool:
        record = self._record(time.time())
        written = self._object.write(_lease_bytes(record), version)
        if written is None:
            # A write retried after a lost response fails its own condition: see whether it landed.
            landed, written = self._read()
            if landed != record:
                return False
        self._version = written
        self._renewed = time.monotonic()
        return True


class _Versioned:
    """One small object changed only by compare-and-swap: a conditional PUT on S3 (If-None-Match /
    If-Match), a read-compare-rename under an exclusive ``flock`` on local disk."""

    def __init__(self, store: Store, path: str, lock_path: str):
        self.store = store
        self.fs = store.fs
        self.path = path
        self.lock_path = lock_path  # local disk only; never in a table folder
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if not is_local(self.fs) and not {"s3", "s3a"} & set(protocols):
            raise StorageError(f"{store.url(path)}: commits need local disk or S3 (conditional writes)")

    def read(self) -> tuple[bytes | None, str | None]:
        """The content and its version (what a write must find to succeed); (None, None) if absent."""
        self.fs.invalidate_cache(self.path)
        try:
            if is_local(self.fs):
                data = self.fs.cat_file(self.path)
                return data, hashlib.sha256(data).hexdigest()
            # HEAD, then GET: if the object changes in between, the content read is newer than the
            # version, so a write decided on it fails its condition instead of clobbering.
            version = self.fs.info(self.path)["ETag"]
            return self.fs.cat_file(self.path), version
        except FileNotFoundError:
            return None, None

    def write(self, data: bytes, version: str | None) -> str | None:
        """Replace the object if it is still at ``version`` (absent if None): the new version, or
        None if the object was not at ``version``."""
        if is_local(self.fs):
            with self._locked():
                try:
                    current: str | None = hashlib.sha256(self.fs.cat_file(self.path)).hexdigest()
                except FileNotFoundError:
                    current = None
                if current != version:
                    return None
                self.store._atomic_write(self.path, data)
                return hashlib.sha256(data).hexdigest()
        try:
            if version is None:
                response = self.fs.pipe_file(self.path, data, mode="create")  # If-None-Match: *
            else:
                response = self.fs.pipe_file(self.path, data, IfMatch=version)
        except OSError as exc:
            if _condition_failed(exc):
                return None
            raise
        if not (response or {}).get("ETag"):
            raise StorageError(f"{self.store.url(self.path)}: the object store returned no ETag for a write")
        return str(response["ETag"])

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.fs.makedirs(posixpath.dirname(self.lock_path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock


def _data_names(names: Iterable[str]) -> set[str]:
    """The complete data files among ``names`` (not a local write in progress, not a manifest)."""
    return {n for n in names if n.startswith("part-") and n.endswith(".parquet")}


def _parse_manifest(store: Store, path: str, raw: bytes) -> Manifest:
    try:
        return Manifest.from_json(raw.decode("utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptPartition(f"{store.url(path)}: unreadable manifest ({exc})") from exc


def _lease_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def _lease_free(record: dict[str, Any] | None, token: str) -> bool:
    if record is None or record.get("released") or record.get("token") == token:
        return True
    try:
        return datetime.fromisoformat(str(record["expires_at"])).timestamp() <= time.time()
    except (KeyError, ValueError):
        return True  # a lease nobody can read the expiry of would block the partition forever


def _condition_failed(exc: BaseException) -> bool:
    """Whether an s3fs error is a failed condition (the object changed, or appeared, meanwhile)."""
    if isinstance(exc, FileExistsError | FileNotFoundError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in {409, 412}


def _who(meta: dict[str, Any] | None) -> str:
    """Who is committing, for leases and manifests: the Airflow run and task when there is one."""
    run = (meta or {}).get("run_id") or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    task = os.environ.get("AIRFLOW_CTX_TASK_ID")
    where = f"{socket.gethostname()} pid {os.getpid()}"
    airflow = " ".join(p for p in (f"run {run}" if run else "", f"task {task}" if task else "") if p)
    return f"{airflow} on {where}" if airflow else where


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _modified_at(entry: dict[str, Any]) -> float:
    """A listing entry's modification time (local: ``mtime``; S3: ``LastModified``); unknown is now."""
    if "mtime" in entry:
        return float(entry["mtime"])
    last = entry.get("LastModified")
    return last.timestamp() if isinstance(last, datetime) else time.time()


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
    if not manifest.files:
        return pa.table({})
    paths = partition._locations(manifest.files[0].name)
    for place, path in enumerate(paths):
        try:
            with partition.fs.open(path, "rb") as fh:
                table = pq.read_schema(fh).empty_table()
            return table.select(list(columns)) if columns else table
        except FileNotFoundError:
            if place == len(paths) - 1:
                raise
    raise AssertionError("unreachable")
