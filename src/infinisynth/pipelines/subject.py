"""Infinity Instruct Subject, the general-instruction pipeline, as task bodies for ``dags/subject_instruct.py``.

    pool -> tagging -> [normalize: vocabulary] -> losses -> [select seeds]
         -> difficulty of seeds
         -> generation 1..G: evolve -> oracle check (one mapped task per shard does both)
         -> respond (survivors of every generation) -> difficulty of evolved | multi-turn
         -> publish (chat rows + coverage and depth report)

Generations: the DAG wires ``MAX_GENERATIONS`` generation steps; generation ``g`` evolves the
survivors of generation ``g - 1``'s oracle check (the seeds for ``g = 1``). The ``generations``
Param decides how many really run: the commit of generation ``G`` hands the next one no shards, so
the later steps map over nothing and are skipped, and their partitions are never written. Evolution
and its oracle check run in the same mapped task (each a resumable stage shard with its own role),
so a generation costs one mapped task per shard and one reduce.

Publishing: an answered instruction whose multi-turn extension succeeded is published as that
conversation (origin ``multiturn``); one whose extension was rejected is published as its
single-turn pair (origin ``evolved``), so a failed follow-up never loses a kept pair.

Mapped tasks take a shard descriptor ``{"stage", "shard", "file", "rows"}``; reduce tasks commit and
hand out the next shards. Everything here takes plain values and returns paths and counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from infinisynth.llm import LLMClient, RoleConfig
from infinisynth.prompts import load_prompt
from infinisynth.records import REJECTED_SCHEMA, content_id, schema_with
from infinisynth.runner import Stage
from infinisynth.shards import commit_stage, funnel_table, run_stage_shard
from infinisynth.stages.base import ModelStage
from infinisynth.stages.publish import MESSAGE_TYPE, SFT_DEFAULTS
from infinisynth.storage import Store
from infinisynth.subject import report as subject_report
from infinisynth.subject.difficulty import Difficulty, DifficultySettings
from infinisynth.subject.evolve import LINEAGE_STEP, SEED_SCHEMA, Evolution, EvolutionSettings
from infinisynth.subject.multiturn import MultiTurn, MultiTurnSettings, SurvivorResponse
from infinisynth.subject.oracle import OracleCheck, OracleSettings

log = logging.getLogger(__name__)

PIPELINE = "subject_instruct"
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
MAX_GENERATIONS = 4
REPORT_FILE = "report.json"
POOL_PLOT_FILE = "pool_tag_degrees.png"
DATASET_PLOT_FILE = "dataset_tag_degrees.png"


def evolve_stage(generation: int) -> str:
    return f"evolve_g{generation}"


def oracle_stage(generation: int) -> str:
    return f"oracle_g{generation}"


PROMPTS = {
    TAGGING_STAGE: "subject_tagging",
    "evolve": "subject_evolution",
    "oracle": "subject_oracle_check",
    RESPOND_STAGE: "subject_response",
    MULTITURN_STAGE: "subject_followup",
    SEED_DIFFICULTY_STAGE: "subject_difficulty",
    EVOLVED_DIFFICULTY_STAGE: "subject_difficulty",
}
ROLES = {
    TAGGING_STAGE: "tagger",
    LOSS_STAGE: "base",
    "evolve": "generator",
    "oracle": "oracle",
    RESPOND_STAGE: "generator",
    MULTITURN_STAGE: "generator",
    SEED_DIFFICULTY_STAGE: "judge",
    EVOLVED_DIFFICULTY_STAGE: "judge",
}


def kind_of(stage: str) -> str:
    """``evolve_g2`` -> ``evolve``; other stage names are their own kind."""
    return stage.rsplit("_g", 1)[0] if stage.startswith(("evolve_g", "oracle_g")) else stage


class SubjectSettings(BaseModel):
    """A run's settings: the DAG's Params, validated once, with the paper's defaults."""

    model_config = ConfigDict(extra="ignore")

    pool_source: str = "code_instruct"  # or a Parquet/JSONL path/URL with messages or instruction/response
    max_pool_rows: int = Field(0, ge=0)  # 0 = the whole pool
    shard_size: int = Field(200, gt=0)
    # tag normalization
    merge_similarity: float = Field(0.91, gt=0, le=1)
    cluster_eps: float = Field(0.47, gt=0)
    noise_floor: int = Field(100, ge=1)
    domains: int = Field(25, ge=1)
    # informative seed selection
    long_tail_frequency: int = Field(200, ge=1)
    multi_skill_tags: int = Field(4, ge=0)
    loss_z: float = Field(1.96, ge=0)
    hard_to_follow_quantile: float = Field(0.1, gt=0, lt=1)
    max_seeds: int = Field(1000, gt=0)
    # evolution, oracle, multi-turn, difficulty
    generations: int = Field(3, ge=1, le=MAX_GENERATIONS)
    copy_ngram_words: int = Field(6, ge=2)
    oracle_verdict: bool = True  # False: the oracle's deterministic checks only (demos on tiny models)
    min_followups: int = Field(1, ge=1, le=4)
    max_followups: int = Field(4, ge=1, le=4)
    difficulty_samples: int = Field(1, ge=1)
    sampling_seed: int = 0
    # models
    tagger_model: str = ""
    base_model: str = ""
    generator_model: str = ""
    generator_temperature: float | None = Field(None, ge=0, le=2)
    generator_max_tokens: int | None = Field(None, gt=0)
    oracle_model: str = ""
    judge_model: str = ""

    @model_validator(mode="after")
    def _followups_ordered(self) -> SubjectSettings:
        if self.min_followups > self.max_followups:
            raise ValueError(f"min_followups ({self.min_followups}) exceeds max_followups ({self.max_followups})")
        return self

    def role_overrides(self, role: str) -> dict[str, Any]:
        if role == "generator":
            return {
                "model": self.generator_model or None,
                "temperature": self.generator_temperature,
                "max_tokens": self.generator_max_tokens,
            }
        return {"model": getattr(self, f"{role}_model", "") or None}


