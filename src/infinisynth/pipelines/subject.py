"""Infinity Instruct Subject, the general-instruction pipeline: its global steps and reports.

The pipeline is declared in :mod:`infinisynth.specs.subject_instruct` (settings and steps, with the
generations and their fused oracle checks); the row steps live in :mod:`infinisynth.subject`. What
is here reads whole partitions: the instruction pool, tag normalization, seed selection and
publishing (chat rows plus the coverage and depth report).

Publishing: an answered instruction whose multi-turn extension succeeded is published as that
conversation (origin ``multiturn``); one whose extension was rejected is published as its
single-turn pair (origin ``evolved``), so a failed follow-up never loses a kept pair.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from infinisynth.records import content_id, schema_with
from infinisynth.shards import funnel_table
from infinisynth.specs.subject_instruct import MAX_GENERATIONS, PIPELINE, SPEC, SubjectSettings, evolve_stage, oracle_stage
from infinisynth.spill import Spill, SpilledTable, freeing, rebatched
from infinisynth.stages.base import GlobalStep, StepOutput
from infinisynth.stages.publish import MESSAGE_TYPE, PUBLISH_BATCH_ROWS, SFT_DEFAULTS
from infinisynth.steps import RunContext, night_funnel
from infinisynth.storage import Store
from infinisynth.subject import report as subject_report
from infinisynth.subject.evolve import LINEAGE_STEP, SEED_SCHEMA
from infinisynth.subject.losses import ResponseLosses, loss_schema
from infinisynth.subject.pool import POOL_SCHEMA, read_pool
from infinisynth.subject.tagging import TAGGED_SCHEMA

log = logging.getLogger(__name__)

POOL_STAGE = "pool"
TAGGING_STAGE = "tagging"
TAGS_STAGE = "tags"  # pool rows with their normalized tags and domains
LOSS_STAGE = "losses"
SEED_STAGE = "seeds"
SEED_DIFFICULTY_STAGE = "difficulty_seeds"
RESPOND_STAGE = "respond"
EVOLVED_DIFFICULTY_STAGE = "difficulty_evolved"
MULTITURN_STAGE = "multiturn"
DATASET_STAGE = "dataset"
REPORT_AREA = "reports"
REPORT_FILE = "report.json"
POOL_PLOT_FILE = "pool_tag_degrees.png"
DATASET_PLOT_FILE = "dataset_tag_degrees.png"

# The tagged pool rows with their normalized (canonical) tags and domains.
TAGS_SCHEMA = pa.schema(
    [
        *(f for f in TAGGED_SCHEMA if f.name not in ("tags", "domains")),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("domains", pa.list_(pa.string())),
    ]
)

__all__ = ["MAX_GENERATIONS", "PIPELINE", "SPEC", "SubjectSettings", "evolve_stage", "oracle_stage"]


def tags_schema() -> pa.Schema:
    return TAGS_SCHEMA


# -- the pool, tags and vocabulary --------------------------------------------------------------


class PreparePool(GlobalStep):
    """The night's instruction pool; rows that cannot be pool rows go to ``rejected/pool`` with
    their reasons."""

    name = POOL_STAGE
    schema = POOL_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: SubjectSettings = ctx.settings
        loaded = read_pool(ctx.store, settings.pool_source, ctx.ds, max_rows=settings.max_pool_rows or None)
        if loaded.rows.num_rows == 0:
            reasons = loaded.rejected_by_reason or "no rows at all"
            raise ValueError(f"the instruction pool from {loaded.source} for ds={ctx.ds} has no usable rows ({reasons})")
        log.info(
            "%d pool instructions from %s; %d rows rejected %s",
            loaded.rows.num_rows,
            loaded.source,
            loaded.rejected.num_rows,
            loaded.rejected_by_reason or "",
        )
        return StepOutput(loaded.rows, loaded.rows_in, rejected=loaded.rejected, meta={"source": loaded.source})


class NormalizeTags(GlobalStep):
    """Normalize every tag of the night's pool against the vocabulary; save the grown vocabulary."""

    name = TAGS_STAGE
    schema = TAGS_SCHEMA

    def run(self) -> StepOutput:
        from infinisynth.subject.vocabulary import (
            NormalizeSettings,
            latest_vocabulary_before,
            load_embedder,
            normalize_pool,
            save_vocabulary,
        )

        ctx: RunContext = self.ctx
        settings: SubjectSettings = ctx.settings
        tagged = ctx.partition(TAGGING_STAGE).read()
        previous = latest_vocabulary_before(ctx.store, ctx.ds)
        normalize = NormalizeSettings(**_known_fields(NormalizeSettings, settings))
        normalized = normalize_pool(tagged, previous, normalize, load_embedder(), ctx.ds)
        save_vocabulary(ctx.store, ctx.ds, normalized.vocabulary)
        table = with_row_tags(tagged, normalized.row_tags)
        meta = {
            "vocabulary_tags": normalized.vocabulary.num_rows,
            "grown_from_previous": previous is not None,
            "tags_per_domain": subject_report.tags_per_domain(table.column("tags").to_pylist(), _tag_domains(normalized.vocabulary)),
            "normalization": getattr(normalized, "report", {}),
        }
        log.info(
            "tag vocabulary: %d entries (%s); %d rows tagged",
            normalized.vocabulary.num_rows,
            "grown from an earlier night" if previous is not None else "new",
            table.num_rows,
        )
        return StepOutput(table, tagged.num_rows, meta=meta)


