"""The stage contract and a declared pipeline, exercised the way docs/ADDING_A_STAGE.md says to add a
stage: one class, one spec line, one prompt file (and a settings field when it has a knob)."""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from infinisynth.records import schema_with
from infinisynth.settings import role_config, store_for
from infinisynth.spec import PipelineSettings, PipelineSpec, Step, params_from_settings
from infinisynth.stages.base import GlobalStep, Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings, StepOutput
from infinisynth.steps import RunContext, commit_step, run_global_step, run_step_shard

DS = "2026-05-01"
ARTICLES = [f"Article {n}: the city council voted on the {n}th proposal about bicycle lanes." for n in range(5)]

PROMPT = '''
system = "You write headlines."
user = """
Write a headline of at most {{ max_words }} words for this text:

{{ text }}
"""
'''


# -- what a user writes to add a stage -----------------------------------------------------------


class HeadlineAnswer(BaseModel):
    headline: str = Field(min_length=1)


class HeadlineSettings(StageSettings):
    max_words: int = 8


class Headline(ModelStage):
    name = "headline"
    schema = schema_with(pa.field("text", pa.string()), pa.field("headline", pa.string()), pa.field("provenance", pa.string()))
    prompt = "test_headline"
    role = "generator"
    Settings = HeadlineSettings
    answer = HeadlineAnswer
    settings: HeadlineSettings

    def format_input(self, row: Row) -> Messages:
        return self.template.render(text=row["text"], max_words=self.settings.max_words)

    def format_output(self, row: Row, answer: HeadlineAnswer) -> Outcome:
        words = answer.headline.split()
        if len(words) > self.settings.max_words:
            return Rejected("too_long", f"{len(words)} words; at most {self.settings.max_words}", raw_answer=answer.headline)
        return Passed([self.annotate(row, headline=answer.headline)])


# -- a tiny pipeline around it -------------------------------------------------------------------

ARTICLE_SCHEMA = schema_with(pa.field("text", pa.string()), pa.field("headline", pa.string()), pa.field("provenance", pa.string()))


class Articles(GlobalStep):
    name = "articles"
    schema = ARTICLE_SCHEMA

    def run(self) -> StepOutput:
        rows = [{"id": f"a{n}", "parent_ids": [], "origin": "seed", "lang": None, "text": t} for n, t in enumerate(ARTICLES)]
        return StepOutput(pa.Table.from_pylist(rows, schema=ARTICLE_SCHEMA), len(rows), meta={"source": "the test"})


class TinySettings(PipelineSettings):
    shard_size: int = Field(2, gt=0, description="Rows per mapped task")
    max_headline_words: int = Field(8, ge=1, le=30, description="Longer headlines are rejected")


SPEC = PipelineSpec(
    "tiny",
    TinySettings,
    (
        Step("articles", "tests.test_stage_contract:Articles", "global"),
        Step("headline", "tests.test_stage_contract:Headline", upstream=("articles",), settings={"max_words": "max_headline_words"}),
    ),
)


def test_a_stage_defined_here_runs_in_a_declared_pipeline_with_its_funnel(fresh_scripted, headline_prompt, tmp_path):
    fresh_scripted.script(
        [
            {"match": "Article 3:", "actions": [{"json": {"headline": "one two three four five six seven eight nine ten"}}]},
            {"match": "Write a headline", "actions": [{"json": {"headline": "Council votes on bike lanes"}}]},
        ]
    )
    connection = {"host": fresh_scripted.base_url, "extra": {"model": "scripted"}}
    ctx = RunContext(
        SPEC, store_for(f"file://{tmp_path / 'data'}"), DS, TinySettings(), roles=lambda r: role_config(r, lambda _: connection)
    )

    shards = run_global_step(ctx, "articles")
    assert [s["rows"] for s in shards] == [2, 2, 1]  # shard_size rows per mapped task
    results = [run_step_shard(ctx, "headline", shard) for shard in shards]
    commit_step(ctx, "headline", results)

    manifest = ctx.partition("headline").manifest()
    funnel = manifest.meta["funnel"]
    assert (funnel["rows_in"], funnel["rows_out"], funnel["rejected"]) == (5, 4, 1)
    assert funnel["rejected_by_reason"] == {"too_long": 1}
    assert funnel["usage"]["generator/headline"]["requests"] == 5
    assert set(manifest.meta["prompt_versions"]) == {"test_headline"}
    rejected = ctx.store.rejected("tiny", "headline", DS).read().to_pylist()
    assert [r["id"] for r in rejected] == ["a3"] and "Article 3" in json.loads(rejected[0]["input_json"])["text"]
    kept = ctx.partition("headline").read().to_pylist()
    assert {r["headline"] for r in kept} == {"Council votes on bike lanes"}
    assert json.loads(kept[0]["provenance"])["headline"]["prompt"].startswith("test_headline@")
    # The global step's own funnel, through the same commit.
    assert ctx.partition("articles").manifest().meta["funnel"]["rows_out"] == 5