RoleResolver = Callable[[str], RoleConfig]


def role_for(stage: str, roles: RoleResolver, settings: SubjectSettings) -> RoleConfig:
    role = ROLES[kind_of(stage)]
    return roles(role).with_overrides(**settings.role_overrides(role))


# -- the pool, tags and vocabulary --------------------------------------------------------------


def prepare_pool(store: Store, ds: str, settings: SubjectSettings) -> list[dict[str, Any]]:
    """The night's instruction pool into the ``pool`` partition, one file per shard; rows that cannot
    be pool rows go to ``rejected/pool`` with their reasons."""
    from infinisynth.subject.pool import read_pool

    loaded = read_pool(store, settings.pool_source, ds, max_rows=settings.max_pool_rows or None)
    if loaded.rows.num_rows == 0:
        raise ValueError(
            f"the instruction pool from {loaded.source} for ds={ds} has no usable rows ({loaded.rejected_by_reason or 'no rows at all'})"
        )
    funnel = {
        "stage": POOL_STAGE,
        "rows_in": loaded.rows_in,
        "inputs_passed": loaded.rows.num_rows,
        "rows_out": loaded.rows.num_rows,
        "rejected": loaded.rejected.num_rows,
        "rejected_by_reason": loaded.rejected_by_reason,
        "usage": {},
    }
    meta = {"source": loaded.source, "funnel": funnel}
    store.rejected(PIPELINE, POOL_STAGE, ds).write_and_commit(
        loaded.rejected, meta={"pipeline": PIPELINE, "stage": POOL_STAGE, "ds": ds, **meta}, schema=REJECTED_SCHEMA
    )
    _write_shards(store, ds, POOL_STAGE, loaded.rows, settings.shard_size, meta)
    log.info(
        "%d pool instructions from %s; %d rows rejected %s",
        loaded.rows.num_rows,
        loaded.source,
        loaded.rejected.num_rows,
        loaded.rejected_by_reason or "",
    )
    return shards_of(store, ds, POOL_STAGE)


