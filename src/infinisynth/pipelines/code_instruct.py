"""Infinite-Instruct, the code-instruction pipeline, as task bodies for ``dags/code_instruct.py``.

    seeds -> reverse -> keywords -> [knowledge graph -> combinations] -> backfeed
          -> quality (reverse + backfeed problems) -> respond -> verify (static lint gate) -> publish

Mapped tasks take a shard descriptor ``{"stage", "shard", "file", "rows"}`` naming one data file of
the stage they read; reduce tasks commit a stage and hand out the next stage's shards. Everything
here takes plain values and returns paths and counts, never datasets.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from statistics import fmean
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from infinisynth import knowledge_graph as kg
from infinisynth import seeds
from infinisynth.holdout import split_holdout, write_holdout
from infinisynth.llm import LLMClient, RoleConfig
from infinisynth.prompts import load_prompt
from infinisynth.records import canonical_json, content_id
from infinisynth.runner import Stage
from infinisynth.settings import ConnectionLookup, env_connection, lint_service_url
from infinisynth.shards import commit_stage, funnel_table, run_stage_shard
from infinisynth.stages import verify
from infinisynth.stages.backfeed import COMBINATION_SCHEMA, BackfeedConstruction
from infinisynth.stages.keywords import KeywordExtraction
from infinisynth.stages.problems import ProblemChecks
from infinisynth.stages.publish import DATASET_SCHEMA, SFT_DEFAULTS, to_chat_rows
from infinisynth.stages.quality import QualityAssessment, QualitySettings
from infinisynth.stages.respond import ResponseGeneration
from infinisynth.stages.reverse import ReverseConstruction, ReverseSettings
from infinisynth.storage import Store
from infinisynth.verify.gate import LocalGate
from infinisynth.verify.model import Gate

log = logging.getLogger(__name__)

PIPELINE = "code_instruct"
SEED_STAGE = "seeds"
REVERSE_STAGE = "reverse"
KEYWORD_STAGE = "keywords"
COMBINATION_STAGE = "combinations"
BACKFEED_STAGE = "backfeed"
QUALITY_STAGE = "quality"
SEED_QUALITY_STAGE = "seed_quality"  # the judge on the seeds' own problems (Magicoder files have them)
RESPOND_STAGE = "respond"
VERIFY_STAGE = "verify"
DATASET_STAGE = "dataset"
MODEL_STAGES = (REVERSE_STAGE, KEYWORD_STAGE, BACKFEED_STAGE, QUALITY_STAGE, RESPOND_STAGE)

PROMPTS = {
    REVERSE_STAGE: "reverse_construction",
    KEYWORD_STAGE: "keyword_extraction",
    BACKFEED_STAGE: "backfeed_construction",
    QUALITY_STAGE: "quality_assessment",
    SEED_QUALITY_STAGE: "quality_assessment",
    RESPOND_STAGE: "response",
}
# Which role each model-calling stage uses.
ROLES = {
    REVERSE_STAGE: "generator",
    KEYWORD_STAGE: "generator",
    BACKFEED_STAGE: "generator",
    QUALITY_STAGE: "judge",
    SEED_QUALITY_STAGE: "judge",
    RESPOND_STAGE: "generator",
}


class CodeInstructSettings(BaseModel):
    """A run's settings: the DAG's Params, validated once, with the paper's defaults."""

    model_config = ConfigDict(extra="ignore")

    seed_source: str = "mine"  # 'mine' or a Magicoder-OSS-Instruct-shaped Parquet/JSONL path
    seed_roots: list[str] = Field(default_factory=list)
    seed_languages: list[str] = Field(default_factory=list)
    max_seeds: int = Field(200, gt=0)
    shard_size: int = Field(50, gt=0)
    mining_seed: int = 0
    problems_per_seed: int = Field(1, ge=1, le=10)
    backfeed_ratio: float = Field(0.67, ge=0)  # backfeed problems per reverse problem (paper: 20K / 30K)
    backfeed_languages: list[str] = Field(default_factory=list)  # empty = the seeds' language mix
    reuse_graph: bool = True  # grow the knowledge graph from the latest earlier night's
    sampling_seed: int = 0
    quality_samples: int = Field(3, ge=1)
    quality_threshold: float = Field(6.0, ge=1, le=10)
    min_problem_chars: int = Field(40, ge=1)
    generator_model: str = ""
    generator_temperature: float | None = Field(None, ge=0, le=2)
    generator_max_tokens: int | None = Field(None, gt=0)
    judge_model: str = ""
    judge_temperature: float | None = Field(None, ge=0, le=2)
    lint_gate: bool = True  # off: answers are published unchecked (lint_reason = not_checked)
    lint_max_code_bytes: int = Field(256 * 1024, gt=0)
    lint_timeout_scale: float = Field(1.0, gt=0)
    score_seed_problems: bool = True  # judge the seeds' own problems too, for the complexity report
    holdout_fraction: float = Field(0.05, ge=0, lt=1)  # the diagnosis loop's exam, never exported

    def role_overrides(self, role: str) -> dict[str, Any]:
        if role == "judge":
            return {"model": self.judge_model or None, "temperature": self.judge_temperature}
        return {"model": self.generator_model or None, "temperature": self.generator_temperature, "max_tokens": self.generator_max_tokens}


