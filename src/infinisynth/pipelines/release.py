"""The training release: its global steps (declared in :mod:`infinisynth.specs.release`).

Each step reads the previous one's committed table and records every row it drops in
``release/rejected/{step}/ds={version}`` with the method and the counterpart (dedup) or the
benchmark and item (decontamination), so nothing is lost silently; ``report.json`` in the
release folder lists them all again for a reader who never opens the tables.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from infinisynth.errors import InputError
from infinisynth.holdout import split_holdout
from infinisynth.records import canonical_json
from infinisynth.release import benchmarks as bench
from infinisynth.release import card, export, sft_config
from infinisynth.release import rows as rel
from infinisynth.release.decontaminate import BenchmarkIndex, DecontamSettings, screen
from infinisynth.release.dedup import INDEX_SCHEMA, DedupSettings, Embedder, ReleasedIndex, deduplicate
from infinisynth.release.variants import variants
from infinisynth.settings import ConnectionLookup, env_connection, store_for
from infinisynth.spec import PipelineSpec
from infinisynth.specs.release import BENCHMARKS_VARIABLE, PIPELINE, SPEC, ReleaseSettings
from infinisynth.stages.base import GlobalStep, Rejected, StepOutput, rejected_row
from infinisynth.stages.publish import to_chat_rows
from infinisynth.steps import RunContext
from infinisynth.storage import Store

log = logging.getLogger(__name__)

__all__ = ["PIPELINE", "SPEC", "Decontaminate", "Deduplicate", "Export", "GatherCandidates", "ReleaseSettings", "run_context"]

CANDIDATES, DEDUPLICATED, DECONTAMINATED, RELEASE, INDEX = "candidates", "deduplicated", "decontaminated", "release", "index"
SPECS = {
    "code_instruct": "infinisynth.specs.code_instruct",
    "subject_instruct": "infinisynth.specs.subject_instruct",
    "diagnosis": "infinisynth.specs.deficiency_diagnosis",
}
BELOW_THRESHOLD = "below_threshold"  # code_instruct: answered problems under the publish threshold
SCREEN_COLUMNS = ("exact", "minhash", "embedding")
SCREENED_SCHEMA = pa.schema(
    [*rel.CANDIDATE_SCHEMA, *(f for f in INDEX_SCHEMA if f.name in ("exact", "minhash")), pa.field("embedding", rel.EMBEDDING_TYPE)]
)


def run_context(
    spec: PipelineSpec, params: dict[str, Any], ds: str | None, run: dict[str, Any] | None, lookup: ConnectionLookup
) -> RunContext:
    """A release run's context: partitions keyed by the version; an asset-triggered run (no logical
    date) takes today's date; the ``release_benchmarks`` Variable adds benchmark files."""
    from infinisynth.airflow_env import variable

    try:
        settings = ReleaseSettings(**params)
    except ValidationError as exc:
        raise InputError(f"the run's Params are not valid release settings: {exc}") from exc
    store = store_for(settings.storage_root or None, lookup)
    return release_context(store, settings, ds or datetime.now(UTC).date().isoformat(), lookup, variable(BENCHMARKS_VARIABLE))


def release_context(
    store: Store, settings: ReleaseSettings, run_date: str, lookup: ConnectionLookup | None = None, benchmark_variable: str | None = None
) -> RunContext:
    import json

    end = settings.end_date or run_date[:10]
    version = settings.version or end
    extra: list[Any] = []
    if benchmark_variable:
        try:
            extra = list(json.loads(benchmark_variable))
        except (ValueError, TypeError) as exc:
            raise bench.BenchmarkError(f"the Variable {BENCHMARKS_VARIABLE} is not a JSON list of benchmark files: {exc}") from exc
    run = {"date": run_date, "end_date": end, "version": version, "benchmark_files": extra}
    return RunContext(SPEC, store, version, settings, run=run, lookup=lookup or env_connection)


def embedder() -> Embedder:
    """MiniLM, loaded on first use inside the task (never at DAG parse)."""
    from infinisynth.diagnosis.leakage import embed

    return lambda texts: embed(list(texts), batch_size=128)


# -- candidates ---------------------------------------------------------------------------------