def normalize_tags(store: Store, ds: str, settings: SubjectSettings) -> list[dict[str, Any]]:
    """Normalize every tag of the night's pool against the vocabulary; save the grown vocabulary."""
    from infinisynth.subject.vocabulary import NormalizeSettings, latest_vocabulary_before, load_embedder, normalize_pool, save_vocabulary

    tagged = store.partition(PIPELINE, TAGGING_STAGE, ds).read()
    previous = latest_vocabulary_before(store, ds)
    normalize = _known_fields(
        NormalizeSettings,
        merge_similarity=settings.merge_similarity,
        cluster_eps=settings.cluster_eps,
        noise_floor=settings.noise_floor,
        domains=settings.domains,
    )
    normalized = normalize_pool(tagged, previous, normalize, load_embedder(), ds)
    save_vocabulary(store, ds, normalized.vocabulary)
    table = with_row_tags(tagged, normalized.row_tags)
    tag_domain = _tag_domains(normalized.vocabulary)
    meta = {
        "vocabulary_tags": normalized.vocabulary.num_rows,
        "grown_from_previous": previous is not None,
        "tags_per_domain": subject_report.tags_per_domain(table.column("tags").to_pylist(), tag_domain),
        "normalization": getattr(normalized, "report", {}),
    }
    _write_shards(store, ds, TAGS_STAGE, table, settings.shard_size, meta)
    log.info(
        "tag vocabulary: %d entries (%s); %d rows tagged",
        normalized.vocabulary.num_rows,
        "grown from an earlier night" if previous is not None else "new",
        table.num_rows,
    )
    return shards_of(store, ds, TAGS_STAGE)


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
    return base.select(tags_schema().names).cast(tags_schema())


def tags_schema() -> pa.Schema:
    """The tagged pool rows with their normalized (canonical) tags and domains."""
    from infinisynth.subject.tagging import TAGGED_SCHEMA

    fields = [f for f in TAGGED_SCHEMA if f.name not in ("tags", "domains")]
    return pa.schema([*fields, pa.field("tags", pa.list_(pa.string())), pa.field("domains", pa.list_(pa.string()))])


def _tag_domains(vocabulary: pa.Table | None) -> dict[str, str]:
    """Canonical tag -> domain, from the vocabulary table."""
    if vocabulary is None or vocabulary.num_rows == 0:
        return {}
    names = vocabulary.column_names
    tag_column = "canonical" if "canonical" in names else "tag"
    return {t: d for t, d in zip(vocabulary.column(tag_column).to_pylist(), vocabulary.column("domain").to_pylist()) if t and d}


def _known_fields(model: type[BaseModel], **values: Any) -> BaseModel:
    """``model`` built from those of ``values`` it has fields for (the rest keep its defaults)."""
    return model(**{k: v for k, v in values.items() if k in model.model_fields})


# -- seed selection -----------------------------------------------------------------------------


def select(store: Store, ds: str, settings: SubjectSettings) -> list[dict[str, Any]]:
    """Pick the informative seeds from the scored pool; record each criterion's counts and overlaps."""
    from infinisynth.subject.selection import SelectionSettings, format_report, select_seeds

    scored = store.partition(PIPELINE, LOSS_STAGE, ds).read()
    # Frequencies over every tagged row of the pool, not only those the base model could score.
    pool_tags = store.partition(PIPELINE, TAGS_STAGE, ds).read(columns=["tags"]).column("tags").to_pylist()
    frequency = Counter(tag for tags in pool_tags for tag in tags or [])
    selection_settings = _known_fields(
        SelectionSettings,
        long_tail_frequency=settings.long_tail_frequency,
        multi_skill_tags=settings.multi_skill_tags,
        loss_z=settings.loss_z,
        hard_to_follow_quantile=settings.hard_to_follow_quantile,
    )
    selection = select_seeds(scored, frequency, selection_settings)
    selected = selection.selected
    # Most reasons first, then by id: the cap keeps the most informative seeds, reproducibly.
    ranked = selected.append_column("_reasons", pc.list_value_length(selected.column("selection_reasons")))
    ranked = ranked.take(pc.sort_indices(ranked, sort_keys=[("_reasons", "descending"), ("id", "ascending")]))
    capped = max(0, selected.num_rows - settings.max_seeds)
    seeds = [_seed_row(r) for r in ranked.slice(0, settings.max_seeds).drop_columns(["_reasons"]).to_pylist() if r.get("selection_reasons")]
    table = pa.Table.from_pylist(seeds, schema=SEED_SCHEMA)
    meta = {"selection": selection.report, "pool_rows": scored.num_rows, "selected": selected.num_rows, "capped_by_max_seeds": capped}
    _write_shards(store, ds, SEED_STAGE, table, settings.shard_size, meta)
    log.info(
        "seed selection over %d rows: %d selected, %d kept as seeds (max_seeds %d)\n%s",
        scored.num_rows,
        selected.num_rows,
        len(seeds),
        settings.max_seeds,
        format_report(selection.report),
    )
    return shards_of(store, ds, SEED_STAGE)


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


