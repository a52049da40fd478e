"""The training release, declared: the pipelines' datasets of a date range -> one versioned release.

    candidates (every pipeline's published rows + rows kept back for variants)
      -> deduplicated (exact, near, semantic; within and against every other release)
      -> decontaminated (HumanEval and the user's benchmarks: 13-grams, embeddings)
      -> release (the Hugging Face folder: shards, card, SFT config, report, variants; optional Hub push)

Partitions are keyed by the release's version (``{root}/release/{stage}/ds={version}/``); the
folder a trainer reads is ``{root}/releases/{version}/``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from infinisynth.spec import PipelineSettings, PipelineSpec, Step

PIPELINE = "release"
BENCHMARKS_VARIABLE = "release_benchmarks"  # an Airflow Variable: JSON list of benchmark files, added to the Param's
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ReleaseSettings(PipelineSettings):
    """A release run's settings: every field is a Param of the DAG."""

    start_date: str | None = Field(
        None, description="First partition date (YYYY-MM-DD) to include; empty = the day after the previous release's end_date"
    )
    end_date: str | None = Field(None, description="Last partition date to include; empty = the run's date")
    version: str | None = Field(None, description="The release's version (folder name); empty = end_date. A re-run replaces it")
    pipelines: list[str] = Field(
        default_factory=lambda: ["code_instruct", "subject_instruct", "diagnosis"], description="Pipelines whose datasets are released"
    )
    near_duplicate_threshold: float = Field(
        0.7, gt=0, le=1, description="Near duplicates: MinHash Jaccard estimate of instructions (word 3-shingles) at least this"
    )
    semantic_duplicate_threshold: float = Field(
        0.92,
        gt=0,
        le=1,
        description="Semantic duplicates: MiniLM cosine of instructions at least this (measured: rewordings 0.96+, "
        "distinct problems on one topic up to 0.89)",
    )
    dedup_against_releases: bool = Field(True, description="Also drop rows duplicating a row of any other release in storage")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval"], description="Built-in evaluation benchmarks to decontaminate against"
    )
    benchmark_files: list[dict[str, Any]] = Field(
        default_factory=list,
        description='More benchmarks: [{"url": "s3://b/mbpp.jsonl", "text_field": "text", "id_field": "task_id", "name": "mbpp"}] '
        f"(Parquet/JSONL, any fsspec URL); the Variable {BENCHMARKS_VARIABLE} adds more. An unreadable file fails the run",
    )
    decontam_ngram: int = Field(13, ge=5, le=50, description="Word n-gram length of the overlap screen (13: the common standard)")
    decontam_ngram_overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Drop a row sharing this share of the smaller side's n-grams with a benchmark item (0 = any shared n-gram)",
    )
    decontam_max_cosine: float = Field(
        0.75, gt=0, le=1, description="Drop a row whose prompt has MiniLM cosine at least this to a benchmark item"
    )
    decontam_max_cosine_response: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Drop a row whose responses have MiniLM cosine at least this to a benchmark item's prompt + solution "
        "(measured: a restated HumanEval solution 0.93+, HumanEval items against each other up to 0.9 at the 99th percentile)",
    )
    quality_thresholds: list[float] = Field(
        default_factory=lambda: [4.0, 5.0, 6.0, 7.0],
        description="Variants: one export per quality threshold (Infinite-Instruct's ablation)",
    )
    mixes: list[str] = Field(
        default_factory=lambda: ["100/0", "50/50", "70/30", "0/100"], description="Variants: reverse/backfeed mixes in percent"
    )
    lint_variant: bool = Field(True, description="Variant lint_unfiltered: the release plus the pairs the lint gate rejected")
    license: str = Field("other", min_length=1, description="The dataset card's license (a Hub license id, e.g. apache-2.0)")
    max_shard_rows: int = Field(100_000, gt=0, description="Rows per Parquet shard of the release folder")
    sft_model: str = Field("Qwen/Qwen2.5-Coder-7B", min_length=1, description="model_name_or_path of the exported TRL SFT config")
    push_to_hub: bool = Field(False, description="Upload the release folder to the Hugging Face Hub (hub_repo_id, token in hub_conn_id)")
    hub_repo_id: str | None = Field(None, description="The Hub dataset repo, e.g. org/infinisynth-code")
    hub_conn_id: str = Field("huggingface_hub", description="Connection whose password is the Hub token")
    hub_private: bool = Field(True, description="Create the Hub repo private")

    @field_validator("start_date", "end_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value not in (None, "") and not _DATE.match(str(value)):
            raise ValueError(f"a date is YYYY-MM-DD, not {value!r}")
        return value or None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value not in (None, "") and not _VERSION.match(str(value)):
            raise ValueError(f"a version is letters, digits, '.', '_' and '-', not {value!r}")
        return value or None

    @model_validator(mode="after")
    def _hub(self) -> ReleaseSettings:
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub needs hub_repo_id (the Hub dataset repo, e.g. org/name)")
        return self


_RELEASE = "infinisynth.pipelines.release"

SPEC = PipelineSpec(
    PIPELINE,
    ReleaseSettings,
    (
        Step("candidates", f"{_RELEASE}:GatherCandidates", "global", task="gather_candidates"),
        Step("deduplicated", f"{_RELEASE}:Deduplicate", "global", upstream=("candidates",), task="deduplicate"),
        Step("decontaminated", f"{_RELEASE}:Decontaminate", "global", upstream=("deduplicated",), task="decontaminate"),
        Step("release", f"{_RELEASE}:Export", "global", upstream=("decontaminated",), task="export_release", in_funnel=False),
    ),
    context=f"{_RELEASE}:run_context",
)