def with_row_tags(tagged: pa.Table, row_tags: pa.Table) -> pa.Table:
    """``tagged`` with each row's canonical tags and domains (empty lists where it has none).

    Columnar (an index lookup and a take), not a Python loop: a pool holds millions of rows.
    Arrow's hash join would not do: it cannot carry list columns.
    """
    positions = pc.index_in(tagged.column("id"), value_set=row_tags.column("id"))
    base = tagged.drop_columns([c for c in ("tags", "domains") if c in tagged.column_names])
    for name in ("tags", "domains"):
        values = row_tags.column(name).combine_chunks().take(positions)
        base = base.append_column(name, pc.if_else(pc.is_null(values), pa.scalar([], pa.list_(pa.string())), values))
    return base.select(TAGS_SCHEMA.names).cast(TAGS_SCHEMA)


def _tag_domains(vocabulary: pa.Table | None) -> dict[str, str]:
    """Canonical tag -> domain, from the vocabulary table."""
    if vocabulary is None or vocabulary.num_rows == 0:
        return {}
    names = vocabulary.column_names
    tag_column = "canonical" if "canonical" in names else "tag"
    return {t: d for t, d in zip(vocabulary.column(tag_column).to_pylist(), vocabulary.column("domain").to_pylist()) if t and d}


def _known_fields(model: type[BaseModel], settings: BaseModel) -> dict[str, Any]:
    """Those of ``settings``' values that ``model`` has fields for (the rest keep its defaults)."""
    return {name: getattr(settings, name) for name in model.model_fields if name in type(settings).model_fields}


class PoolLosses(ResponseLosses):
    """The base model's response losses over the normalized pool rows (for seed selection)."""

    schema = loss_schema(TAGS_SCHEMA)


# -- seed selection -----------------------------------------------------------------------------


class SelectSeeds(GlobalStep):
    """Pick the informative seeds from the scored pool; record each criterion's counts and overlaps.
    Selection picks from the pool, it rejects nothing: the rows not picked stay in the pool."""

    name = SEED_STAGE
    schema = SEED_SCHEMA

    def run(self) -> StepOutput:
        from infinisynth.subject.selection import SelectionSettings, format_report, select_seeds

        ctx: RunContext = self.ctx
        settings: SubjectSettings = ctx.settings
        scored = ctx.partition(LOSS_STAGE).read()
        # Frequencies over every tagged row of the pool, not only those the base model could score.
        pool_tags = ctx.partition(TAGS_STAGE).read(columns=["tags"]).column("tags").to_pylist()
        frequency = Counter(tag for tags in pool_tags for tag in tags or [])
        selection = select_seeds(scored, frequency, SelectionSettings(**_known_fields(SelectionSettings, settings)))
        selected = selection.selected
        # Most reasons first, then by id: the cap keeps the most informative seeds, reproducibly.
        ranked = selected.append_column("_reasons", pc.list_value_length(selected.column("selection_reasons")))
        ranked = ranked.take(pc.sort_indices(ranked, sort_keys=[("_reasons", "descending"), ("id", "ascending")]))
        capped = max(0, selected.num_rows - settings.max_seeds)
        top = ranked.slice(0, settings.max_seeds).drop_columns(["_reasons"]).to_pylist()
        seeds = [_seed_row(r) for r in top if r.get("selection_reasons")]
        meta = {"selection": selection.report, "pool_rows": scored.num_rows, "selected": selected.num_rows, "capped_by_max_seeds": capped}
        log.info(
            "seed selection over %d rows: %d selected, %d kept as seeds (max_seeds %d)\n%s",
            scored.num_rows,
            selected.num_rows,
            len(seeds),
            settings.max_seeds,
            format_report(selection.report),
        )
        table = pa.Table.from_pylist(seeds, schema=SEED_SCHEMA)
        return StepOutput(table, scored.num_rows, meta=meta, passed=selected.num_rows)