# -- mapped model stages ------------------------------------------------------------------------


def run_model_stage(
    store: Store, ds: str, stage: str, shard: dict[str, Any], roles: RoleResolver, settings: SubjectSettings
) -> dict[str, Any]:
    """One shard of a model-calling stage (the body of every mapped task but evolution's)."""
    rows = store.partition(PIPELINE, shard["stage"], ds).read_file(shard["file"]).to_pylist()
    return run_stage_shard(
        store, PIPELINE, stage, ds, shard["shard"], rows, role_for(stage, roles, settings), _stage_factory(stage, settings)
    ).to_dict()


def run_generation(
    store: Store, ds: str, generation: int, shard: dict[str, Any], roles: RoleResolver, settings: SubjectSettings
) -> dict[str, Any]:
    """One shard of one generation: evolve its rows, then put the evolved rows to the oracle."""
    rows = store.partition(PIPELINE, shard["stage"], ds).read_file(shard["file"]).to_pylist()
    evolve, oracle = evolve_stage(generation), oracle_stage(generation)
    evolved = run_stage_shard(
        store, PIPELINE, evolve, ds, shard["shard"], rows, role_for(evolve, roles, settings), _stage_factory(evolve, settings)
    )
    # The evolved rows are this shard's own, not yet committed data file: read it by name.
    candidates = store.partition(PIPELINE, evolve, ds).read_file(evolved.output["name"]).to_pylist()
    checked = run_stage_shard(
        store, PIPELINE, oracle, ds, shard["shard"], candidates, role_for(oracle, roles, settings), _stage_factory(oracle, settings)
    )
    return {"evolve": evolved.to_dict(), "oracle": checked.to_dict()}


def _stage_factory(stage: str, settings: SubjectSettings) -> Callable[[LLMClient], Stage]:
    kind = kind_of(stage)
    if kind == TAGGING_STAGE:
        from infinisynth.subject.tagging import Tagging

        return lambda client: Tagging(client, name=stage)
    if kind == LOSS_STAGE:
        from infinisynth.subject.losses import ResponseLosses

        return lambda client: ResponseLosses(client, name=stage, input_schema=tags_schema())
    if kind == "evolve":
        evolution = EvolutionSettings(sampling_seed=settings.sampling_seed)
        return lambda client: Evolution(client, evolution, name=stage)
    if kind == "oracle":
        check = OracleSettings(copy_ngram_words=settings.copy_ngram_words, model_verdict=settings.oracle_verdict)
        return lambda client: OracleCheck(client, check, name=stage)
    if kind == RESPOND_STAGE:
        return lambda client: SurvivorResponse(client, name=stage)
    if kind == MULTITURN_STAGE:
        turns = MultiTurnSettings(
            min_followups=settings.min_followups, max_followups=settings.max_followups, sampling_seed=settings.sampling_seed
        )
        return lambda client: MultiTurn(client, turns, name=stage)
    if kind in (SEED_DIFFICULTY_STAGE, EVOLVED_DIFFICULTY_STAGE):
        scoring = DifficultySettings(samples=settings.difficulty_samples)
        return lambda client: Difficulty(client, scoring, name=stage)
    raise ValueError(f"{stage!r} is not a model-calling stage of {PIPELINE}")


