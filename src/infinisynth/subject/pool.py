"""The instruction pool: any instruction data as one schema, the input of the subject pipeline.

Sources:

- ``"code_instruct"``: the code pipeline's latest committed ``dataset`` partition at or before
  ``ds`` (its rows keep their origin, and their id as parent and ``source_id``);
- a Parquet or JSON Lines file (path, URL or glob; ``.gz`` and other fsspec compressions
  inferred) with either a ``messages`` column (a list of ``{role, content}``, or ShareGPT's
  ``conversations`` of ``{from, value}``) or ``instruction`` / ``response`` columns (Alpaca's
  ``output`` and ``input`` too; ``input`` is appended to the instruction).

A file of the wrong shape is a ``ValueError`` naming the file and what is missing. A row that cannot
become a pool row (no user turn, messages that are not role/content objects, the same conversation
twice) is not dropped: :func:`read_pool` returns it in a rejected table with its reason.
"""

from __future__ import annotations

import itertools
import json
import posixpath
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from infinisynth.records import REJECTED_SCHEMA, canonical_json, content_id, schema_with
from infinisynth.stages.publish import MESSAGE_TYPE
from infinisynth.storage import Store

PIPELINE = "subject_instruct"
CODE_SOURCE = "code_instruct"
CODE_DATASET_STAGE = "dataset"
POOL_STAGE = "pool"

POOL_SCHEMA = schema_with(
    pa.field("instruction", pa.string(), nullable=False),  # the first user turn
    pa.field("response", pa.string(), nullable=False),  # the first assistant turn after it; may be ""
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # where the row came from (a label or URL)
    pa.field("source_id", pa.string()),  # the row's id in its source, or its row number there
)

INSTRUCTION_COLUMNS = ("instruction", "prompt", "problem")
RESPONSE_COLUMNS = ("response", "output", "answer")
MESSAGE_COLUMNS = ("messages", "conversations")
ROLE_NAMES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
    "system": "system",
}  # fmt: skip
BATCH_ROWS = 8_192


@dataclass
class PoolLoad:
    rows: pa.Table  # POOL_SCHEMA
    rejected: pa.Table  # REJECTED_SCHEMA, stage "pool"
    source: str  # the URL or partition actually read
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return self.rows.num_rows + self.rejected.num_rows


def load_pool(store: Store, source: str, ds: str, *, max_rows: int | None = None) -> pa.Table:
    """The pool rows of ``source`` (see the module doc); rejected rows: use :func:`read_pool`."""
    return read_pool(store, source, ds, max_rows=max_rows).rows