def test_one_cache_key_covers_prompt_role_config_and_settings(headline_prompt):
    from infinisynth.llm import LLMClient, RoleConfig

    config = RoleConfig(role="generator", base_url="http://127.0.0.1:9/v1", model="m")
    row = {"id": "a0", "text": "x"}
    base = Headline(LLMClient(config)).cache_key(row)
    assert Headline(LLMClient(config)).cache_key(row) == base
    assert Headline(LLMClient(config), HeadlineSettings(max_words=3)).cache_key(row) != base
    assert Headline(LLMClient(config.with_overrides(temperature=0.1))).cache_key(row) != base
    assert Headline(LLMClient(config.with_overrides(max_tokens=77))).cache_key(row) != base
    assert Headline(LLMClient(config.with_overrides(max_concurrency=99))).cache_key(row) == base  # limits do not change answers
    (headline_prompt / "test_headline.toml").write_text(PROMPT + "\n# edited\n")
    assert Headline(LLMClient(config), prompt_dir=str(headline_prompt)).cache_key(row) != base
    with pytest.raises(TypeError, match="takes HeadlineSettings"):
        Headline(LLMClient(config), TinySettings())


def test_params_come_from_the_settings_model():
    params = params_from_settings(TinySettings)
    # Every pipeline's settings carry the base knobs: storage, the transient bound, the response cache, streaming.
    base = {
        "storage_root",
        "max_transient_share",
        "response_cache",
        "response_cache_max_gb",
        "stream_chains",
        "estimate",
        "estimate_sample",
    }
    assert set(params) == base | {"shard_size", "max_headline_words"}
    assert params["max_transient_share"].value == 0.02
    assert (params["max_transient_share"].schema["minimum"], params["max_transient_share"].schema["maximum"]) == (0, 1)
    assert params["response_cache"].value is True and params["response_cache"].schema["type"] == "boolean"
    assert params["max_headline_words"].value == 8
    assert params["max_headline_words"].schema == {"type": "integer", "minimum": 1, "maximum": 30}
    assert params["max_headline_words"].description == "Longer headlines are rejected"
    # Optional strings may be left empty in the trigger form.
    assert params["storage_root"].value is None and params["storage_root"].schema["type"] == ["null", "string"]


def test_a_setting_with_fixed_choices_is_a_dropdown_that_refuses_other_values():
    from airflow.sdk.definitions.param import ParamValidationError

    class GateSettings(PipelineSettings):
        gate: Literal["off", "report", "enforce"] = Field("report", description="What the gate does")
        level: Literal[1, 2, 3] | None = None

    params = params_from_settings(GateSettings)
    assert params["gate"].schema["enum"] == ["off", "report", "enforce"] and params["gate"].schema["type"] == "string"
    assert params["gate"].resolve() == "report" and params["gate"].resolve("enforce") == "enforce"
    with pytest.raises(ParamValidationError, match="is not one of"):
        params["gate"].resolve("strict")  # a typo fails the trigger, not the night's task
    assert params["level"].schema == {"type": ["null", "integer"], "enum": [None, 1, 2, 3]}
    assert params["level"].resolve() is None and params["level"].resolve(2) == 2
    with pytest.raises(ParamValidationError):
        params["level"].resolve(4)


def test_a_spec_refuses_wiring_it_cannot_run():
    with pytest.raises(ValueError, match="not an earlier step"):
        PipelineSpec("bad", TinySettings, (Step("headline", "x:Y", upstream=("articles",)), Step("articles", "x:Z", "global")))
    with pytest.raises(ValueError, match="needs an upstream"):
        PipelineSpec("bad", TinySettings, (Step("headline", "x:Y"),))
    with pytest.raises(ValueError, match="must read the same upstream"):
        PipelineSpec(
            "bad",
            TinySettings,
            (
                Step("a", "x:A", "global"),
                Step("b", "x:B", "global"),
                Step("c", "x:C", upstream=("a", "b")),
                Step("d", "x:D", upstream=("b",)),
            ),
        )