def _stage_class(stage: str) -> type[ModelStage]:
    kind = kind_of(stage)
    if kind == TAGGING_STAGE:
        from infinisynth.subject.tagging import Tagging

        return Tagging
    if kind == LOSS_STAGE:
        from infinisynth.subject.losses import ResponseLosses

        return ResponseLosses
    classes: dict[str, type[ModelStage]] = {
        "evolve": Evolution,
        "oracle": OracleCheck,
        RESPOND_STAGE: SurvivorResponse,
        MULTITURN_STAGE: MultiTurn,
    }
    return classes[kind] if kind in classes else Difficulty


def stage_schema(stage: str) -> pa.Schema:
    if kind_of(stage) == LOSS_STAGE:
        from infinisynth.subject.losses import loss_schema

        return loss_schema(tags_schema())
    return _stage_class(stage).schema


def commit(
    store: Store, ds: str, stage: str, shard_results: list[dict[str, Any]], roles: RoleResolver, settings: SubjectSettings
) -> dict[str, Any]:
    """Publish every shard of ``stage`` at once, with its prompt versions and role settings."""
    prompts = _stage_class(stage).prompt_files()  # the oracle's includes the evolution prompt its copy check reads
    role = role_for(stage, roles, settings)
    meta = {"prompt_versions": {p: load_prompt(p).version for p in prompts}, "roles": {role.role: role.public_dict()}}
    return commit_stage(store, PIPELINE, stage, ds, stage_schema(stage), shard_results, meta=meta)


def commit_generation(
    store: Store, ds: str, generation: int, results: list[dict[str, Any]], roles: RoleResolver, settings: SubjectSettings
) -> list[dict[str, Any]]:
    """Commit one generation's evolution and oracle check; hand the survivors to the next generation.

    A generation beyond ``settings.generations`` was skipped: nothing to commit, nothing handed on.
    """
    if generation > settings.generations:
        return []
    commit(store, ds, evolve_stage(generation), [r["evolve"] for r in results], roles, settings)
    commit(store, ds, oracle_stage(generation), [r["oracle"] for r in results], roles, settings)
    if generation >= settings.generations:
        return []
    return shards_of(store, ds, oracle_stage(generation))


def survivors(store: Store, ds: str, settings: SubjectSettings) -> list[dict[str, Any]]:
    """Shards of every generation's oracle survivors (this run's generations only), for responses."""
    return shards_of(store, ds, *[oracle_stage(g) for g in range(1, settings.generations + 1)])


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


def publish(store: Store, ds: str, settings: SubjectSettings) -> dict[str, Any]:
    """The night's chat dataset, its funnel, and the coverage and depth report beside it."""
    answered = store.partition(PIPELINE, RESPOND_STAGE, ds).read().to_pylist()
    conversations = store.partition(PIPELINE, MULTITURN_STAGE, ds).read().to_pylist()
    seed_table = store.partition(PIPELINE, SEED_STAGE, ds).read(columns=["id", "instruction"])
    seeds = dict(zip(seed_table.column("id").to_pylist(), seed_table.column("instruction").to_pylist()))
    scores = _difficulty_scores(store, ds)
    dataset = pa.Table.from_pylist(
        dataset_rows(answered, conversations, seeds, {i: s for i, (_, s) in scores.items()}), schema=DATASET_SCHEMA
    )

    run_report, plots = build_report(store, ds, dataset, scores)
    funnel = night_funnel(store, ds, settings)
    partition = store.partition(PIPELINE, DATASET_STAGE, ds)
    # The report files go in first: whoever finds the manifest finds the report too.
    store.write_json(f"{partition.path}/{REPORT_FILE}", run_report)
    for name, png in plots.items():
        _write_bytes(store, f"{partition.path}/{name}", png)
    meta = {
        "pipeline": PIPELINE,
        "stage": DATASET_STAGE,
        "ds": ds,
        "funnel": funnel,
        "sft": SFT_DEFAULTS,
        "difficulty": run_report["difficulty"],
        "report": REPORT_FILE,
        "plots": sorted(plots),
        "origins": dict(Counter(dataset.column("origin").to_pylist())),
    }
    partition.write_and_commit(dataset, meta=meta, schema=DATASET_SCHEMA)
    log.info("subject_instruct %s funnel\n%s", ds, funnel_table(funnel))
    from infinisynth.subject.selection import format_report

    selection = format_report(run_report["selection"]) if run_report["selection"].get("criteria") else "no selection report"
    log.info(
        "subject_instruct %s coverage and depth report (%s)\nseed selection: %s\n\n%s",
        ds,
        f"{partition.url}/{REPORT_FILE}",
        selection,
        subject_report.report_tables(run_report),
    )
    return {"partition": partition.url, "rows": dataset.num_rows, "report": f"{partition.url}/{REPORT_FILE}"}


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


