"""Infinite-Instruct, the code-instruction pipeline: its global steps and reports.

The pipeline itself is declared in :mod:`infinisynth.specs.code_instruct` (settings and steps);
the row steps live in :mod:`infinisynth.stages`. What is here reads whole partitions: the night's
seeds, the knowledge graph that plans backfeed construction, and publishing.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections import Counter
from dataclasses import asdict
from statistics import fmean

import pyarrow as pa
import pyarrow.compute as pc

from infinisynth import knowledge_graph as kg
from infinisynth import seeds
from infinisynth.errors import InputError
from infinisynth.holdout import split_holdout, write_holdout
from infinisynth.records import canonical_json, content_id
from infinisynth.shards import funnel_table
from infinisynth.specs.code_instruct import PIPELINE, SPEC, CodeInstructSettings
from infinisynth.spill import Spill, SpilledTable
from infinisynth.stages.backfeed import COMBINATION_SCHEMA
from infinisynth.stages.base import GlobalStep, Row, StepOutput
from infinisynth.stages.publish import DATASET_SCHEMA, SFT_DEFAULTS, chat_batches
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
TESTED_STAGE = "execute"  # the test gate after the lint gate: what is published
DATASET_STAGE = "dataset"
BELOW_THRESHOLD_STAGE = "below_threshold"  # answered, scoring between answer_threshold and quality_threshold: variants only

__all__ = ["PIPELINE", "SPEC", "CodeInstructSettings", "PlanBackfeed", "PrepareSeeds", "Publish", "SeedProblemQuality"]


class PrepareSeeds(GlobalStep):
    """The night's seeds: the date's own window of the seed corpus, mined from source trees or
    taken from a Magicoder-OSS-Instruct-shaped file (see :mod:`infinisynth.seeds`), so no two
    nights share seeds until the corpus is used up. Rows that must not reach a prompt (larger
    than ``max_seed_bytes``, control characters) go to ``rejected/seeds`` with their reasons."""

    name = SEED_STAGE
    schema = seeds.SEED_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: CodeInstructSettings = ctx.settings
        stats = seeds.SeedStats()
        window = seeds.date_window(ctx.ds)
        languages = settings.seed_languages or None
        if settings.seed_source == "mine":
            roots = settings.seed_roots or [str(p) for p in seeds.default_seed_roots()]
            table = seeds.mine_snippets(
                roots,
                max_snippets=settings.max_seeds,
                max_snippet_bytes=min(seeds.MINED_SNIPPET_BYTES, settings.max_seed_bytes),
                languages=languages,
                seed=settings.mining_seed,
                window=window,
                stats=stats,
            )
            source = f"mined from {', '.join(roots)}"
        else:
            table = seeds.sample_magicoder(
                settings.seed_source, size=settings.max_seeds, window=window, seed=settings.mining_seed, languages=languages, stats=stats
            )
            source = settings.seed_source
        kept, rejected = seeds.screen_seeds(table, max_bytes=settings.max_seed_bytes, stage=SEED_STAGE)
        reasons = dict(Counter(row["reason"] for row in rejected).most_common())
        if kept.num_rows == 0:
            raise InputError(
                f"no usable seeds for {ctx.ds} from {source} (languages: {', '.join(settings.seed_languages) or 'all'}; "
                f"{table.num_rows} found, rejected: {reasons or 'none'})"
            )
        by_language = dict(sorted(Counter(kept.column("lang").to_pylist()).items()))
        log.info(
            "%d seeds for %s (window %d) from %s; languages %s; %d rejected %s; %s",
            kept.num_rows,
            ctx.ds,
            window,
            source,
            by_language,
            len(rejected),
            reasons,
            stats,
        )
        meta = {"source": source, "window": window, "languages": by_language, "stats": asdict(stats)}
        return StepOutput(kept, table.num_rows, rejected=rejected, meta=meta)


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
    """Build the night's knowledge graph from every keyword row, save it, sample keyword combinations.

    The graph grows from the newest graph committed for a date strictly before the night's
    (:func:`~infinisynth.knowledge_graph.latest_graph_before`), never from a later one, so a re-run
    of a date or a backfill that runs dates out of order cannot bring a later night's keywords (or
    its usage counts) into an earlier night. Which earlier graph that is depends on what was
    committed when the date ran; the manifest's ``grown_from`` records it. Dates run one at a time
    in order form one chain; Airflow 3's backfill runs up to 10 dates at once whatever the DAG's
    ``max_active_runs``, so backfill with ``--max-active-runs 1`` for that.
    """

    name = COMBINATION_STAGE
    schema = COMBINATION_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: CodeInstructSettings = ctx.settings
        store, ds = ctx.store, ctx.ds
        keyword_rows = ctx.partition(KEYWORD_STAGE).read(columns=list(kg.INPUT_COLUMNS))  # not the problems' text
        keyword_count = keyword_rows.num_rows
        previous = kg.latest_graph_before(store, PIPELINE, ds) if settings.reuse_graph else None
        grown_from = previous.attrs.get("ds") if previous is not None else None
        graph, stats = kg.build_graph(keyword_rows, ds=ds, previous=previous)
        del keyword_rows, previous  # the graph holds what sampling needs
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
            "knowledge graph of %s: %s nodes, %s edges (grown from %s); %d of %d wanted combinations",
            ds,
            summary.get("nodes"),
            summary.get("edges"),
            f"the graph of {grown_from}" if grown_from else "nothing",
            len(rows),
            wanted,
        )
        table = pa.Table.from_pylist(rows, schema=COMBINATION_SCHEMA)
        meta = {"graph": summary, "graph_build": asdict(stats), "grown_from": grown_from, "wanted": wanted}
        return StepOutput(table, keyword_count, meta=meta)


def _language_weights(ctx: RunContext) -> dict[str, float]:
    if ctx.settings.backfeed_languages:
        return {lang: 1.0 for lang in ctx.settings.backfeed_languages}
    counts = Counter(ctx.partition(SEED_STAGE).read(columns=["lang"]).column("lang").to_pylist())
    return {str(lang): float(n) for lang, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}


class Publish(GlobalStep):
    """Chat-format rows from every verified pair, less the held-out slice (the deficiency-diagnosis
    loop's exam, never exported), with the night's funnel and complexity report.

    Streams: the answered partition is read a batch at a time, and each batch's dataset,
    held-out and below-threshold rows go to scratch files as they come (the held-out split is a
    per-row hash and the threshold a per-row test, so per batch is exact), keeping the input's order."""

    name = DATASET_STAGE
    schema = DATASET_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: CodeInstructSettings = ctx.settings
        self._scratch = tempfile.TemporaryDirectory(prefix="infinisynth-publish-")  # lives as long as the step: the commit reads it
        dataset = Spill(self._scratch.name, DATASET_SCHEMA, row_group_rows=settings.shard_size)  # committed a shard at a time
        held_out, below = Spill(self._scratch.name, DATASET_SCHEMA), Spill(self._scratch.name, DATASET_SCHEMA)
        for chat in chat_batches(ctx.partition(TESTED_STAGE)):
            train, held = split_holdout(chat, settings.holdout_fraction)
            kept, under = split_threshold(train, settings.quality_threshold)
            dataset.write(kept)
            held_out.write(held)
            below.write(under)
        answered = dataset.rows + held_out.rows + below.rows
        write_holdout(ctx.store, PIPELINE, ctx.ds, SpilledTable([held_out], DATASET_SCHEMA), {"rows_total": answered})
        below_partition = ctx.store.partition(PIPELINE, BELOW_THRESHOLD_STAGE, ctx.ds)
        if settings.answer_threshold != settings.quality_threshold or below_partition.exists():
            below_file = below_partition.write_file(0, SpilledTable([below], DATASET_SCHEMA).to_batches(), DATASET_SCHEMA)
            thresholds = {"answer_threshold": settings.answer_threshold, "quality_threshold": settings.quality_threshold}
            below_partition.commit([below_file], DATASET_SCHEMA, thresholds)
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
            "held_out": {"rows": held_out.rows, "fraction": settings.holdout_fraction},
            "quality_threshold": settings.quality_threshold,
            "answer_threshold": settings.answer_threshold,
            "below_threshold": below.rows,
            "sft": SFT_DEFAULTS,
        }
        return StepOutput(SpilledTable([dataset], DATASET_SCHEMA).as_table(), answered, meta=meta)


def split_threshold(chat: pa.Table, threshold: float) -> tuple[pa.Table, pa.Table]:
    """(rows scoring at least the publish threshold, the rest): the rest exist only when the
    pipeline answers from a lower ``answer_threshold``, for the release's lower-threshold variants.
    A row without a score is published (it was not judged here)."""
    publish = pc.fill_null(pc.greater_equal(chat.column("quality_mean"), threshold), True)
    return chat.filter(publish), chat.filter(pc.invert(publish))


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