def other_releases(store: Store, version: str) -> list[str]:
    return [v for v in store.committed_dates(PIPELINE, INDEX) if v != version]


def _previous_end(store: Store, version: str, end: str) -> str | None:
    ends = []
    for other in store.committed_dates(PIPELINE, RELEASE):
        if other == version:
            continue
        meta = store.partition(PIPELINE, RELEASE, other).manifest().meta
        if meta.get("end_date") and meta["end_date"] < end:
            ends.append(meta["end_date"])
    return max(ends) if ends else None


def date_range(store: Store, settings: ReleaseSettings, version: str, end: str) -> tuple[str | None, str]:
    if settings.start_date:
        return settings.start_date, end
    previous = _previous_end(store, version, end)
    return ((date.fromisoformat(previous) + timedelta(days=1)).isoformat() if previous else None), end


def _model_provenance(store: Store, pipeline: str, ds: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Models per role and prompt versions of the pipeline's model steps for one partition."""
    spec = importlib.import_module(SPECS[pipeline]).SPEC
    roles: dict[str, Any] = {}
    prompts: dict[str, str] = {}
    for step in spec.steps:
        partition = store.partition(pipeline, step.name, ds)
        if step.kind != "model" or not partition.exists():
            continue
        meta = partition.manifest().meta
        for role, config in (meta.get("roles") or {}).items():
            roles[role] = {k: config.get(k) for k in ("model", "base_url") if k in config}
        prompts.update(meta.get("prompt_versions") or {})
    return roles, prompts


def gather(store: Store, pipeline: str, ds: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One pipeline partition's release candidates (published rows, and for code_instruct the rows
    variants reach for: answered below the publish threshold, rejected by the lint gate) and its
    source entry for the card."""
    partition = store.partition(pipeline, "dataset", ds)
    manifest = partition.manifest()
    meta = manifest.meta
    rows = [rel.release_row(r, pipeline, ds) for r in partition.read().to_pylist()]
    extra: list[dict[str, Any]] = []
    if pipeline == "code_instruct":
        fraction = (meta.get("held_out") or {}).get("fraction", 0.0) or 0.0
        below = store.partition(pipeline, BELOW_THRESHOLD, ds)
        if below.exists():
            kept, _ = split_holdout(below.read(), fraction)
            extra += [rel.release_row(r, pipeline, ds, in_dataset=False) for r in kept.to_pylist()]
        linted = store.rejected(pipeline, "verify", ds)
        if linted.exists():
            inputs = rel.input_rows(linted.read(columns=["input_json"]))
            if inputs:
                chat, _ = split_holdout(
                    to_chat_rows(
                        pa.Table.from_pylist(
                            [
                                {
                                    k: r.get(k)
                                    for k in (
                                        "id",
                                        "parent_ids",
                                        "origin",
                                        "lang",
                                        "problem",
                                        "response",
                                        "quality_scores",
                                        "quality_mean",
                                        "complexity",
                                        "quality_samples",
                                        "seed",
                                        "combination",
                                        "provenance",
                                    )
                                }
                                for r in inputs
                            ]
                        )
                    ),
                    fraction,
                )
                extra += [rel.release_row(r, pipeline, ds, in_dataset=False, lint_passed=False) for r in chat.to_pylist()]
    roles, prompts = _model_provenance(store, pipeline, ds)
    source = {
        "pipeline": pipeline,
        "ds": ds,
        "rows": len(rows),
        "extra_rows": len(extra),
        "url": partition.url,
        "funnel": meta.get("funnel") or [],
        "complexity_by_origin": meta.get("complexity_by_origin") or {},
        "quality_threshold": meta.get("quality_threshold"),
        "answer_threshold": meta.get("answer_threshold"),
        "roles": roles,
        "prompt_versions": prompts,
    }
    return rows + extra, source


class GatherCandidates(GlobalStep):
    """Every selected pipeline's committed datasets whose date is in the release's range."""

    name = CANDIDATES
    schema = rel.CANDIDATE_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        start, end = date_range(ctx.store, settings, ctx.ds, ctx.run["end_date"] if ctx.run else ctx.ds)
        unknown = [p for p in settings.pipelines if p not in SPECS]
        if unknown:
            raise InputError(f"unknown pipeline(s) {unknown}; known: {sorted(SPECS)}")
        candidates: list[dict[str, Any]] = []
        sources = []
        for pipeline in settings.pipelines:
            for ds in sorted(ctx.store.committed_dates(pipeline, "dataset")):
                day = ds.split(".iter")[0]  # diagnosis partitions are keyed by date and iteration
                if (start is None or day >= start) and day <= end:
                    found, source = gather(ctx.store, pipeline, ds)
                    candidates += found
                    sources.append(source)
        if not candidates:  # still a release (an empty one, saying so), not a failed run
            log.warning(
                "no rows to release: no committed dataset of %s between %s and %s", settings.pipelines, start or "the beginning", end
            )
        table = rel.priority_order(rel.candidates_table(candidates))
        log.info("release %s: %d candidates from %d partitions (%s to %s)", ctx.ds, table.num_rows, len(sources), start or "-", end)
        return StepOutput(table, table.num_rows, meta={"start_date": start, "end_date": end, "sources": sources})


# -- dedup --------------------------------------------------------------------------------------


def earlier_index(store: Store, version: str, settings: DedupSettings) -> tuple[ReleasedIndex, list[str]]:
    index = ReleasedIndex(settings)
    versions = other_releases(store, version)
    for other in versions:
        index.load(store.partition(PIPELINE, INDEX, other).read(), other)
    return index, versions


def _without_screen_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SCREEN_COLUMNS}


class Deduplicate(GlobalStep):
    """Exact, near and semantic duplicates, within the release and against every other release."""

    name = DEDUPLICATED
    schema = SCREENED_SCHEMA
    embed: Embedder | None = None  # tests and benchmarks may set another

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        table = ctx.partition(CANDIDATES).read()
        dedup = DedupSettings(settings.near_duplicate_threshold, settings.semantic_duplicate_threshold)
        index, versions = earlier_index(ctx.store, ctx.ds, dedup) if settings.dedup_against_releases else (None, [])
        texts = [rel.instruction(m) for m in table["messages"].to_pylist()]
        result = deduplicate(table["id"].to_pylist(), texts, self.embed or embedder(), dedup, index)
        rows = table.to_pylist()
        rejected = []
        for d in result.duplicates:
            where = f" of release {d.release}" if d.release else ""
            evidence = {"method": d.method, "counterpart": d.counterpart, "similarity": d.similarity, "release": d.release}
            detail = f"{d.method} duplicate of {d.counterpart}{where} (similarity {d.similarity})"
            rejected.append(rejected_row(DEDUPLICATED, rows[d.row], Rejected(f"duplicate_{d.method}", detail, evidence=evidence)))
        keep = pa.array(result.keep)
        kept = table.filter(keep)
        index_rows = result.index  # the kept rows' keys, in the same order
        screened = kept.append_column("exact", index_rows["exact"]).append_column("minhash", index_rows["minhash"])
        screened = screened.append_column("embedding", index_rows["embedding"])
        counts = {m: result.counts[m] for m in ("exact", "near", "semantic")}
        log.info(
            "release %s dedup: %d of %d kept; dropped %s; against releases %s", ctx.ds, kept.num_rows, table.num_rows, counts, versions
        )
        meta = {
            "dropped": counts,
            "near_threshold": dedup.near_threshold,
            "semantic_threshold": dedup.semantic_threshold,
            "earlier_releases": versions,
        }
        return StepOutput(screened.select(SCREENED_SCHEMA.names).cast(SCREENED_SCHEMA), table.num_rows, rejected=rejected, meta=meta)


# -- decontamination ----------------------------------------------------------------------------


def benchmark_items(ctx: RunContext) -> tuple[list[bench.BenchmarkItem], list[str]]:
    settings: ReleaseSettings = ctx.settings
    files = bench.parse_files([*settings.benchmark_files, *((ctx.run or {}).get("benchmark_files") or [])])
    options = ctx.store.fs.storage_options if ctx.store.root_url.startswith("s3://") else None
    items = bench.load_benchmarks(settings.benchmarks, files, options)
    return items, [*settings.benchmarks, *(f.label for f in files)]


class Decontaminate(GlobalStep):
    """Rows whose prompt or response overlaps an evaluation benchmark, by 13-grams or embeddings."""

    name = DECONTAMINATED
    schema = SCREENED_SCHEMA
    embed: Embedder | None = None

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        table = ctx.partition(DEDUPLICATED).read()
        items, names = benchmark_items(ctx)
        screen_settings = DecontamSettings(settings.decontam_ngram, settings.decontam_ngram_overlap, settings.decontam_max_cosine)
        index = BenchmarkIndex(items, self.embed or embedder(), screen_settings)
        messages = table["messages"].to_pylist()
        embeddings = np.asarray(table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        hits = screen(
            [rel.instruction(m) for m in messages],
            [rel.responses(m) for m in messages],
            embeddings.reshape(table.num_rows, -1) if table.num_rows else np.zeros((0, rel.EMBEDDING_DIM), np.float32),
            index,
        )
        dropped: dict[str, Counter[str]] = defaultdict(Counter)
        rejected = []
        drop = np.zeros(table.num_rows, dtype=bool)
        for hit in hits:
            drop[hit.row] = True
            dropped[hit.benchmark][hit.measure] += 1
            evidence = {"benchmark": hit.benchmark, "item": hit.item, "measure": hit.measure, "field": hit.field, "value": hit.value}
            detail = f"{hit.field} matches {hit.benchmark} item {hit.item} by {hit.measure} ({hit.value})"
            row = _without_screen_columns(table.slice(hit.row, 1).to_pylist()[0])
            rejected.append(rejected_row(DECONTAMINATED, row, Rejected("contaminated", detail, evidence=evidence)))
        kept = table.filter(pa.array(~drop))
        log.info("release %s decontamination against %s (%d items): %d of %d dropped", ctx.ds, names, len(items), len(hits), table.num_rows)
        meta = {
            "benchmarks": names,
            "benchmark_items": len(items),
            "ngram": screen_settings.ngram,
            "ngram_overlap": screen_settings.ngram_overlap,
            "max_cosine": screen_settings.max_cosine,
            "dropped": {b: dict(c) for b, c in dropped.items()},
        }
        return StepOutput(kept, table.num_rows, rejected=rejected, meta=meta)


# -- export -------------------------------------------------------------------------------------


def _merge_complexity(sources: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for source in sources:
        for origin, value in (source.get("complexity_by_origin") or {}).items():
            totals[origin][0] += value["mean"] * value["problems"]
            totals[origin][1] += value["problems"]
    return {o: {"mean": round(s / n, 2), "problems": int(n)} for o, (s, n) in sorted(totals.items()) if n}


def dropped_rows(store: Store, version: str) -> list[dict[str, Any]]:
    """Every row dedup and decontamination dropped, with its evidence (for report.json)."""
    out = []
    for stage in (DEDUPLICATED, DECONTAMINATED):
        partition = store.rejected(PIPELINE, stage, version)
        if not partition.exists():
            continue
        for row in partition.read(columns=["id", "reason", "detail", "evidence_json"]).to_pylist():
            evidence = canonical_json(None) if row["evidence_json"] is None else row["evidence_json"]
            out.append({"id": row["id"], "step": stage, "reason": row["reason"], "detail": row["detail"], **_loads(evidence)})
    return out


def _loads(text: str) -> dict[str, Any]:
    import json

    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def export_table(table: pa.Table) -> pa.Table:
    return table.select(rel.EXPORT_SCHEMA.names).cast(rel.EXPORT_SCHEMA)


class Export(GlobalStep):
    """The Hugging Face folder: the release, its variants, the card, the SFT config, the report;
    the released rows' index (for later releases' dedup); the optional push to the Hub."""

    name = RELEASE
    schema = rel.EXPORT_SCHEMA
    hub_api: Any = None  # tests inject a fake HfApi factory

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        store, version = ctx.store, ctx.ds
        screened = ctx.partition(DECONTAMINATED).read()
        released = screened.filter(pc.field("in_dataset"))
        gathered = ctx.partition(CANDIDATES).manifest().meta
        sources = gathered["sources"]
        answer_thresholds = [s["answer_threshold"] for s in sources if s.get("answer_threshold") is not None]
        publish_thresholds = [s["quality_threshold"] for s in sources if s.get("quality_threshold") is not None]
        made = variants(
            screened,
            thresholds=settings.quality_thresholds,
            mixes=settings.mixes,
            lint_unfiltered=settings.lint_variant,
            publish_threshold=max(publish_thresholds) if publish_thresholds else 6.0,
            answered_from=max(answer_thresholds) if answer_thresholds else None,
        )
        tables = export.shard_files(export_table(released), "data", settings.max_shard_rows)
        configs = {"default": ("data/train-*", released.num_rows)}
        for v in made:
            tables.update(export.shard_files(export_table(v.table), f"variants/{v.name}", settings.max_shard_rows))
            configs[v.name] = (f"variants/{v.name}/train-*", v.table.num_rows)
        dedup_meta = ctx.partition(DEDUPLICATED).manifest().meta
        decontam_meta = ctx.partition(DECONTAMINATED).manifest().meta
        roles: dict[str, Any] = {}
        prompts: dict[str, str] = {}
        for source in sources:
            roles.update(source.get("roles") or {})
            prompts.update(source.get("prompt_versions") or {})
        summary = {
            "version": version,
            "start_date": gathered.get("start_date"),
            "end_date": gathered.get("end_date"),
            "rows": released.num_rows,
            "candidates": ctx.partition(CANDIDATES).manifest().rows,
            "origins": dict(Counter(released["origin"].to_pylist())),
            "sources": [{k: v for k, v in s.items() if k not in ("roles", "prompt_versions")} for s in sources],
            "roles": roles,
            "prompt_versions": prompts,
            "earlier_releases": dedup_meta.get("earlier_releases", []),
            "dedup": {k: dedup_meta.get(k) for k in ("dropped", "near_threshold", "semantic_threshold")},
            "decontamination": {
                k: decontam_meta.get(k) for k in ("benchmarks", "benchmark_items", "ngram", "ngram_overlap", "max_cosine", "dropped")
            },
            "complexity_by_origin": _merge_complexity(sources),
            "variants": [{"name": v.name, "description": v.description, "rows": v.table.num_rows, "note": v.note} for v in made],
        }
        folder = export.release_path(store, version)
        dataset_ref = settings.hub_repo_id if settings.push_to_hub and settings.hub_repo_id else _local(store, folder)
        texts = {
            "README.md": card.dataset_card(rel.EXPORT_SCHEMA, configs, settings.license, summary),
            "sft_config.yaml": sft_config.sft_config_yaml(dataset_ref, model=settings.sft_model, output_dir=f"sft-{version}"),
            "report.json": export.report_json({**summary, "dropped_rows": dropped_rows(store, version)}),
        }
        folder = export.write_release(store, version, tables, texts)
        index = screened.filter(pc.field("in_dataset")).select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
        store.partition(PIPELINE, INDEX, version).write_and_commit(index, meta={"version": version}, schema=INDEX_SCHEMA)
        pushed = self._push(store, folder, version) if settings.push_to_hub else None
        log.info(
            "release %s: %d rows in %s; variants %s",
            version,
            released.num_rows,
            store.url(folder),
            {v.name: v.table.num_rows for v in made},
        )
        meta = {
            "folder": store.url(folder),
            "start_date": gathered.get("start_date"),
            "end_date": gathered.get("end_date"),
            "variants": {v.name: v.table.num_rows for v in made},
            "hub": pushed,
        }
        return StepOutput(export_table(released), released.num_rows, meta=meta)

    def _push(self, store: Store, folder: str, version: str) -> dict[str, Any]:
        settings: ReleaseSettings = self.ctx.settings
        if not settings.hub_repo_id:
            raise InputError("push_to_hub is on but hub_repo_id is empty")
        conn = self.ctx.lookup(settings.hub_conn_id)
        token = (conn or {}).get("password")
        if not token:
            raise InputError(f"push_to_hub needs the Hub token as the password of connection {settings.hub_conn_id!r}")
        return export.push_to_hub(
            store, folder, settings.hub_repo_id, token, version=version, private=settings.hub_private, api_factory=self.hub_api
        )


def _local(store: Store, folder: str) -> str:
    url = store.url(folder)
    return url[len("file://") :] if url.startswith("file://") else url
