"""Infinite-Instruct, the code-instruction pipeline: its global steps and reports.

The pipeline itself is declared in :mod:`infinisynth.specs.code_instruct` (settings and steps);
the row steps live in :mod:`infinisynth.stages`. What is here reads whole partitions: the night's
seeds, the knowledge graph that plans backfeed construction, and publishing.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict
from statistics import fmean

import pyarrow as pa
import pyarrow.compute as pc

from infinisynth import knowledge_graph as kg
from infinisynth import seeds
from infinisynth.holdout import split_holdout, write_holdout
from infinisynth.records import canonical_json, content_id
from infinisynth.shards import funnel_table
from infinisynth.specs.code_instruct import PIPELINE, SPEC, CodeInstructSettings
from infinisynth.stages.backfeed import COMBINATION_SCHEMA
from infinisynth.stages.base import GlobalStep, Row, StepOutput
from infinisynth.stages.publish import DATASET_SCHEMA, SFT_DEFAULTS, to_chat_rows
from infinisynth.stages.quality import QualityAssessment
from infinisynth.stages.verify import discard_table
from infinisynth.steps import RunContext, night_funnel
from infinisynth.storage import Store

log = logging.getLogger(__name__)

SEED_STAGE = "seeds"
REVERSE_STAGE = "reverse"
KEYWORD_STAGE = "keywords"
COMBINATION_STAGE = "combinations"
SEED_QUALITY_STAGE = "seed_quality"
QUALITY_STAGE = "quality"
VERIFY_STAGE = "verify"
DATASET_STAGE = "dataset"

__all__ = ["PIPELINE", "SPEC", "CodeInstructSettings", "PlanBackfeed", "PrepareSeeds", "Publish", "SeedProblemQuality"]


class PrepareSeeds(GlobalStep):
    """The night's seeds: mined from source trees, or read from a Magicoder-OSS-Instruct-shaped file."""

    name = SEED_STAGE
    schema = seeds.SEED_SCHEMA

    def run(self) -> StepOutput:
        settings: CodeInstructSettings = self.ctx.settings
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
        log.info("%d seeds from %s; languages %s; %s", table.num_rows, source, languages, stats)
        return StepOutput(table, table.num_rows, meta={"source": source, "languages": languages, "stats": stats.__dict__})


class SeedProblemQuality(QualityAssessment):
    """The judge on the problems that came with the seeds (a Magicoder file's ``problem`` column):
    the paper's complexity baseline (seed 3.17 against reverse 5.85 and backfeed 6.83). Mined
    snippets have none."""

    name = SEED_QUALITY_STAGE

    @classmethod
    def prepare_rows(cls, rows: list[Row]) -> list[Row]:
        return seed_problems(rows)


def seed_problems(seed_rows: list[Row]) -> list[Row]:
    """The seeds' own problems, shaped as problems of origin ``seed`` so the judge scores them like ours."""
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


class PlanBackfeed(GlobalStep):
    """Build the night's knowledge graph from every keyword row, save it, sample keyword combinations."""

    name = COMBINATION_STAGE
    schema = COMBINATION_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: CodeInstructSettings = ctx.settings
        store, ds = ctx.store, ctx.ds
        keyword_rows = ctx.partition(KEYWORD_STAGE).read()
        previous = kg.latest_graph_before(store, PIPELINE, ds) if settings.reuse_graph else None
        graph, stats = kg.build_graph(keyword_rows, ds=ds, previous=previous)
        wanted = round(settings.backfeed_ratio * ctx.partition(REVERSE_STAGE).manifest().rows)
        combinations = kg.sample_combinations(graph, wanted, seed=settings.sampling_seed) if wanted else []
        kg.save_graph(store, PIPELINE, ds, graph)  # after sampling: node usage is part of the graph
        languages = _language_weights(ctx)
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
        summary = kg.graph_summary(graph)
        log.info(
            "knowledge graph: %s nodes, %s edges (grown from %s); %d of %d wanted combinations",
            summary.get("nodes"),
            summary.get("edges"),
            "an earlier night" if previous is not None else "nothing",
            len(rows),
            wanted,
        )
        table = pa.Table.from_pylist(rows, schema=COMBINATION_SCHEMA)
        return StepOutput(table, keyword_rows.num_rows, meta={"graph": summary, "graph_build": asdict(stats), "wanted": wanted})


def _language_weights(ctx: RunContext) -> dict[str, float]:
    if ctx.settings.backfeed_languages:
        return {lang: 1.0 for lang in ctx.settings.backfeed_languages}
    counts = Counter(ctx.partition(SEED_STAGE).read(columns=["lang"]).column("lang").to_pylist())
    return {str(lang): float(n) for lang, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}


class Publish(GlobalStep):
    """Chat-format rows from every verified pair, less the held-out slice (the deficiency-diagnosis
    loop's exam, never exported), with the night's funnel and complexity report."""

    name = DATASET_STAGE
    schema = DATASET_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        answered = ctx.partition(VERIFY_STAGE).read()
        dataset, held_out = split_holdout(to_chat_rows(answered), ctx.settings.holdout_fraction)
        write_holdout(ctx.store, PIPELINE, ctx.ds, held_out, {"rows_total": dataset.num_rows + held_out.num_rows})
        funnel = night_funnel(ctx)
        complexity = complexity_by_origin(ctx.store, ctx.ds)
        log.info("code_instruct %s funnel\n%s", ctx.ds, funnel_table(funnel))
        log.info(
            "lint gate discard rate by language\n%s",
            discard_table(ctx.partition(VERIFY_STAGE).manifest().meta.get("discard_by_language", {})),
        )
        log.info("complexity by origin (paper: seed 3.17, reverse 5.85, backfeed 6.83): %s", canonical_json(complexity))
        meta = {
            "funnel": funnel,
            "complexity_by_origin": complexity,
            "held_out": {"rows": held_out.num_rows, "fraction": ctx.settings.holdout_fraction},
            "sft": SFT_DEFAULTS,
        }
        return StepOutput(dataset, answered.num_rows, meta=meta)


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
