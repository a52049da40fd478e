"""The release's Hugging Face dataset folder, on any fsspec URL, and its optional push to the Hub.

```
{root}/releases/{version}/
  data/train-00000-of-0000N.parquet      the release (config ``default``)
  variants/{name}/train-*.parquet        each ablation variant (its own config)
  README.md                              the dataset card (YAML front matter + provenance)
  sft_config.yaml                        trl sft --config sft_config.yaml
  report.json                            counts, and every dropped row with its method and counterpart
```

Files are written to a staging folder first and swapped in: on local disk the old folder is renamed
away and the new one renamed in (two renames), so a reader never sees half a release; on an object
store, which cannot rename, the staged objects are copied in and the replaced build's leftovers
deleted after (a reader during that window may see files of both builds). A re-run of a version
replaces it. Callers serialize writers of one version (the export holds the release
partition's lease). Shards are streamed in, one row group at a time. A split without rows is one
Parquet file with the schema and no row group: ``pyarrow.dataset``, DuckDB and ``datasets``
streaming read it as zero rows with the right columns (``datasets`` 5.2 refuses any zero-row
split when not streaming).
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.storage import ROW_GROUP_ROWS, Store, is_local

RELEASES = "releases"
COPY_CHUNK = 200  # objects copied concurrently per request batch on an object store


def release_path(store: Store, version: str) -> str:
    return posixpath.join(store.root, RELEASES, version)


def shard_files(table: pa.Table, folder: str, max_rows: int) -> dict[str, pa.Table]:
    """``{relative path: rows}`` of one split as ``train-XXXXX-of-YYYYY.parquet`` shards."""
    count = max(1, -(-table.num_rows // max_rows))
    return {posixpath.join(folder, f"train-{n:05d}-of-{count:05d}.parquet"): table.slice(n * max_rows, max_rows) for n in range(count)}


class ShardWriter:
    """One split as ``train-XXXXX-of-YYYYY.parquet`` shards of at most ``max_rows`` rows, streamed."""

    def __init__(self, fs: Any, folder: str, schema: pa.Schema, total_rows: int, max_rows: int):
        self.fs, self.folder, self.schema, self.max_rows = fs, folder, schema, max_rows
        self.count = max(1, -(-total_rows // max_rows))
        self.shard, self.in_shard, self.rows = 0, 0, 0
        self._sink: Any = None
        self._writer: pq.ParquetWriter | None = None
        fs.makedirs(folder, exist_ok=True)

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            path = posixpath.join(self.folder, f"train-{self.shard:05d}-of-{self.count:05d}.parquet")
            self._sink = self.fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        return self._writer

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None
            self.shard += 1
            self.in_shard = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            room = self.max_rows - self.in_shard
            part, table = table.slice(0, room), table.slice(room)
            self._open().write_table(part.cast(self.schema), row_group_size=ROW_GROUP_ROWS)
            self.in_shard += part.num_rows
            self.rows += part.num_rows
            if self.in_shard >= self.max_rows:
                self._close_shard()

    def close(self) -> None:
        if self.rows == 0:
            self._open()  # a split without rows is still a file: the schema, no row group
        self._close_shard()
        if self.shard != self.count:
            raise RuntimeError(f"{self.folder}: wrote {self.shard} shards of {self.rows} rows, announced {self.count}")


class FolderWriter:
    """A release folder built in a staging folder and swapped in by :meth:`publish`."""

    def __init__(self, store: Store, version: str):
        self.store, self.version = store, version
        self.staging = posixpath.join(store.root, RELEASES, f"_staging-{version}-{uuid.uuid4().hex[:8]}")
        store.fs.makedirs(self.staging, exist_ok=True)

    def shards(self, folder: str, schema: pa.Schema, total_rows: int, max_rows: int) -> ShardWriter:
        return ShardWriter(self.store.fs, posixpath.join(self.staging, folder), schema, total_rows, max_rows)

    def text(self, relative: str, text: str) -> None:
        path = posixpath.join(self.staging, relative)
        self.store.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.store.fs.pipe_file(path, text.encode("utf-8"))

    def text_chunks(self, relative: str, chunks: Iterable[str]) -> None:
        path = posixpath.join(self.staging, relative)
        self.store.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with self.store.fs.open(path, "wb") as sink:
            for chunk in chunks:
                sink.write(chunk.encode("utf-8"))

    def publish(self) -> str:
        fs, final = self.store.fs, release_path(self.store, self.version)
        if not is_local(fs):
            return self._publish_by_copy(final)
        old = posixpath.join(self.store.root, RELEASES, f"_retired-{self.version}-{uuid.uuid4().hex[:8]}")
        if fs.exists(final):
            fs.mv(final, old, recursive=True)  # renamed away whole, never emptied in place
        fs.mv(self.staging, final, recursive=True)
        if fs.exists(old):
            fs.rm(old, recursive=True)
        return final

    def _publish_by_copy(self, final: str) -> str:
        """An object store has no rename: copy the staged files in (server side), the card last since
        it names the configs, then delete whatever the replaced build had that this one has not.
        A reader during the swap may see both builds' files; never a missing or half-written one."""
        fs = self.store.fs
        staged = sorted(fs.find(self.staging), key=lambda path: (posixpath.basename(path) == "README.md", path))
        targets = [posixpath.join(final, posixpath.relpath(path, self.staging)) for path in staged]
        for start in range(0, len(staged), COPY_CHUNK):
            fs.copy(staged[start : start + COPY_CHUNK], targets[start : start + COPY_CHUNK])
        fs.invalidate_cache(final)
        stale = sorted(set(fs.find(final)) - set(targets))
        if stale:
            fs.rm(stale)
        fs.rm(self.staging, recursive=True)
        return final

    def discard(self) -> None:
        if self.store.fs.exists(self.staging):
            self.store.fs.rm(self.staging, recursive=True)