def build_report(store: Store, ds: str, dataset: pa.Table, scores: dict[str, tuple[int, float]]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Coverage (tags per domain, co-occurrence network and its power law) of the pool and the
    dataset, and depth (difficulty before and after evolution); plus the log-log plots."""
    from infinisynth.subject.vocabulary import latest_vocabulary_before

    # The vocabulary saved tonight is the latest one before tomorrow.
    vocabulary = latest_vocabulary_before(store, (date.fromisoformat(ds) + timedelta(days=1)).isoformat())
    tag_domain = _tag_domains(vocabulary)
    report: dict[str, Any] = {"ds": ds, "vocabulary_tags": vocabulary.num_rows if vocabulary is not None else 0}
    plots: dict[str, bytes] = {}
    pool_tags = store.partition(PIPELINE, TAGS_STAGE, ds).read(columns=["tags"]).column("tags").to_pylist()
    for scope, tag_lists, plot_file in (
        ("pool", pool_tags, POOL_PLOT_FILE),
        ("dataset", dataset.column("tags").to_pylist(), DATASET_PLOT_FILE),
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


def night_funnel(store: Store, ds: str, settings: SubjectSettings) -> list[dict[str, Any]]:
    entries = [store.partition(PIPELINE, POOL_STAGE, ds).manifest().meta["funnel"]]
    stages = [TAGGING_STAGE, LOSS_STAGE, SEED_DIFFICULTY_STAGE]
    stages += [s for g in range(1, settings.generations + 1) for s in (evolve_stage(g), oracle_stage(g))]
    stages += [RESPOND_STAGE, EVOLVED_DIFFICULTY_STAGE, MULTITURN_STAGE]
    for stage in stages:
        partition = store.partition(PIPELINE, stage, ds)
        if partition.exists():
            entries.append(partition.manifest().meta["funnel"])
        if stage == LOSS_STAGE:
            seeds = store.partition(PIPELINE, SEED_STAGE, ds).manifest()
            selected = seeds.meta.get("selected", seeds.rows)
            entries.append(
                {
                    "stage": SEED_STAGE,
                    "rows_in": seeds.meta.get("pool_rows", 0),
                    "inputs_passed": selected,
                    "rows_out": seeds.rows,
                    "rejected": 0,
                    "rejected_by_reason": {},
                    "usage": {},
                }
            )
    return entries


# -- shards and files ---------------------------------------------------------------------------


def shards_of(store: Store, ds: str, *stages: str) -> list[dict[str, Any]]:
    """The non-empty data files of committed stages, numbered as one list of shards."""
    shards: list[dict[str, Any]] = []
    for stage in stages:
        partition = store.partition(PIPELINE, stage, ds)
        if not partition.exists():
            continue
        for data_file in partition.manifest().files:
            if data_file.rows:
                shards.append({"stage": stage, "shard": len(shards), "file": data_file.name, "rows": data_file.rows})
    return shards


def _write_shards(store: Store, ds: str, stage: str, table: pa.Table, shard_size: int, meta: dict[str, Any]) -> None:
    partition = store.partition(PIPELINE, stage, ds)
    offsets = range(0, table.num_rows, shard_size) or [0]  # an empty table still commits, with its schema
    files = [partition.write_table(n, table.slice(offset, shard_size), table.schema) for n, offset in enumerate(offsets)]
    partition.commit(files, table.schema, {"pipeline": PIPELINE, "stage": stage, "ds": ds, **meta})


def _write_bytes(store: Store, path: str, data: bytes) -> None:
    store._atomic_write(path, data)  # noqa: SLF001 - the store's own atomic write, for a non-JSON file
