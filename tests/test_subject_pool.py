"""Pool loading: every accepted shape becomes the same rows; bad rows are rejected, never dropped."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infinisynth.records import content_id
from infinisynth.stages.publish import MESSAGE_TYPE
from infinisynth.storage import Store
from infinisynth.subject.pool import POOL_SCHEMA, load_pool, read_pool


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"file://{tmp_path / 'data'}")


def write_jsonl(path, records, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
    return str(path)


def test_messages_jsonl_takes_first_user_and_assistant_turns(store, tmp_path):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " What is a monad? "},
        {"role": "assistant", "content": "A monoid in the category of endofunctors."},
        {"role": "user", "content": "Simpler, please."},
        {"role": "assistant", "content": "A wrapper with bind."},
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a1", "messages": conversation, "lang": "en"}])

    rows = load_pool(store, path, "2026-01-01")

    assert rows.schema == POOL_SCHEMA
    row = rows.to_pylist()[0]
    assert row["instruction"] == "What is a monad?"
    assert row["response"] == "A monoid in the category of endofunctors."
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["source_id"] == "a1" and row["lang"] == "en" and row["origin"] == "seed"
    # the id is a hash of the (normalised) conversation: the same content anywhere gets the same id
    assert row["id"] == content_id("pool", row["messages"])


def test_alpaca_parquet_and_sharegpt_jsonl_give_the_same_row(store, tmp_path):
    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(pa.table({"instruction": ["Sort the list."], "input": ["3, 1, 2"], "output": ["1, 2, 3"]}), alpaca)
    sharegpt = write_jsonl(
        tmp_path / "sharegpt.jsonl.gz",
        [{"conversations": [{"from": "human", "value": "Sort the list.\n\n3, 1, 2"}, {"from": "gpt", "value": "1, 2, 3"}]}],
        opener=gzip.open,
    )

    a = load_pool(store, str(alpaca), "2026-01-01").to_pylist()[0]
    b = load_pool(store, sharegpt, "2026-01-01").to_pylist()[0]

    assert a["instruction"] == "Sort the list.\n\n3, 1, 2"
    assert a["response"] == "1, 2, 3"
    assert a["id"] == b["id"]
    assert (
        a["messages"]
        == b["messages"]
        == [
            {"role": "user", "content": "Sort the list.\n\n3, 1, 2"},
            {"role": "assistant", "content": "1, 2, 3"},
        ]
    )


def test_bad_rows_are_rejected_with_reasons_and_nothing_is_lost(store, tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]},
        {"messages": [{"role": "assistant", "content": "Hello"}]},  # no user turn
        {"messages": [{"role": "wizard", "content": "hi"}]},  # unknown role
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]},  # duplicate
        {"messages": [{"role": "user", "content": "Only a question"}]},  # fine: response may be empty
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)

    loaded = read_pool(store, path, "2026-01-01")

    assert loaded.rows_in == len(records)
    assert loaded.rows.column("instruction").to_pylist() == ["Name a prime.", "Only a question"]
    assert loaded.rows.column("response").to_pylist() == ["7", ""]
    assert loaded.rejected_by_reason == {"bad_messages": 2, "no_user_turn": 1, "duplicate": 1}
    rejected = {r["reason"]: r for r in loaded.rejected.to_pylist()}
    assert "row 4" in rejected["duplicate"]["detail"] and "input row 0" in rejected["duplicate"]["detail"]
    assert json.loads(rejected["no_user_turn"]["input_json"]) == records[1]


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("wrong.jsonl", '{"question": "q", "reply": "r"}\n', "no conversation columns"),
        ("broken.jsonl", '{"messages": []}\n{not json}\n', "line 2 is not valid JSON"),
        ("pool.csv", "instruction,response\n", "unsupported file type"),
        ("scalar.json", "[1, 2]", "record 1 is a int"),
    ],
)
def test_wrong_shapes_are_clear_errors_naming_the_file(store, tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_pool(store, str(path), "2026-01-01")
    assert str(path) in str(info.value)


def test_missing_file_and_max_rows(store, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_pool(store, str(tmp_path / "absent.jsonl"), "2026-01-01")
    path = write_jsonl(tmp_path / "many.jsonl", [{"instruction": f"task {i}", "response": "ok"} for i in range(10)])
    assert load_pool(store, path, "2026-01-01", max_rows=3).column("instruction").to_pylist() == ["task 0", "task 1", "task 2"]


def _commit_code_dataset(store: Store, ds: str, problems: list[str]) -> None:
    schema = pa.schema([("id", pa.string()), ("origin", pa.string()), ("lang", pa.string()), ("messages", pa.list_(MESSAGE_TYPE))])
    rows = [
        {"id": f"{ds}-{i}", "origin": "reverse", "lang": "python",
         "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": f"def solve(): ...  # {p}"}]}
        for i, p in enumerate(problems)
    ]  # fmt: skip
    store.partition("code_instruct", "dataset", ds).write_and_commit(pa.Table.from_pylist(rows, schema=schema))


def test_code_instruct_source_reads_the_latest_dataset_at_or_before_ds(store):
    _commit_code_dataset(store, "2026-01-01", ["Parse a CSV file."])
    _commit_code_dataset(store, "2026-01-05", ["Merge two sorted lists.", "Reverse a string."])
    store.partition("code_instruct", "dataset", "2026-01-04").fs.makedirs(
        store.partition("code_instruct", "dataset", "2026-01-04").path, exist_ok=True
    )  # a half-written partition (no manifest) is not a candidate

    rows = load_pool(store, "code_instruct", "2026-01-04").to_pylist()
    assert [r["instruction"] for r in rows] == ["Parse a CSV file."]
    assert rows[0]["origin"] == "reverse" and rows[0]["lang"] == "python"
    assert rows[0]["parent_ids"] == ["2026-01-01-0"] and rows[0]["source_id"] == "2026-01-01-0"
    assert "ds=2026-01-01" in rows[0]["source"]

    assert len(load_pool(store, "code_instruct", "2026-01-05")) == 2
    with pytest.raises(ValueError, match="no committed code_instruct dataset at or before 2025-12-31"):
        load_pool(store, "code_instruct", "2025-12-31")