RoleResolver = Callable[[str], RoleConfig]


# -- seeds -------------------------------------------------------------------------------------


def prepare_seeds(store: Store, ds: str, settings: CodeInstructSettings) -> list[dict[str, Any]]:
    """Load or mine the night's seeds into the ``seeds`` partition, one file per shard."""
    stats = seeds.SeedStats()
    if settings.seed_source == "mine":
        roots = settings.seed_roots or [str(p) for p in seeds.default_seed_roots()]
        table = seeds.mine_snippets(
            roots, max_snippets=settings.max_seeds, languages=settings.seed_languages or None, seed=settings.mining_seed, stats=stats
        )
        source = f"mined from {', '.join(roots)}"
    else:
        table = seeds.load_magicoder(settings.seed_source, max_rows=settings.max_seeds, stats=stats)
        if settings.seed_languages:
            table = table.filter(pc.is_in(table["lang"], value_set=pa.array(settings.seed_languages)))
        source = settings.seed_source
    if table.num_rows == 0:
        raise ValueError(f"no seeds from {source} (languages: {settings.seed_languages or 'all'})")
    languages = dict(sorted(Counter(table.column("lang").to_pylist()).items()))
    _write_shards(store, ds, SEED_STAGE, table, settings.shard_size, {"source": source, "languages": languages, "stats": stats.__dict__})
    log.info("%d seeds from %s; languages %s; %s", table.num_rows, source, languages, stats)
    return shards_of(store, ds, SEED_STAGE)


# -- mapped model stages -----------------------------------------------------------------------


def run_model_stage(
    store: Store, ds: str, stage: str, shard: dict[str, Any], roles: RoleResolver, settings: CodeInstructSettings
) -> dict[str, Any]:
    """One shard of a model-calling stage (the body of every mapped task)."""
    rows = store.partition(PIPELINE, shard["stage"], ds).read_file(shard["file"]).to_pylist()
    if stage == SEED_QUALITY_STAGE:
        rows = seed_problems(rows) if settings.score_seed_problems else []
    role = roles(ROLES[stage]).with_overrides(**settings.role_overrides(ROLES[stage]))
    factory = _stage_factory(stage, settings)
    return run_stage_shard(store, PIPELINE, stage, ds, shard["shard"], rows, role, factory).to_dict()


