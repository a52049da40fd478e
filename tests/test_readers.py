"""Readers of a table's folder, which know nothing of our manifests, see exactly the committed rows.

Hugging Face ``datasets`` (``data_dir``), DuckDB (``read_parquet`` over a glob, Hive partitions) and
``pyarrow.dataset`` (Hive partitions) read a table folder after every one of several re-runs of a
date, with another date beside it and a run's shards written but not yet committed. Each must
return the rows the manifests name, each exactly once: ids carry their date and run, so a row of a
replaced run, a row read twice or an uncommitted row all show up as a difference.
On S3 (a real moto server): ``pyarrow.dataset`` through Arrow's own S3 client, and DuckDB through
the store's s3fs filesystem (DuckDB's httpfs extension is not installed here).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from infinisynth.storage import LEGACY_MANIFEST, MANIFEST, Partition, Store
from tests.support.s3 import S3Endpoint, moto_s3

SCHEMA = pa.schema([("id", pa.string()), ("shard", pa.int32()), ("text", pa.string())])
PIPELINE, STAGE = "demo", "generate"
Reader = Callable[[], Counter[str]]  # the ids a reader finds in the table folder, with multiplicity


def shard_table(ds: str, run: str, shard: int, n: int) -> pa.Table:
    ids = [f"{ds}/{run}/s{shard}/r{i}" for i in range(n)]
    return pa.table({"id": ids, "shard": pa.array([shard] * n, pa.int32()), "text": [run] * n}, schema=SCHEMA)


def write_run(part: Partition, ds: str, run: str, sizes: list[int]) -> list:
    return [part.write_table(shard, shard_table(ds, run, shard, n), SCHEMA) for shard, n in enumerate(sizes)]


def committed_ids(store: Store, keys: list[str]) -> Counter[str]:
    """What the manifests say the table holds, read the way the pipelines read it."""
    found: Counter[str] = Counter()
    for key in keys:
        part = store.partition(PIPELINE, STAGE, key)
        table = part.read(columns=["id"])
        assert table.num_rows == part.manifest().rows
        found.update(table.column("id").to_pylist())
    return found


# -- readers ----------------------------------------------------------------------------------------


def datasets_reader(table_dir: str, cache: Path) -> Reader:
    def read() -> Counter[str]:
        import datasets

        # A fresh cache each time: the question is what the folder holds now, not what was cached.
        loaded = datasets.load_dataset("parquet", data_dir=table_dir, cache_dir=str(cache / uuid.uuid4().hex), split="train")
        return Counter(loaded["id"])

    return read


def duckdb_reader(glob: str, filesystem: Any = None) -> Reader:
    def read() -> Counter[str]:
        import duckdb

        with duckdb.connect() as con:
            if filesystem is not None:
                con.register_filesystem(filesystem)
            rows = con.execute("SELECT id FROM read_parquet(?, hive_partitioning = true)", [glob]).fetchall()
        return Counter(row[0] for row in rows)

    return read


def pyarrow_reader(table_dir: str, filesystem: pafs.FileSystem | None = None) -> Reader:
    def read() -> Counter[str]:
        dataset = pads.dataset(table_dir, partitioning="hive", filesystem=filesystem)
        return Counter(dataset.to_table(columns=["id"]).column("id").to_pylist())

    return read


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(params=["file", "s3"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, dict[str, Reader]]:
    """A store, and the directory readers of its ``demo/generate`` table folder."""
    if request.param == "file":
        store = Store(f"file://{tmp_path / 'data'}")
        table_dir = f"{store.root}/{PIPELINE}/{STAGE}"
        readers = {
            "datasets": datasets_reader(table_dir, tmp_path / "hf-cache"),
            "duckdb": duckdb_reader(f"{table_dir}/**/*.parquet"),
            "pyarrow.dataset": pyarrow_reader(table_dir),
        }
        return store, readers
    endpoint: S3Endpoint = request.getfixturevalue("s3_server")
    options = {"key": endpoint.key, "secret": endpoint.secret, "client_kwargs": {"endpoint_url": endpoint.endpoint_url}}
    store = Store(f"s3://{endpoint.bucket}/r-{uuid.uuid4().hex[:10]}", options)
    table_dir = f"{store.root}/{PIPELINE}/{STAGE}"
    arrow_s3 = pafs.S3FileSystem(
        access_key=endpoint.key, secret_key=endpoint.secret, endpoint_override=endpoint.endpoint_url, region=endpoint.region
    )
    readers = {
        "pyarrow.dataset": pyarrow_reader(table_dir, arrow_s3),
        "duckdb": duckdb_reader(f"s3://{table_dir}/**/*.parquet", store.fs),
    }
    return store, readers


# -- re-runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys", [["2024-05-01", "2024-05-02"], ["2024-05-01.iter0001", "2024-05-01.iter0002"]], ids=["dates", "iterations"]
)
def test_directory_readers_see_exactly_the_committed_rows_across_reruns(table: tuple[Store, dict[str, Reader]], keys: list[str]) -> None:
    store, readers = table
    rerun, other = keys
    checked = 0

    def check(when: str) -> None:
        nonlocal checked
        expected = committed_ids(store, [k for k in keys if store.partition(PIPELINE, STAGE, k).exists()])
        for name, read in readers.items():
            found = read()
            assert found == expected, (
                f"{name} after {when}: {sum(found.values())} rows, committed {sum(expected.values())}; "
                f"extra {sorted((found - expected).elements())[:5]}, missing {sorted((expected - found).elements())[:5]}"
            )
        checked += 1

    other_part = store.partition(PIPELINE, STAGE, other)
    other_part.commit(write_run(other_part, other, "nightly", [4, 3]), SCHEMA)
    check("the other partition's commit")

    part = store.partition(PIPELINE, STAGE, rerun)
    for attempt, sizes in enumerate([[5, 6, 7], [2, 9], [8, 1, 1, 3]], start=1):
        # Some shards of this attempt are written (staged) before the commit: a mapped task
        # finished, the run is still going. Readers must not see them yet.
        files = write_run(part, rerun, f"run{attempt}", sizes)
        check(f"attempt {attempt}'s writes")
        part.commit(files, SCHEMA, {"attempt": attempt})
        check(f"attempt {attempt}'s commit")
    write_run(part, rerun, "in-flight", [11])  # a fourth run, never committed
    check("a fourth run's writes")

    assert part.manifest().rows == 13 and other_part.manifest().rows == 7
    assert sum(committed_ids(store, keys).values()) == 20
    assert checked == 8


# -- a partition committed before this layout ----------------------------------------------------------


def test_a_partition_of_the_old_layout_is_read_and_migrated(tmp_path: Path) -> None:
    """Before the staging area, uncommitted and replaced files sat beside the committed ones, named
    by ``_manifest.json``; manifest readers keep reading such a partition, and ``collect_garbage``
    leaves its folder holding exactly the committed files for directory readers."""
    store = Store(f"file://{tmp_path / 'data'}")
    part = store.partition(PIPELINE, STAGE, "2024-04-30")
    folder = Path(part.path)
    folder.mkdir(parents=True)
    for name, run in [("part-00000-aaaaaaaa.parquet", "committed"), ("part-00000-bbbbbbbb.parquet", "replaced")]:
        pq.write_table(shard_table("2024-04-30", run, 0, 3), folder / name)
    legacy = {"files": [{"name": "part-00000-aaaaaaaa.parquet", "rows": 3}], "rows": 3, "schema": "id: string", "created_at": "2024-04-30"}
    (folder / LEGACY_MANIFEST).write_text(json.dumps(legacy))

    assert part.exists() and store.committed_dates(PIPELINE, STAGE) == ["2024-04-30"]
    assert part.read().column("text").to_pylist() == ["committed"] * 3

    part.collect_garbage()
    assert {p.name for p in folder.iterdir()} == {MANIFEST, "part-00000-aaaaaaaa.parquet"}
    assert part.read().column("text").to_pylist() == ["committed"] * 3
    table_dir = f"{store.root}/{PIPELINE}/{STAGE}"
    for read in (pyarrow_reader(table_dir), duckdb_reader(f"{table_dir}/**/*.parquet"), datasets_reader(table_dir, tmp_path / "hf")):
        assert read() == Counter(f"2024-04-30/committed/s0/r{i}" for i in range(3))
