"""The training release on object storage: the same planted data as ``test_release``, built on a real
S3-compatible server (moto), read back from the bucket with ``pyarrow.dataset`` and ``datasets``.

S3 has no rename: the release folder is staged under ``releases/_staging-*`` and then copied into
place object by object; a re-run of a version must leave exactly its own files (no shard of the
build it replaced, no staging or retired folder behind).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from infinisynth.storage import Store
from tests.support.s3 import S3Endpoint, moto_s3
from tests.test_release import DAY1, DAY2, USER_ITEM, plant

pytestmark = pytest.mark.slow  # the real embedding model, three release builds


@pytest.fixture(scope="module")
def s3() -> Any:
    with moto_s3() as endpoint:
        yield endpoint


def _options(endpoint: S3Endpoint) -> dict[str, Any]:
    return {"key": endpoint.key, "secret": endpoint.secret, "client_kwargs": {"endpoint_url": endpoint.endpoint_url}}


def _build(store: Store, run_date: str, **params: Any) -> str:
    from infinisynth.pipelines.release import ReleaseSettings, release_context
    from infinisynth.steps import run_global_step

    ctx = release_context(store, ReleaseSettings(storage_root=store.root_url, **params), run_date)
    for step in ctx.spec.steps:
        run_global_step(ctx, step.name)
    return f"{store.root}/releases/{ctx.ds}"


def _keys(endpoint: S3Endpoint, prefix: str) -> set[str]:
    """Every object under ``prefix``, listed by boto3, not through the library's filesystem."""
    pages = endpoint.client().get_paginator("list_objects_v2").paginate(Bucket=endpoint.bucket, Prefix=prefix)
    return {obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", [])}


def test_a_release_on_s3_is_a_folder_readers_open_and_a_rerun_replaces_it_whole(s3: S3Endpoint, tmp_path):
    import pyarrow.dataset as ds
    from datasets import load_dataset

    store = Store(f"s3://{s3.bucket}/release-test", _options(s3))
    plant(store)
    bench = tmp_path / "mine.jsonl"
    bench.write_text(json.dumps({"task_id": "mine/7", "question": USER_ITEM}) + "\n")
    files = [{"url": str(bench), "text_field": "question", "id_field": "task_id", "name": "mine"}]

    folder = _build(store, DAY1, end_date=DAY1, benchmark_files=files, max_shard_rows=4)
    report = json.loads(store.fs.cat_file(f"{folder}/report.json"))
    assert report["rows"] == 9  # as on local disk (test_release): dedup and decontamination the same
    first = _keys(s3, "release-test/releases/")
    assert {f"{DAY1}/README.md", f"{DAY1}/sft_config.yaml", f"{DAY1}/report.json"} <= first
    assert sorted(k for k in first if k.startswith(f"{DAY1}/data/")) == [
        f"{DAY1}/data/train-0000{n}-of-00003.parquet" for n in range(3)
    ]  # 9 rows in shards of 4
    assert not [k for k in first if k.startswith(("_staging", "_retired"))]

    dataset = ds.dataset(f"{folder}/data", format="parquet", filesystem=store.fs)
    assert dataset.count_rows() == 9
    hf = load_dataset("parquet", data_files=f"s3://{folder}/data/*.parquet", storage_options=_options(s3), split="train")
    assert hf.num_rows == 9 and hf[0]["messages"][0]["role"] == "user"

    # The same version again, now in one shard: the folder holds this build's files and nothing else.
    _build(store, DAY1, end_date=DAY1, benchmark_files=files, max_shard_rows=100)
    again = _keys(s3, "release-test/releases/")
    assert sorted(k for k in again if k.startswith(f"{DAY1}/data/")) == [f"{DAY1}/data/train-00000-of-00001.parquet"]
    assert not [k for k in again if k.startswith(("_staging", "_retired"))]
    assert ds.dataset(f"{folder}/data", format="parquet", filesystem=store.fs).count_rows() == 9

    # The next release deduplicates against this one through the bucket, like on local disk.
    second = _build(store, DAY2, benchmark_files=files)
    drops = {row["id"]: row for row in json.loads(store.fs.cat_file(f"{second}/report.json"))["dropped_rows"]}
    assert drops["merge-again"]["counterpart"] == "merge" and drops["merge-again"]["release"] == DAY1


def test_a_release_on_s3_pushes_to_the_hub_streamed_from_the_bucket(s3: S3Endpoint):
    from infinisynth.release import export

    store = Store(f"s3://{s3.bucket}/push-test", _options(s3))
    folder = export.write_release(
        store, DAY1, {"data/train-00000-of-00001.parquet": _table(3)}, {"README.md": "---\nlicense: apache-2.0\n---\n"}
    )
    sent: dict[str, bytes] = {}

    class FakeApi:  # HfApi's calls, recorded: no network
        def __init__(self, token: str):
            assert token == "hf_secret"

        def create_repo(self, repo_id: str, **kwargs: Any) -> None:
            pass

        def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> Any:
            for op in operations:
                with op.as_file() as source:  # what the upload reads
                    sent[op.path_in_repo] = source.read()
            return type("Commit", (), {"oid": "abc"})()

        def create_tag(self, repo_id: str, **kwargs: Any) -> None:
            pass

    pushed = export.push_to_hub(store, folder, "org/release", "hf_secret", version=DAY1, api_factory=FakeApi)
    assert pushed["files"] == ["README.md", "data/train-00000-of-00001.parquet"]
    assert sent == {name: store.fs.cat_file(f"{folder}/{name}") for name in pushed["files"]}  # byte for byte from the bucket


def _table(rows: int) -> Any:
    import pyarrow as pa

    return pa.table({"id": [f"r{n}" for n in range(rows)]})