def _seed_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "parent_ids": [],
        "origin": "seed",
        "lang": row.get("lang"),
        "instruction": row["instruction"],
        "tags": row.get("tags") or [],
        "domains": row.get("domains") or [],
        "selection_reasons": list(row.get("selection_reasons") or []),
        "seed_id": row["id"],
        "generation": 0,
        "lineage": [],
        "provenance": None,
        "response": row.get("response"),
        "source": row.get("source"),
        "loss_conditional": row.get("loss_conditional"),
        "loss_unconditional": row.get("loss_unconditional"),
        "loss_reduction": row.get("loss_reduction"),
    }


# -- publishing ---------------------------------------------------------------------------------

DATASET_SCHEMA = schema_with(
    pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    pa.field("followups", pa.int32()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("domains", pa.list_(pa.string())),
    pa.field("selection_reasons", pa.list_(pa.string())),
    pa.field("seed_id", pa.string()),
    pa.field("seed_instruction", pa.string()),
    pa.field("generation", pa.int32()),
    pa.field("operation", pa.string()),
    pa.field("lineage", pa.list_(LINEAGE_STEP)),
    pa.field("parent_instruction", pa.string()),
    pa.field("difficulty", pa.float64()),
    pa.field("seed_difficulty", pa.float64()),
    pa.field("provenance", pa.string()),
)


def dataset_rows(
    answered: list[dict[str, Any]], conversations: list[dict[str, Any]], seeds: dict[str, str], difficulty: dict[str, float]
) -> list[dict[str, Any]]:
    """One chat row per answered instruction: its conversation if it has one, else the pair."""
    by_pair = {c["parent_ids"][0]: c for c in conversations}
    rows = []
    for pair in answered:
        conversation = by_pair.get(pair["id"])
        if conversation is not None:
            row = dict(conversation)
        else:
            messages = [{"role": "user", "content": pair["instruction"]}, {"role": "assistant", "content": pair["response"]}]
            row = {
                **pair,
                "id": content_id("pair", pair["id"], pair["response"]),
                "parent_ids": [pair["id"], *pair["parent_ids"]],
                "messages": messages,
                "followups": 0,
            }
        row["seed_instruction"] = seeds.get(pair["seed_id"])
        row["difficulty"] = difficulty.get(pair["id"])
        row["seed_difficulty"] = difficulty.get(pair["seed_id"])
        rows.append(row)
    return rows


class Publish(GlobalStep):
    """The night's chat dataset, its funnel, and the coverage and depth report beside it."""

    name = DATASET_STAGE
    schema = DATASET_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        store, ds = ctx.store, ctx.ds
        conversations = ctx.partition(MULTITURN_STAGE).read()  # as Arrow: each batch of pairs looks up its own
        seed_table = ctx.partition(SEED_STAGE).read(columns=["id", "instruction"])
        seeds = dict(zip(seed_table.column("id").to_pylist(), seed_table.column("instruction").to_pylist()))
        scores = _difficulty_scores(store, ds)
        difficulty = {i: s for i, (_, s) in scores.items()}
        self._scratch = tempfile.TemporaryDirectory(prefix="infinisynth-publish-")  # lives as long as the step: the commit reads it
        dataset = Spill(self._scratch.name, DATASET_SCHEMA, row_group_rows=ctx.settings.shard_size)
        dataset_tags: list[list[str] | None] = []  # the report's coverage of the dataset
        origins: Counter[str] = Counter()
        answered = 0
        # The answered pairs a batch at a time, in stored order: each batch's rows are what the whole
        # partition's would be (a pair's row depends on its own conversation alone).
        answered_batches = ctx.partition(RESPOND_STAGE).iter_batches(batch_size=PUBLISH_BATCH_ROWS)
        for batch in freeing(rebatched(answered_batches, PUBLISH_BATCH_ROWS)):
            pairs = batch.to_pylist()
            rows = dataset_rows(pairs, _conversations_of(conversations, batch.column("id")), seeds, difficulty)
            chat = pa.Table.from_pylist(rows, schema=DATASET_SCHEMA)
            dataset.write(chat)
            dataset_tags.extend(chat.column("tags").to_pylist())
            origins.update(chat.column("origin").to_pylist())
            answered += len(pairs)

        run_report, plots = build_report(store, ds, dataset_tags, scores)
        funnel = night_funnel(ctx)
        # The report files go in first: whoever finds the dataset's manifest finds its report too.
        report_path = report_file(store, ds, REPORT_FILE)
        store.write_json(report_path, run_report)
        for name, png in plots.items():
            store.write_bytes(report_file(store, ds, name), png)
        log.info("subject_instruct %s funnel\n%s", ds, funnel_table(funnel))
        from infinisynth.subject.selection import format_report

        selection = format_report(run_report["selection"]) if run_report["selection"].get("criteria") else "no selection report"
        log.info(
            "subject_instruct %s coverage and depth report (%s)\nseed selection: %s\n\n%s",
            ds,
            store.url(report_path),
            selection,
            subject_report.report_tables(run_report),
        )
        meta = {
            "funnel": funnel,
            "sft": SFT_DEFAULTS,
            "difficulty": run_report["difficulty"],
            "report": store.url(report_path),
            "plots": sorted(plots),
            "origins": dict(origins),
        }
        return StepOutput(SpilledTable([dataset], DATASET_SCHEMA).as_table(), answered, meta=meta)


def _conversations_of(conversations: pa.Table, pair_ids: pa.ChunkedArray) -> list[dict[str, Any]]:
    """The multi-turn conversations grown from these pairs (their first parent), in stored order."""
    if conversations.num_rows == 0:
        return []
    grown_from = pc.list_element(conversations.column("parent_ids"), 0)
    return conversations.filter(pc.is_in(grown_from, value_set=pair_ids)).to_pylist()


def _difficulty_scores(store: Store, ds: str) -> dict[str, tuple[int, float]]:
    """Row id -> (generation, difficulty), seeds and evolved alike."""
    scores: dict[str, tuple[int, float]] = {}
    for stage in (SEED_DIFFICULTY_STAGE, EVOLVED_DIFFICULTY_STAGE):
        partition = store.partition(PIPELINE, stage, ds)
        if partition.exists():
            table = partition.read(columns=["id", "generation", "difficulty"])
            for row_id, generation, value in zip(*(table.column(c).to_pylist() for c in ("id", "generation", "difficulty"))):
                scores[row_id] = (generation, value)
    return scores


def build_report(
    store: Store, ds: str, dataset_tags: list[list[str] | None], scores: dict[str, tuple[int, float]]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Coverage (tags per domain, co-occurrence network and its power law) of the pool and the
    dataset (its rows' tag lists), and depth (difficulty before and after evolution); plus the
    log-log plots."""
    from infinisynth.subject.vocabulary import latest_vocabulary_before

    # The vocabulary saved tonight is the latest one before tomorrow.
    vocabulary = latest_vocabulary_before(store, (date.fromisoformat(ds) + timedelta(days=1)).isoformat())
    tag_domain = _tag_domains(vocabulary)
    report: dict[str, Any] = {"ds": ds, "vocabulary_tags": vocabulary.num_rows if vocabulary is not None else 0}
    plots: dict[str, bytes] = {}
    pool_tags = store.partition(PIPELINE, TAGS_STAGE, ds).read(columns=["tags"]).column("tags").to_pylist()
    for scope, tag_lists, plot_file in (
        ("pool", pool_tags, POOL_PLOT_FILE),
        ("dataset", dataset_tags, DATASET_PLOT_FILE),
    ):
        network, distribution = subject_report.network_summary(tag_lists)
        report[scope] = {
            "rows": len(tag_lists),
            "tags_per_domain": subject_report.tags_per_domain(tag_lists, tag_domain),
            "network": network,
        }
        plots[plot_file] = subject_report.degree_plot_png(
            distribution, network["power_law"], title=f"{scope}: tag co-occurrence degrees ({ds})"
        )
    report["difficulty"] = subject_report.difficulty_summary(scores.values())
    seeds = store.partition(PIPELINE, SEED_STAGE, ds).manifest()
    report["selection"] = {
        **seeds.meta.get("selection", {}),
        "seeds": seeds.rows,
        "capped_by_max_seeds": seeds.meta.get("capped_by_max_seeds", 0),
    }
    return report, plots


def report_file(store: Store, ds: str, name: str) -> str:
    """Where a night's report files live: ``subject_instruct/reports/ds=.../``, beside the dataset
    table rather than in it, so directory readers of the dataset see only its Parquet files."""
    return store.side_path(PIPELINE, REPORT_AREA, ds, name)