def write_release(store: Store, version: str, tables: Mapping[str, pa.Table], texts: Mapping[str, str]) -> str:
    """Write the folder (Parquet files by relative path, text files by relative path); returns its path."""
    writer = FolderWriter(store, version)
    for relative, table in tables.items():
        path = posixpath.join(writer.staging, relative)
        store.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with store.fs.open(path, "wb") as sink, pq.ParquetWriter(sink, table.schema, compression="zstd") as out:
            if table.num_rows:  # no row group at all for an empty split (see the module's note)
                out.write_table(table, row_group_size=ROW_GROUP_ROWS)
    for relative, text in texts.items():
        writer.text(relative, text)
    return writer.publish()


def upload_operations(store: Store, folder: str, files: ExitStack) -> list[Any]:
    """The Hub commit's file additions: every file of the release folder, by its relative path,
    read from disk or the object store as huggingface_hub uploads it (a release of millions of rows
    is gigabytes: never held in memory). Remote files stay open until ``files`` closes."""
    from huggingface_hub import CommitOperationAdd

    operations = []
    for path in sorted(store.fs.find(folder)):
        # huggingface_hub takes a path or an io.BufferedIOBase, which fsspec's files are not
        source = path if is_local(store.fs) else files.enter_context(io.BufferedReader(store.fs.open(path, "rb")))
        operations.append(CommitOperationAdd(path_in_repo=posixpath.relpath(path, folder), path_or_fileobj=source))
    return operations


def push_to_hub(
    store: Store,
    folder: str,
    repo_id: str,
    token: str,
    *,
    version: str,
    private: bool = True,
    api_factory: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Create the dataset repo (if need be) and commit the folder as one commit, tagged with the version."""
    from huggingface_hub import HfApi

    api = (api_factory or HfApi)(token=token)
    with ExitStack() as files:
        operations = upload_operations(store, folder, files)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations, commit_message=f"infinisynth release {version}", repo_type="dataset")
    api.create_tag(repo_id, tag=version, repo_type="dataset", exist_ok=True)
    return {"repo_id": repo_id, "files": [op.path_in_repo for op in operations], "commit": str(getattr(commit, "oid", commit))}


def report_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"


def report_json_chunks(summary: Mapping[str, Any], dropped: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """report.json a piece at a time: the summary, then ``dropped_rows`` one row a line (a large
    release drops tens of thousands of rows: the report never holds them all at once)."""
    head = json.dumps(dict(summary), indent=2, sort_keys=True, default=str)
    yield head[:-1].rstrip() + ("," if summary else "") + '\n  "dropped_rows": ['  # the summary without its closing brace
    for n, row in enumerate(dropped):
        yield ("," if n else "") + "\n    " + json.dumps(row, sort_keys=True, default=str)
    yield "\n  ]\n}\n"
