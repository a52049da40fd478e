"""The release's Hugging Face dataset folder, on any fsspec URL, and its optional push to the Hub.

```
{root}/releases/{version}/
  data/train-00000-of-0000N.parquet      the release (config ``default``)
  variants/{name}/train-*.parquet        each ablation variant (its own config)
  README.md                              the dataset card (YAML front matter + provenance)
  sft_config.yaml                        trl sft --config sft_config.yaml
  report.json                            counts, and every dropped row with its method and counterpart
```

Files are written to a staging folder first and moved in, so a reader never sees half a release;
a re-run of a version replaces it.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.storage import Store

RELEASES = "releases"


def release_path(store: Store, version: str) -> str:
    return posixpath.join(store.root, RELEASES, version)


def shard_files(table: pa.Table, folder: str, max_rows: int) -> dict[str, pa.Table]:
    """``{relative path: rows}`` of one split as ``train-XXXXX-of-YYYYY.parquet`` shards."""
    count = max(1, -(-table.num_rows // max_rows))
    return {posixpath.join(folder, f"train-{n:05d}-of-{count:05d}.parquet"): table.slice(n * max_rows, max_rows) for n in range(count)}


def write_release(store: Store, version: str, tables: Mapping[str, pa.Table], texts: Mapping[str, str]) -> str:
    """Write the folder (Parquet files by relative path, text files by relative path); returns its path."""
    final = release_path(store, version)
    staging = posixpath.join(store.root, RELEASES, f"_staging-{version}-{uuid.uuid4().hex[:8]}")
    fs = store.fs
    for relative, table in tables.items():
        path = posixpath.join(staging, relative)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        fs.pipe_file(path, buffer.getvalue())
    for relative, text in texts.items():
        path = posixpath.join(staging, relative)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, text.encode("utf-8"))
    if fs.exists(final):
        fs.rm(final, recursive=True)
    fs.mv(staging, final, recursive=True)
    return final


def upload_operations(store: Store, folder: str) -> list[Any]:
    """The Hub commit's file additions: every file of the release folder, by its relative path."""
    from huggingface_hub import CommitOperationAdd

    operations = []
    for path in sorted(store.fs.find(folder)):
        relative = posixpath.relpath(path, folder)
        operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=store.fs.cat_file(path)))
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
    operations = upload_operations(store, folder)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.create_commit(repo_id, operations, commit_message=f"infinisynth release {version}", repo_type="dataset")
    api.create_tag(repo_id, tag=version, repo_type="dataset", exist_ok=True)
    return {"repo_id": repo_id, "files": [op.path_in_repo for op in operations], "commit": str(getattr(commit, "oid", commit))}


def report_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str) + "\n"