def read_pool(store: Store, source: str, ds: str, *, max_rows: int | None = None) -> PoolLoad:
    """Pool rows and rejected rows of ``source``; at most ``max_rows`` input rows are read."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if source == CODE_SOURCE:
        partition_url, records = _code_instruct_records(store, ds)
        return _build(records, partition_url, max_rows, keep_origin=True)
    return _build(_file_records(source), source, max_rows, keep_origin=False)


# -- sources -----------------------------------------------------------------------------------


def latest_code_dataset(store: Store, ds: str) -> str | None:
    """The newest committed ``code_instruct/dataset`` date at or before ``ds``, or None."""
    dates = store.committed_dates(CODE_SOURCE, CODE_DATASET_STAGE, at_or_before=ds)
    return dates[0] if dates else None


def _code_instruct_records(store: Store, ds: str) -> tuple[str, Iterator[dict[str, Any]]]:
    date = latest_code_dataset(store, ds)
    if date is None:
        where = store.url(posixpath.join(store.root, CODE_SOURCE, CODE_DATASET_STAGE))
        raise ValueError(f"{where}: no committed code_instruct dataset at or before {ds}; run the code_instruct DAG first")
    partition = store.partition(CODE_SOURCE, CODE_DATASET_STAGE, date)

    def records() -> Iterator[dict[str, Any]]:
        for batch in partition.iter_batches(columns=["id", "origin", "lang", "messages"], batch_size=BATCH_ROWS):
            yield from batch.to_pylist()

    return partition.url, records()


def _file_records(source: str) -> Iterator[dict[str, Any]]:
    fs, path = fsspec.core.url_to_fs(source)
    paths = sorted(fs.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not paths:
        raise ValueError(f"{source}: no file matches")
    for one in paths:
        if not fs.exists(one):
            raise ValueError(f"{source}: no such file")
        yield from _one_file(fs, one, source if len(paths) == 1 else one)


def _one_file(fs: fsspec.AbstractFileSystem, path: str, label: str) -> Iterator[dict[str, Any]]:
    name = path.lower()
    stem = name[: -len(".gz")] if name.endswith(".gz") else name
    if stem.endswith((".parquet", ".pq")):
        with fs.open(path, "rb") as fh:
            try:
                parquet = pq.ParquetFile(fh)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValueError(f"{label}: not a readable Parquet file ({exc})") from None
            _check_columns(parquet.schema_arrow.names, label)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()
    elif stem.endswith((".jsonl", ".ndjson", ".json")):
        yield from _json_records(fs, path, label)
    else:
        raise ValueError(f"{label}: unsupported file type (expected .parquet, .jsonl, .ndjson or .json, optionally compressed)")


def _json_records(fs: fsspec.AbstractFileSystem, path: str, label: str) -> Iterator[dict[str, Any]]:
    with fs.open(path, "rt", encoding="utf-8", compression="infer") as fh:
        first = ""
        while not first:
            ch = fh.read(1)
            if not ch:
                return  # an empty file is an empty pool
            first = ch.strip()
        if first == "[":  # one JSON array
            try:
                values = json.loads("[" + fh.read())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{label}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            lines: Iterator[tuple[int, Any]] = enumerate(values, start=1)
        else:
            lines = _json_lines(first + fh.readline(), fh, label)
        checked = False
        for number, value in lines:
            if not isinstance(value, dict):
                raise ValueError(f"{label}: record {number} is a {type(value).__name__}, not an object")
            if not checked:
                _check_columns(list(value), label)
                checked = True
            yield value


def _json_lines(first_line: str, fh: Any, label: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(itertools.chain([first_line], fh), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{label}: line {number} is not valid JSON ({exc.msg})") from None


def _check_columns(columns: list[str], label: str) -> None:
    if any(c in columns for c in MESSAGE_COLUMNS):
        return
    if any(c in columns for c in INSTRUCTION_COLUMNS):
        return
    raise ValueError(
        f"{label}: no conversation columns: expected 'messages' (or 'conversations'), or 'instruction' "
        f"(or 'prompt'/'problem') with 'response' (or 'output'/'answer'); the data has {sorted(columns)}"
    )


# -- rows --------------------------------------------------------------------------------------


class _BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _build(records: Iterator[dict[str, Any]], source: str, max_rows: int | None, *, keep_origin: bool) -> PoolLoad:
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    first_row: dict[str, int] = {}
    for number, record in enumerate(records):
        if max_rows is not None and number >= max_rows:
            break
        try:
            row = _pool_row(record, source, number, keep_origin=keep_origin)
        except _BadRow as bad:
            rejected.append(_rejected(record, source, number, bad.reason, str(bad)))
            continue
        if row["id"] in first_row:
            detail = f"the same conversation as input row {first_row[row['id']]}"
            rejected.append(_rejected(record, source, number, "duplicate", detail, row_id=row["id"]))
            continue
        first_row[row["id"]] = number
        rows.append(row)
    return PoolLoad(
        rows=pa.Table.from_pylist(rows, schema=POOL_SCHEMA),
        rejected=pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA),
        source=source,
        rejected_by_reason=dict(Counter(r["reason"] for r in rejected).most_common()),
    )


def _pool_row(record: Mapping[str, Any], source: str, number: int, *, keep_origin: bool) -> dict[str, Any]:
    messages = _messages(record)
    instruction, response = _first_pair(messages)
    source_id = record.get("id")
    lang = record.get("lang")
    return {
        "id": content_id("pool", messages),
        "parent_ids": [str(source_id)] if keep_origin and source_id is not None else [],
        "origin": str(record.get("origin") or "seed") if keep_origin else "seed",
        "lang": str(lang) if lang not in (None, "") else None,
        "instruction": instruction,
        "response": response,
        "messages": messages,
        "source": source,
        "source_id": str(source_id) if source_id is not None else str(number),
    }


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    for column in MESSAGE_COLUMNS:
        if record.get(column) is not None:
            return _conversation(record[column])
    instruction = next((record[c] for c in INSTRUCTION_COLUMNS if record.get(c) is not None), None)
    if not isinstance(instruction, str) or not instruction.strip():
        raise _BadRow("no_instruction", "the instruction is missing or empty")
    extra = record.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction.rstrip()}\n\n{extra.strip()}"
    response = next((record[c] for c in RESPONSE_COLUMNS if record.get(c) is not None), "")
    if not isinstance(response, str):
        raise _BadRow("bad_response", f"the response is a {type(response).__name__}, not text")
    messages = [{"role": "user", "content": instruction.strip()}]
    if response.strip():
        messages.append({"role": "assistant", "content": response.strip()})
    return messages


def _conversation(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):  # some exports store the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _BadRow("bad_messages", "messages is a string that is not a JSON list") from None
    if not isinstance(value, list):
        raise _BadRow("bad_messages", f"messages is a {type(value).__name__}, not a list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping):
            raise _BadRow("bad_messages", f"turn {i} is a {type(turn).__name__}, not an object")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        mapped = ROLE_NAMES.get(str(role).lower()) if role is not None else None
        if mapped is None:
            raise _BadRow("bad_messages", f"turn {i} has role {role!r}; expected user/assistant/system (or human/gpt)")
        if not isinstance(content, str):
            raise _BadRow("bad_messages", f"turn {i} has no text content")
        turns.append({"role": mapped, "content": content.strip()})
    return turns


def _first_pair(messages: list[dict[str, str]]) -> tuple[str, str]:
    for i, turn in enumerate(messages):
        if turn["role"] == "user" and turn["content"]:
            reply = next((t["content"] for t in messages[i + 1 :] if t["role"] == "assistant"), "")
            return turn["content"], reply
    raise _BadRow("no_user_turn", "the conversation has no user turn with text")


def _rejected(record: Any, source: str, number: int, reason: str, detail: str, row_id: str | None = None) -> dict[str, Any]:
    return {
        "id": row_id or content_id("pool-input", source, number),
        "stage": POOL_STAGE,
        "reason": reason,
        "detail": f"{source} row {number}: {detail}",
        "raw_answer": None,
        "evidence_json": None,
        "input_json": canonical_json(record),
    }
