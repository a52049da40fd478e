"""The tagging stage against the scripted OpenAI server, run the way a mapped task runs it."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from infinisynth.llm import RoleConfig
from infinisynth.prompts import load_prompt
from infinisynth.shards import commit_stage, run_stage_shard
from infinisynth.storage import Store
from infinisynth.subject.pool import PIPELINE, POOL_SCHEMA
from infinisynth.subject.tagging import PROMPT, TAGGED_SCHEMA, Tag, Tagging, TaggingSettings, clean_tags

DS = "2026-03-01"


def pool_rows(*instructions: str) -> list[dict]:
    rows = [
        {"id": f"row{i}", "parent_ids": [], "origin": "seed", "lang": None, "instruction": text, "response": "ok",
         "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
         "source": "test", "source_id": str(i)}
        for i, text in enumerate(instructions)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=POOL_SCHEMA).to_pylist()


def role(server, mode: str = "json_schema") -> RoleConfig:
    return RoleConfig(
        role="tagger", base_url=server.base_url, model="scripted", structured_output=mode, max_retries=0, max_invalid_retries=1
    )


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "prompt"])
def test_tags_are_cleaned_and_rows_accounted(fresh_scripted, tmp_path, mode):
    fresh_scripted.script(
        [
            {
                "match": "Balance this redox equation",
                "actions": [
                    {
                        "json": {
                            "tags": [
                                {"tag": " Redox  Reactions. ", "explanation": "oxidation states"},
                                {"tag": '"stoichiometry"', "explanation": "balancing coefficients"},
                                {"tag": "redox reactions", "explanation": "repeat, other case"},
                                {"tag": "this is a whole sentence that is not a tag at all", "explanation": "too long"},
                            ]
                        }
                    }
                ],
            },
            {"match": "Say nothing", "actions": [{"json": {"tags": [{"tag": "   ", "explanation": "blank"}]}}]},
            {"match": "Garbage please", "actions": [{"content": "I cannot answer in JSON"}]},
            {"match": "Write a haiku", "actions": [{"json": {"tags": [{"tag": "poetry"}, {"tag": "haiku form"}]}}]},
        ]
    )
    store = Store(f"file://{tmp_path / 'data'}")
    rows = pool_rows("Balance this redox equation: Fe + O2", "Say nothing", "Garbage please", "Write a haiku about rain")
    prompt = load_prompt(PROMPT)

    result = run_stage_shard(store, PIPELINE, "tagging", DS, 0, rows, role(fresh_scripted, mode), lambda c: Tagging(c))
    funnel = commit_stage(store, PIPELINE, "tagging", DS, TAGGED_SCHEMA, [result.to_dict()])

    assert funnel["rows_in"] == 4 and funnel["rows_out"] == 2
    assert funnel["rejected_by_reason"] == {"no_tags": 1, "invalid_output": 1}
    tagged = {r["id"]: r for r in store.partition(PIPELINE, "tagging", DS).read().to_pylist()}
    assert tagged["row0"]["raw_tags"] == [
        {"tag": "Redox  Reactions".replace("  ", " "), "explanation": "oxidation states"},
        {"tag": "stoichiometry", "explanation": "balancing coefficients"},
    ]
    assert tagged["row0"]["messages"] == rows[0]["messages"]  # the pool row travels on unchanged
    assert json.loads(tagged["row0"]["provenance"])["tagging"]["prompt"] == prompt.version
    assert tagged["row3"]["raw_tags"] == [{"tag": "poetry", "explanation": ""}, {"tag": "haiku form", "explanation": ""}]
    rejected = store.rejected(PIPELINE, "tagging", DS).read().to_pylist()
    assert {r["id"] for r in rejected} == {"row1", "row2"}


def test_prompt_carries_instruction_and_limits():
    messages = load_prompt(PROMPT).render(instruction="Prove that sqrt(2) is irrational.", min_tags=2, max_tags=5)
    assert "Prove that sqrt(2) is irrational." in messages[-1]["content"]
    assert "Give 2 to 5 tags" in messages[-1]["content"]


def test_clean_tags_limits_words_and_characters():
    settings = TaggingSettings(max_tag_words=3, max_tag_chars=20)
    tags = [Tag(tag="graph theory"), Tag(tag="four words are too many"), Tag(tag="x" * 21), Tag(tag="Graph Theory")]
    assert clean_tags(tags, settings) == [{"tag": "graph theory", "explanation": ""}]