def seed_problems(seed_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The problems that came with the seeds (a Magicoder file's ``problem`` column), shaped as
    problems of origin ``seed`` so the judge scores them like ours: the paper's baseline for
    complexity (seed 3.17 against reverse 5.85 and backfeed 6.83). Mined snippets have none."""
    return [
        {
            "id": content_id("seed_problem", row["id"]),
            "parent_ids": [row["id"]],
            "origin": "seed",
            "lang": row.get("lang"),
            "problem": row["seed_problem"],
            "seed": row["seed"],
            "provenance": "{}",
        }
        for row in seed_rows
        if (row.get("seed_problem") or "").strip()
    ]


def _stage_factory(stage: str, settings: CodeInstructSettings) -> Callable[[LLMClient], Stage]:
    prompt = load_prompt(PROMPTS[stage])
    checks = ProblemChecks(min_chars=settings.min_problem_chars)
    if stage == REVERSE_STAGE:
        reverse = ReverseSettings(problems_per_seed=settings.problems_per_seed, checks=checks)
        return lambda client: ReverseConstruction(client, prompt, reverse)
    if stage == KEYWORD_STAGE:
        return lambda client: KeywordExtraction(client, prompt)
    if stage == BACKFEED_STAGE:
        return lambda client: BackfeedConstruction(client, prompt, checks)
    if stage in (QUALITY_STAGE, SEED_QUALITY_STAGE):
        quality = QualitySettings(samples=settings.quality_samples, threshold=settings.quality_threshold)
        return lambda client: QualityAssessment(client, prompt, quality, name=stage)
    if stage == RESPOND_STAGE:
        return lambda client: ResponseGeneration(client, prompt)
    raise ValueError(f"{stage!r} is not a model-calling stage of {PIPELINE}")


_SCHEMAS = {
    REVERSE_STAGE: ReverseConstruction.schema,
    KEYWORD_STAGE: KeywordExtraction.schema,
    BACKFEED_STAGE: BackfeedConstruction.schema,
    QUALITY_STAGE: QualityAssessment.schema,
    SEED_QUALITY_STAGE: QualityAssessment.schema,
    RESPOND_STAGE: ResponseGeneration.schema,
}


def commit(
    store: Store, ds: str, stage: str, shard_results: list[dict[str, Any]], roles: RoleResolver, settings: CodeInstructSettings
) -> dict[str, Any]:
    """Publish every shard of ``stage`` at once, with its prompt version and role settings."""
    role = roles(ROLES[stage]).with_overrides(**settings.role_overrides(ROLES[stage]))
    meta = {"prompt_versions": {PROMPTS[stage]: load_prompt(PROMPTS[stage]).version}, "roles": {ROLES[stage]: role.public_dict()}}
    return commit_stage(store, PIPELINE, stage, ds, _SCHEMAS[stage], shard_results, meta=meta)


# -- the static verification gate (no model calls) ---------------------------------------------


def make_gate(settings: CodeInstructSettings, lookup: ConnectionLookup = env_connection) -> Gate:
    return verify.make_gate(lookup, max_code_bytes=settings.lint_max_code_bytes, timeout_scale=settings.lint_timeout_scale)


def run_verify(
    store: Store, ds: str, shard: dict[str, Any], settings: CodeInstructSettings, lookup: ConnectionLookup = env_connection
) -> dict[str, Any]:
    """One shard of answered problems through the lint gate (the body of the mapped gate task)."""
    rows = store.partition(PIPELINE, shard["stage"], ds).read_file(shard["file"]).to_pylist()
    gate = make_gate(settings, lookup) if settings.lint_gate else LocalGate()
    stage = verify.StaticVerification(gate, verify.VerifySettings(enabled=settings.lint_gate))
    return verify.run_verify_shard(store, PIPELINE, ds, shard["shard"], rows, stage)


def commit_verify(
    store: Store, ds: str, shard_results: list[dict[str, Any]], settings: CodeInstructSettings, lookup: ConnectionLookup = env_connection
) -> dict[str, Any]:
    """Publish the gate's shards with the discard rate per language in the manifest and the log."""
    gate = make_gate(settings, lookup)
    where = lint_service_url(lookup) or "in-process"
    return verify.commit_verified(store, PIPELINE, ds, shard_results, gate, enabled=settings.lint_gate, where=where)


# -- the knowledge graph (reduce, then fan out) -------------------------------------------------


def plan_backfeed(store: Store, ds: str, settings: CodeInstructSettings) -> list[dict[str, Any]]:
    """Build the night's knowledge graph from every keyword row, save it, sample combinations."""
    keyword_rows = store.partition(PIPELINE, KEYWORD_STAGE, ds).read()
    previous = kg.latest_graph_before(store, PIPELINE, ds) if settings.reuse_graph else None
    graph, stats = kg.build_graph(keyword_rows, ds=ds, previous=previous)
    reverse_rows = store.partition(PIPELINE, REVERSE_STAGE, ds).manifest().rows
    wanted = round(settings.backfeed_ratio * reverse_rows)
    combinations = kg.sample_combinations(graph, wanted, seed=settings.sampling_seed) if wanted else []
    kg.save_graph(store, PIPELINE, ds, graph)  # after sampling: node usage is part of the graph
    languages = _language_weights(store, ds, settings)
    rng = random.Random(settings.sampling_seed)
    rows = [
        {
            "id": c.id,
            "parent_ids": [],
            "origin": "backfeed",
            "lang": rng.choices(list(languages), weights=list(languages.values()))[0],
            "task": c.task,
            "instruction": c.instruction,
            "knowledge": c.knowledge,
            "coherence": c.coherence,
        }
        for c in combinations
    ]
    table = pa.Table.from_pylist(rows, schema=COMBINATION_SCHEMA)
    summary = kg.graph_summary(graph)
    _write_shards(
        store, ds, COMBINATION_STAGE, table, settings.shard_size, {"graph": summary, "graph_build": asdict(stats), "wanted": wanted}
    )
    log.info(
        "knowledge graph: %s nodes, %s edges (grown from %s); %d of %d wanted combinations",
        summary.get("nodes"),
        summary.get("edges"),
        "an earlier night" if previous is not None else "nothing",
        len(rows),
        wanted,
    )
    return shards_of(store, ds, COMBINATION_STAGE)


def _language_weights(store: Store, ds: str, settings: CodeInstructSettings) -> dict[str, float]:
    if settings.backfeed_languages:
        return {lang: 1.0 for lang in settings.backfeed_languages}
    counts = Counter(store.partition(PIPELINE, SEED_STAGE, ds).read(columns=["lang"]).column("lang").to_pylist())
    return {str(lang): float(n) for lang, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}


# -- publishing ---------------------------------------------------------------------------------


def publish(store: Store, ds: str, settings: CodeInstructSettings) -> dict[str, Any]:
    """Chat-format rows from every verified pair, less the held-out slice, with the night's funnel
    and complexity report."""
    answered = store.partition(PIPELINE, VERIFY_STAGE, ds).read()
    # The held-out slice (the deficiency-diagnosis loop's exam) never enters the training export.
    dataset, held_out = split_holdout(to_chat_rows(answered), settings.holdout_fraction)
    write_holdout(store, PIPELINE, ds, held_out, {"rows_total": dataset.num_rows + held_out.num_rows})
    funnel = night_funnel(store, ds)
    complexity = complexity_by_origin(store, ds)
    meta = {
        "pipeline": PIPELINE,
        "stage": DATASET_STAGE,
        "ds": ds,
        "funnel": funnel,
        "complexity_by_origin": complexity,
        "held_out": {"rows": held_out.num_rows, "fraction": settings.holdout_fraction},
        "sft": SFT_DEFAULTS,
    }
    store.partition(PIPELINE, DATASET_STAGE, ds).write_and_commit(dataset, meta=meta, schema=DATASET_SCHEMA)
    log.info("code_instruct %s funnel\n%s", ds, funnel_table(funnel))
    verify_meta = store.partition(PIPELINE, VERIFY_STAGE, ds).manifest().meta
    log.info("lint gate discard rate by language\n%s", verify.discard_table(verify_meta.get("discard_by_language", {})))
    log.info("complexity by origin (paper: seed 3.17, reverse 5.85, backfeed 6.83): %s", canonical_json(complexity))
    return {"partition": store.partition(PIPELINE, DATASET_STAGE, ds).url, "rows": dataset.num_rows, "held_out": held_out.num_rows}


def night_funnel(store: Store, ds: str) -> list[dict[str, Any]]:
    seeds_rows = store.partition(PIPELINE, SEED_STAGE, ds).manifest().rows
    entries = [
        {
            "stage": SEED_STAGE,
            "rows_in": seeds_rows,
            "inputs_passed": seeds_rows,
            "rows_out": seeds_rows,
            "rejected": 0,
            "rejected_by_reason": {},
            "usage": {},
        }
    ]
    for stage in (*MODEL_STAGES, VERIFY_STAGE):
        partition = store.partition(PIPELINE, stage, ds)
        if partition.exists():
            meta = partition.manifest().meta
            by_language = {"discard_by_language": meta["discard_by_language"]} if "discard_by_language" in meta else {}
            entries.append({**meta["funnel"], **by_language})
    return entries


def complexity_by_origin(store: Store, ds: str) -> dict[str, dict[str, float]]:
    """Mean judge complexity per origin over every assessed problem, kept or rejected."""
    values: dict[str, list[float]] = {}
    for stage in (SEED_QUALITY_STAGE, QUALITY_STAGE):
        if not store.partition(PIPELINE, stage, ds).exists():
            continue  # seed problems are scored only when the seeds have them
        scored = store.partition(PIPELINE, stage, ds).read(columns=["origin", "complexity"])
        for origin, value in zip(scored.column("origin").to_pylist(), scored.column("complexity").to_pylist()):
            values.setdefault(origin, []).append(value)
        rejected = store.rejected(PIPELINE, stage, ds).read(columns=["reason", "evidence_json"])
        for reason, evidence in zip(rejected.column("reason").to_pylist(), rejected.column("evidence_json").to_pylist()):
            if reason == "low_quality" and evidence:
                facts = json.loads(evidence)
                values.setdefault(facts["origin"], []).append(facts["complexity"])
    return {origin: {"mean": round(fmean(v), 2), "problems": len(v)} for origin, v in sorted(values.items())}


# -- shards -------------------------------------------------------------------------------------


def shards_of(store: Store, ds: str, *stages: str) -> list[dict[str, Any]]:
    """The non-empty data files of committed stages, numbered as one list of shards."""
    shards: list[dict[str, Any]] = []
    for stage in stages:
        for data_file in store.partition(PIPELINE, stage, ds).manifest().files:
            if data_file.rows:
                shards.append({"stage": stage, "shard": len(shards), "file": data_file.name, "rows": data_file.rows})
    return shards


def _write_shards(store: Store, ds: str, stage: str, table: pa.Table, shard_size: int, meta: dict[str, Any]) -> None:
    partition = store.partition(PIPELINE, stage, ds)
    offsets = range(0, table.num_rows, shard_size) or [0]  # an empty table still commits, with its schema
    files = [partition.write_table(n, table.slice(offset, shard_size), table.schema) for n, offset in enumerate(offsets)]
    partition.commit(files, table.schema, {"pipeline": PIPELINE, "stage": stage, "ds": ds, **meta})
