"""The training release: its global steps (declared in :mod:`infinisynth.specs.release`).

Each step reads the previous one's committed table and records every row it drops in
``release/rejected/{step}/ds={version}`` with the method and the counterpart (dedup) or the
benchmark and item (decontamination), so nothing is lost silently; ``report.json`` in the
release folder lists them all again for a reader who never opens the tables.
"""

from __future__ import annotations

import importlib
import logging
import posixpath
import tempfile
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from infinisynth.errors import InputError
from infinisynth.holdout import split_holdout
from infinisynth.records import REJECTED_SCHEMA, canonical_json
from infinisynth.release import benchmarks as bench
from infinisynth.release import card, export, sft_config
from infinisynth.release import rows as rel
from infinisynth.release.decontaminate import BenchmarkIndex, DecontamSettings, screen
from infinisynth.release.dedup import INDEX_SCHEMA, SEGMENT_ROWS, Deduplicator, DedupSettings, Embedder, ReleasedIndex, index_table
from infinisynth.release.variants import RELEASED, SELECTION_COLUMNS, plan, with_keys
from infinisynth.settings import ConnectionLookup, env_connection, store_for
from infinisynth.spec import PipelineSpec
from infinisynth.specs.release import BENCHMARKS_VARIABLE, PIPELINE, SPEC, ReleaseSettings
from infinisynth.spill import Spill, SpilledTable, freeing
from infinisynth.stages.base import GlobalStep, Rejected, StepOutput, rejected_row
from infinisynth.stages.publish import to_chat_rows
from infinisynth.steps import RunContext
from infinisynth.storage import Manifest, Partition, Store, is_local

log = logging.getLogger(__name__)

__all__ = ["PIPELINE", "SPEC", "Decontaminate", "Deduplicate", "Export", "GatherCandidates", "ReleaseSettings", "run_context"]

CANDIDATES, DEDUPLICATED, DECONTAMINATED, RELEASE, INDEX = "candidates", "deduplicated", "decontaminated", "release", "index"
SPECS = {
    "code_instruct": "infinisynth.specs.code_instruct",
    "subject_instruct": "infinisynth.specs.subject_instruct",
    "diagnosis": "infinisynth.specs.deficiency_diagnosis",
}
BELOW_THRESHOLD = "below_threshold"  # code_instruct: answered problems under the publish threshold
SCREEN_COLUMNS = ("exact", "minhash", "embedding", "ann_key")
SCREENED_SCHEMA = pa.schema(
    [
        *rel.CANDIDATE_SCHEMA,
        *(f for f in INDEX_SCHEMA if f.name in ("exact", "minhash")),
        pa.field("embedding", rel.EMBEDDING_TYPE),
        pa.field("ann_key", pa.uint64()),  # the row's key in the dedup step's saved HNSW index
    ]
)
ANN_AREA, INDEX_ANN_AREA = "_ann", "index_ann"  # the dedup step's saved HNSW segments; each release's key map (and old indexes)
BATCH_ROWS = 4096  # rows a step holds at once
REPAIRS = 2  # times an export redoes the steps a concurrent run of its version re-committed under it


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


PUBLISHED, BELOW, LINT_REJECTED = 0, 1, 2  # candidate ranks: dedup keeps the first of a group, so published rows win


def _linted_chat(inputs: list[dict[str, Any]]) -> pa.Table:
    """Lint-rejected pairs (their ``input_json`` rows) as chat rows."""
    fields = (
        "id", "parent_ids", "origin", "lang", "problem", "response", "quality_scores",
        "quality_mean", "complexity", "quality_samples", "seed", "combination", "provenance",
    )  # fmt: skip
    return to_chat_rows(pa.Table.from_pylist([{k: r.get(k) for k in fields} for r in inputs]))


def candidate_batches(store: Store, pipeline: str, ds: str, manifest: Manifest) -> Iterator[tuple[int, pa.Table]]:
    """One pipeline partition's release candidates, ``(rank, table)`` a batch of ``BATCH_ROWS`` at
    a time: the published rows (the snapshot ``manifest`` names), and for code_instruct the rows
    variants reach for (answered below the publish threshold, rejected by the lint gate), minus
    the held-out slice. Rows keep the order they are stored in."""
    for batch in freeing(store.partition(pipeline, "dataset", ds).snapshot_batches(manifest, batch_size=BATCH_ROWS)):
        yield PUBLISHED, rel.candidates_table(rel.release_row(r, pipeline, ds) for r in batch.to_pylist())
    if pipeline != "code_instruct":
        return
    fraction = (manifest.meta.get("held_out") or {}).get("fraction", 0.0) or 0.0
    below = store.partition(pipeline, BELOW_THRESHOLD, ds)
    if below.exists():
        for batch in freeing(below.iter_batches(batch_size=BATCH_ROWS)):
            kept, _ = split_holdout(pa.Table.from_batches([batch]), fraction)
            yield BELOW, rel.candidates_table(rel.release_row(r, pipeline, ds, in_dataset=False) for r in kept.to_pylist())
    linted = store.rejected(pipeline, "verify", ds)
    if linted.exists():
        for batch in freeing(linted.iter_batches(columns=["input_json"], batch_size=BATCH_ROWS)):
            inputs = rel.input_rows(pa.Table.from_batches([batch]))
            if inputs:
                chat, _ = split_holdout(_linted_chat(inputs), fraction)
                rows = (rel.release_row(r, pipeline, ds, in_dataset=False, lint_passed=False) for r in chat.to_pylist())
                yield LINT_REJECTED, rel.candidates_table(rows)


def source_entry(store: Store, pipeline: str, ds: str, manifest: Manifest, rows: int, extra_rows: int) -> dict[str, Any]:
    """A source partition's entry for the card: its funnel, thresholds, models and prompt versions."""
    meta = manifest.meta
    roles, prompts = _model_provenance(store, pipeline, ds)
    return {
        "pipeline": pipeline,
        "ds": ds,
        "rows": rows,
        "extra_rows": extra_rows,
        "url": store.partition(pipeline, "dataset", ds).url,
        "funnel": meta.get("funnel") or [],
        "complexity_by_origin": meta.get("complexity_by_origin") or {},
        "quality_threshold": meta.get("quality_threshold"),
        "answer_threshold": meta.get("answer_threshold"),
        "roles": roles,
        "prompt_versions": prompts,
    }


# -- streaming: rows in batches, rows out through scratch files -----------------------------------


class ConcurrentRelease(RuntimeError):
    """Another run of the same version re-committed a step this export depends on: nothing was
    published (a retry, once that run is done, publishes a consistent release)."""


class _Rejects:
    """Rejected rows in a scratch Arrow file, memory-mapped back as the table the commit takes."""

    def __init__(self, directory: str):
        self.path = posixpath.join(directory, f"rejected-{uuid.uuid4().hex[:8]}.arrow")
        self._writer = pa.ipc.new_file(self.path, REJECTED_SCHEMA)
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._writer.write_table(pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA))
            self.rows += len(rows)

    def table(self) -> pa.Table:
        self._writer.close()
        return pa.ipc.open_file(pa.memory_map(self.path)).read_all()


class _StreamingStep(GlobalStep):
    """A global step whose output and rejected rows go through scratch files."""

    def scratch(self) -> str:
        if not hasattr(self, "_scratch"):
            self._scratch = tempfile.TemporaryDirectory(prefix=f"infinisynth-{self.name}-")  # lives as long as the step
        return self._scratch.name


def _build(meta: dict[str, Any]) -> str | None:
    return (meta.get("build") or {}).get("id")


def _new_build(upstream: Manifest | None) -> dict[str, Any]:
    """This step's commit, named, and the upstream commit it read: the export checks the chain."""
    return {"id": uuid.uuid4().hex, "upstream": _build(upstream.meta) if upstream is not None else None}


# -- candidates ---------------------------------------------------------------------------------


class GatherCandidates(_StreamingStep):
    """Every selected pipeline's committed datasets whose date is in the release's range, published
    rows first (then each pipeline, date and the rows' stored order), one batch in memory at a time."""

    name = CANDIDATES
    schema = rel.CANDIDATE_SCHEMA

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        start, end = date_range(ctx.store, settings, ctx.ds, ctx.run["end_date"] if ctx.run else ctx.ds)
        unknown = [p for p in settings.pipelines if p not in SPECS]
        if unknown:
            raise InputError(f"unknown pipeline(s) {unknown}; known: {sorted(SPECS)}")
        ranks = [Spill(self.scratch(), rel.CANDIDATE_SCHEMA) for _ in range(3)]  # published, below threshold, lint-rejected
        sources = []
        for pipeline in sorted(settings.pipelines, key=lambda p: rel.PIPELINES.index(p) if p in rel.PIPELINES else len(rel.PIPELINES)):
            for ds in sorted(ctx.store.committed_dates(pipeline, "dataset")):
                day = ds.split(".iter")[0]  # diagnosis partitions are keyed by date and iteration
                if (start is None or day >= start) and day <= end:
                    manifest = ctx.store.partition(pipeline, "dataset", ds).manifest()
                    counts = [0, 0, 0]
                    for rank, table in candidate_batches(ctx.store, pipeline, ds, manifest):  # a batch in memory at a time
                        ranks[rank].write(table)
                        counts[rank] += table.num_rows
                    sources.append(
                        source_entry(ctx.store, pipeline, ds, manifest, counts[PUBLISHED], counts[BELOW] + counts[LINT_REJECTED])
                    )
        total = sum(s.rows for s in ranks)
        if not total:  # still a release (an empty one, saying so), not a failed run
            log.warning(
                "no rows to release: no committed dataset of %s between %s and %s", settings.pipelines, start or "the beginning", end
            )
        log.info("release %s: %d candidates from %d partitions (%s to %s)", ctx.ds, total, len(sources), start or "-", end)
        meta = {"start_date": start, "end_date": end, "sources": sources, "build": _new_build(None)}
        return StepOutput(SpilledTable(ranks, rel.CANDIDATE_SCHEMA).as_table(), total, meta=meta)


# -- dedup --------------------------------------------------------------------------------------


def _local_copy(store: Store, path: str, scratch: str) -> str:
    """A path usearch can open: the file itself on local disk, else a scratch copy."""
    if is_local(store.fs):
        return path
    local = posixpath.join(scratch, posixpath.basename(path))
    store.fs.get(path, local)
    return local


def ann_files(meta: dict[str, Any]) -> list[str]:
    """The saved HNSW files a dedup step's or a release index's meta names (one path before segments)."""
    ann = meta.get("ann")
    return [ann] if isinstance(ann, str) else list(ann or [])


def earlier_index(store: Store, version: str, index: ReleasedIndex, scratch: str | None = None) -> list[str]:
    """Every other release's index into ``index``: exact and MinHash keys streamed in, the saved
    HNSW segments and key map memory-mapped (rebuilt from the stored embeddings only for a
    release saved without them); the releases' versions."""
    versions = other_releases(store, version)
    for other in versions:
        partition = store.partition(PIPELINE, INDEX, other)
        manifest = partition.manifest()
        files, key_map = ann_files(manifest.meta), manifest.meta.get("ann_keys")
        needed = [*files, key_map] if key_map else files
        paths: list[str] | None = None
        if files and scratch is not None and all(store.fs.exists(posixpath.join(store.root, f)) for f in needed):
            paths = [_local_copy(store, posixpath.join(store.root, f), scratch) for f in files]
        keys = None
        if paths is not None and key_map:  # the published rows' HNSW keys, sorted: a lookup maps a found key to its row
            keys = np.load(_local_copy(store, posixpath.join(store.root, key_map), scratch or ""), mmap_mode="r")
        columns = INDEX_SCHEMA.names if paths is None else ["id", "exact", "minhash"]
        index.load(partition.snapshot_batches(manifest, columns), other, ann_path=paths, key_map=keys)
    return versions


def _without_screen_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SCREEN_COLUMNS}


class Deduplicate(_StreamingStep):
    """Exact, near and semantic duplicates, within the release and against every other release."""

    name = DEDUPLICATED
    schema = SCREENED_SCHEMA
    embed: Embedder | None = None  # tests and benchmarks may set another
    segment_rows = SEGMENT_ROWS  # rows of the in-memory HNSW segment: tests set a tiny one

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        candidates = ctx.partition(CANDIDATES)
        manifest = candidates.manifest()
        build = _new_build(manifest)
        dedup = DedupSettings(
            settings.near_duplicate_threshold, settings.semantic_duplicate_threshold, batch_size=BATCH_ROWS, segment_rows=self.segment_rows
        )
        store = ctx.store
        # segments are saved where the release keeps them (scratch first on a remote store)
        folder = posixpath.dirname(store.side_path(PIPELINE, ANN_AREA, ctx.ds, "_"))
        if is_local(store.fs):
            store.fs.makedirs(folder, exist_ok=True)
        index = ReleasedIndex(dedup, segment_dir=folder if is_local(store.fs) else self.scratch(), segment_prefix=f"dedup-{build['id']}")
        versions = earlier_index(store, ctx.ds, index, self.scratch()) if settings.dedup_against_releases else []
        deduplicator = Deduplicator(self.embed or embedder(), dedup, index)
        out, rejects = Spill(self.scratch(), SCREENED_SCHEMA), _Rejects(self.scratch())
        for batch in freeing(candidates.snapshot_batches(manifest, batch_size=BATCH_ROWS)):
            table = pa.Table.from_batches([batch])
            ids = table["id"].to_pylist()
            result = deduplicator.batch(ids, [rel.instruction(m) for m in table["messages"].to_pylist()])
            rejected = []
            for d in result.duplicates:
                where = f" of release {d.release}" if d.release else ""
                evidence = {"method": d.method, "counterpart": d.counterpart, "similarity": d.similarity, "release": d.release}
                detail = f"{d.method} duplicate of {d.counterpart}{where} (similarity {d.similarity})"
                row = table.slice(d.row, 1).to_pylist()[0]
                rejected.append(rejected_row(DEDUPLICATED, row, Rejected(f"duplicate_{d.method}", detail, evidence=evidence)))
            rejects.write(rejected)
            keys = index_table([ids[i] for i in np.nonzero(result.keep)[0]], result.exact, result.signatures, result.embeddings)
            kept = table.filter(pa.array(result.keep))
            for name in ("exact", "minhash", "embedding"):
                kept = kept.append_column(name, keys[name])
            out.write(kept.append_column("ann_key", pa.array(result.keys.astype(np.uint64), pa.uint64())))
        ann = []  # this release's HNSW segments: the export publishes them as they are
        for path in index.seal():
            stored = posixpath.join(folder, posixpath.basename(path))
            if not is_local(store.fs):
                store.fs.put(path, stored)
            ann.append(posixpath.relpath(stored, store.root))
        counts = {m: deduplicator.counts[m] for m in ("exact", "near", "semantic")}
        log.info("release %s dedup: %d of %d kept; dropped %s; against releases %s", ctx.ds, out.rows, manifest.rows, counts, versions)
        meta = {
            "dropped": counts,
            "near_threshold": dedup.near_threshold,
            "semantic_threshold": dedup.semantic_threshold,
            "earlier_releases": versions,
            "ann": ann,
            "build": build,
        }
        out.close()
        return StepOutput(SpilledTable([out], SCREENED_SCHEMA).as_table(), manifest.rows, rejected=rejects.table(), meta=meta)


# -- decontamination ----------------------------------------------------------------------------


def benchmark_items(ctx: RunContext) -> tuple[list[bench.BenchmarkItem], list[str]]:
    settings: ReleaseSettings = ctx.settings
    files = bench.parse_files([*settings.benchmark_files, *((ctx.run or {}).get("benchmark_files") or [])])
    options = ctx.store.fs.storage_options if ctx.store.root_url.startswith("s3://") else None
    items = bench.load_benchmarks(settings.benchmarks, files, options)
    return items, [*settings.benchmarks, *(f.label for f in files)]


def _vectors(column: pa.ChunkedArray | pa.Array, rows: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, rel.EMBEDDING_DIM), np.float32)
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(flat.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(rows, -1)


class Decontaminate(_StreamingStep):
    """Rows whose prompt or response overlaps an evaluation benchmark, by 13-grams or embeddings."""

    name = DECONTAMINATED
    schema = SCREENED_SCHEMA
    embed: Embedder | None = None

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        deduplicated = ctx.partition(DEDUPLICATED)
        manifest = deduplicated.manifest()
        items, names = benchmark_items(ctx)
        screen_settings = DecontamSettings(
            settings.decontam_ngram, settings.decontam_ngram_overlap, settings.decontam_max_cosine, settings.decontam_max_cosine_response
        )
        embed = self.embed or embedder()
        index = BenchmarkIndex(items, embed, screen_settings)
        dropped: dict[str, Counter[str]] = defaultdict(Counter)
        out, rejects = Spill(self.scratch(), SCREENED_SCHEMA), _Rejects(self.scratch())
        total = 0
        for batch in freeing(deduplicated.snapshot_batches(manifest, batch_size=BATCH_ROWS)):
            table = pa.Table.from_batches([batch])
            messages = table["messages"].to_pylist()
            responses = [rel.responses(m) for m in messages]
            hits = screen(
                [rel.instruction(m) for m in messages],
                responses,
                _vectors(table["embedding"], table.num_rows),
                index,
                np.asarray(embed(responses), dtype=np.float32) if items and responses else None,
            )
            drop = np.zeros(table.num_rows, dtype=bool)
            rejected = []
            for hit in hits:
                drop[hit.row] = True
                dropped[hit.benchmark][hit.measure] += 1
                evidence = {"benchmark": hit.benchmark, "item": hit.item, "measure": hit.measure, "field": hit.field, "value": hit.value}
                detail = f"{hit.field} matches {hit.benchmark} item {hit.item} by {hit.measure} ({hit.value})"
                row = _without_screen_columns(table.slice(hit.row, 1).to_pylist()[0])
                rejected.append(rejected_row(DECONTAMINATED, row, Rejected("contaminated", detail, evidence=evidence)))
            rejects.write(rejected)
            out.write(table.filter(pa.array(~drop)))
            total += table.num_rows
        log.info("release %s decontamination against %s (%d items): %d of %d dropped", ctx.ds, names, len(items), rejects.rows, total)
        meta = {
            "benchmarks": names,
            "benchmark_items": len(items),
            "ngram": screen_settings.ngram,
            "ngram_overlap": screen_settings.ngram_overlap,
            "max_cosine": screen_settings.max_cosine,
            "max_cosine_response": screen_settings.max_cosine_response,
            "dropped": {b: dict(c) for b, c in dropped.items()},
            "build": _new_build(manifest),
        }
        out.close()
        return StepOutput(SpilledTable([out], SCREENED_SCHEMA).as_table(), total, rejected=rejects.table(), meta=meta)


# -- export -------------------------------------------------------------------------------------


def _merge_complexity(sources: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for source in sources:
        for origin, value in (source.get("complexity_by_origin") or {}).items():
            totals[origin][0] += value["mean"] * value["problems"]
            totals[origin][1] += value["problems"]
    return {o: {"mean": round(s / n, 2), "problems": int(n)} for o, (s, n) in sorted(totals.items()) if n}


def dropped_rows(store: Store, version: str) -> Iterator[dict[str, Any]]:
    """Every row dedup and decontamination dropped, with its evidence (for report.json)."""
    for stage in (DEDUPLICATED, DECONTAMINATED):
        partition = store.rejected(PIPELINE, stage, version)
        if not partition.exists():
            continue
        for batch in partition.iter_batches(columns=["id", "reason", "detail", "evidence_json"]):
            for row in batch.to_pylist():
                evidence = canonical_json(None) if row["evidence_json"] is None else row["evidence_json"]
                yield {"id": row["id"], "step": stage, "reason": row["reason"], "detail": row["detail"], **_loads(evidence)}


def _loads(text: str) -> dict[str, Any]:
    import json

    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def export_table(table: pa.Table) -> pa.Table:
    return table.select(rel.EXPORT_SCHEMA.names).cast(rel.EXPORT_SCHEMA)


def consistent_chain(store: Store, version: str) -> dict[str, Manifest]:
    """The committed steps of one version, checked to be one run's chain (each step read the
    commit of the step before it, and each rejected table belongs to its step's commit)."""
    manifests = {step: store.partition(PIPELINE, step, version).manifest() for step in (CANDIDATES, DEDUPLICATED, DECONTAMINATED)}
    for step, upstream in ((DEDUPLICATED, CANDIDATES), (DECONTAMINATED, DEDUPLICATED)):
        read = (manifests[step].meta.get("build") or {}).get("upstream")
        rejected = store.rejected(PIPELINE, step, version).manifest()
        if read != _build(manifests[upstream].meta) or _build(rejected.meta) != _build(manifests[step].meta):
            raise ConcurrentRelease(
                f"release {version}: {upstream} was re-committed (by {manifests[upstream].committed_by} at "
                f"{manifests[upstream].created_at}) after {step} read it, or {step}'s rejected rows are another run's: "
                "another run of this version is in progress; nothing was published. Retry once it is done."
            )
    return manifests


class Export(_StreamingStep):
    """The Hugging Face folder: the release, its variants, the card, the SFT config, the report;
    the released rows' index (for later releases' dedup); the optional push to the Hub.

    Two runs of one version never export at once: the step holds the release partition's commit
    lease (waiting for another holder, taking over a dead one's), and publishes only a consistent
    chain of the version's committed steps (:func:`consistent_chain`), read as committed; when a
    concurrent run broke the chain, it redoes dedup and decontamination under the lease first."""

    name = RELEASE
    schema = rel.EXPORT_SCHEMA
    hub_api: Any = None  # tests inject a fake HfApi factory

    def run(self) -> StepOutput:
        ctx: RunContext = self.ctx
        with ctx.partition(RELEASE).lease() as lease:
            self._lease = lease
            for attempt in range(REPAIRS + 1):
                try:
                    consistent_chain(ctx.store, ctx.ds)
                    break
                except ConcurrentRelease as exc:
                    if attempt == REPAIRS:
                        raise
                    # another run re-committed a step between this run's steps: redo the later
                    # steps from the candidates as committed now, under the lease, and check again
                    log.warning("%s; redoing dedup and decontamination from the committed candidates", exc)
                    from infinisynth.steps import run_global_step

                    for step in (DEDUPLICATED, DECONTAMINATED):
                        run_global_step(ctx, step)
                        lease.renew()
            return self._export(self.scratch())

    def _export(self, scratch: str) -> StepOutput:
        ctx: RunContext = self.ctx
        settings: ReleaseSettings = ctx.settings
        store, version = ctx.store, ctx.ds
        chain = consistent_chain(store, version)
        screened_partition, screened_manifest = ctx.partition(DECONTAMINATED), chain[DECONTAMINATED]
        gathered, dedup_meta, decontam_meta = chain[CANDIDATES].meta, chain[DEDUPLICATED].meta, screened_manifest.meta
        sources = gathered["sources"]
        answer_thresholds = [s["answer_threshold"] for s in sources if s.get("answer_threshold") is not None]
        publish_thresholds = [s["quality_threshold"] for s in sources if s.get("quality_threshold") is not None]
        # every variant's rule and row count first, from passes over the small columns (shard names carry the counts)
        selection = plan(
            lambda: freeing(screened_partition.snapshot_batches(screened_manifest, SELECTION_COLUMNS, 65_536)),
            thresholds=settings.quality_thresholds,
            mixes=settings.mixes,
            lint_unfiltered=settings.lint_variant,
            publish_threshold=max(publish_thresholds) if publish_thresholds else 6.0,
            answered_from=max(answer_thresholds) if answer_thresholds else None,
        )
        made, rows = selection.variants, selection.released
        folder = export.FolderWriter(store, version)
        try:
            splits = [("data", RELEASED, rows, folder.shards("data", rel.EXPORT_SCHEMA, rows, settings.max_shard_rows))]
            splits += [
                (v.name, v.rule, v.rows, folder.shards(f"variants/{v.name}", rel.EXPORT_SCHEMA, v.rows, settings.max_shard_rows))
                for v in made
            ]
            at = 0
            for batch in freeing(screened_partition.snapshot_batches(screened_manifest, [*rel.EXPORT_SCHEMA.names, "in_dataset"])):
                table = with_keys(batch, at) if selection.keyed else pa.Table.from_batches([batch])
                for _, rule, _, writer in splits:
                    writer.write(table.filter(rule).select(rel.EXPORT_SCHEMA.names))
                at += batch.num_rows
                self._lease.keep_alive()
            for name, _, counted, writer in splits:
                writer.close()
                if writer.rows != counted:  # the counts are in the shard names and the card: they must be what was written
                    raise RuntimeError(f"release {version}: {name} has {writer.rows} rows, {counted} counted before writing")
            configs = {"default": ("data/train-*", rows)}
            configs.update({v.name: (f"variants/{v.name}/train-*", v.rows) for v in made})
            roles: dict[str, Any] = {}
            prompts: dict[str, str] = {}
            for source in sources:
                roles.update(source.get("roles") or {})
                prompts.update(source.get("prompt_versions") or {})
            summary = {
                "version": version,
                "start_date": gathered.get("start_date"),
                "end_date": gathered.get("end_date"),
                "rows": rows,
                "candidates": chain[CANDIDATES].rows,
                "origins": selection.released_origins,
                "sources": [{k: v for k, v in s.items() if k not in ("roles", "prompt_versions")} for s in sources],
                "roles": roles,
                "prompt_versions": prompts,
                "earlier_releases": dedup_meta.get("earlier_releases", []),
                "dedup": {k: dedup_meta.get(k) for k in ("dropped", "near_threshold", "semantic_threshold")},
                "decontamination": {
                    k: decontam_meta.get(k)
                    for k in ("benchmarks", "benchmark_items", "ngram", "ngram_overlap", "max_cosine", "max_cosine_response", "dropped")
                },
                "complexity_by_origin": _merge_complexity(sources),
                "variants": [{"name": v.name, "description": v.description, "rows": v.rows, "note": v.note} for v in made],
            }
            final = export.release_path(store, version)
            dataset_ref = settings.hub_repo_id if settings.push_to_hub and settings.hub_repo_id else _local(store, final)
            folder.text("README.md", card.dataset_card(rel.EXPORT_SCHEMA, configs, settings.license, summary))
            folder.text("sft_config.yaml", sft_config.sft_config_yaml(dataset_ref, model=settings.sft_model, output_dir=f"sft-{version}"))
            folder.text_chunks("report.json", export.report_json_chunks(summary, dropped_rows(store, version)))
            self._lease.renew()  # still ours: publish
            final = folder.publish()
        except BaseException:
            folder.discard()
            raise
        self._write_index(screened_partition, screened_manifest, rows, dedup_meta, scratch)
        pushed = self._push(store, final, version) if settings.push_to_hub else None
        log.info("release %s: %d rows in %s; variants %s", version, rows, store.url(final), {v.name: v.rows for v in made})
        meta = {
            "folder": store.url(final),
            "start_date": gathered.get("start_date"),
            "end_date": gathered.get("end_date"),
            "variants": {v.name: v.rows for v in made},
            "hub": pushed,
            "build": _new_build(screened_manifest),
        }
        published = ctx.partition(DECONTAMINATED)  # the table of this step: the released rows, streamed by the commit
        out = Spill(scratch, rel.EXPORT_SCHEMA)
        for batch in freeing(published.snapshot_batches(screened_manifest, rel.EXPORT_SCHEMA.names + ["in_dataset"])):
            out.write(pa.Table.from_batches([batch]).filter(pc.field("in_dataset")))
        out.close()
        return StepOutput(SpilledTable([out], rel.EXPORT_SCHEMA).as_table(), rows, meta=meta)

    def _write_index(self, partition: Partition, manifest: Manifest, rows: int, dedup_meta: dict[str, Any], scratch: str) -> None:
        """The released rows' index table for later releases' dedup, and beside it their HNSW keys
        in row order (the key map, ~8 bytes a row on disk, written as the table streams): the dedup
        step's saved segments are published as they are, never loaded. They also hold the rows
        decontamination dropped; a later release finds no such key in the map (no match)."""
        ctx: RunContext = self.ctx
        store, version = ctx.store, ctx.ds
        index_partition = store.partition(PIPELINE, INDEX, version)
        dedup_files = ann_files(dedup_meta)
        segments = dedup_files if rows and all(store.fs.exists(posixpath.join(store.root, f)) for f in dedup_files) else []
        key_map = None
        keys: np.memmap | None = None
        if segments:  # else (no rows, or segments another build's export removed) later releases rebuild from the embeddings
            key_map = posixpath.relpath(store.side_path(PIPELINE, INDEX_ANN_AREA, version, f"keys-{uuid.uuid4().hex[:8]}.npy"), store.root)
            local_keys = posixpath.join(store.root, key_map) if is_local(store.fs) else posixpath.join(scratch, posixpath.basename(key_map))
            if is_local(store.fs):
                store.fs.makedirs(posixpath.dirname(local_keys), exist_ok=True)
            keys = np.lib.format.open_memmap(local_keys, mode="w+", dtype=np.uint64, shape=(rows,))  # file-backed, filled a batch at a time
        written = 0

        def index_rows() -> Iterator[pa.RecordBatch]:
            nonlocal written
            for batch in freeing(partition.snapshot_batches(manifest, [*INDEX_SCHEMA.names, "in_dataset", "ann_key"])):
                table = pa.Table.from_batches([batch]).filter(pc.field("in_dataset"))
                if keys is not None:
                    written = _append_keys(keys, written, table["ann_key"])
                self._lease.keep_alive()
                yield from table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA).to_batches()

        data = index_partition.write_file(0, index_rows(), INDEX_SCHEMA)
        if keys is not None and key_map is not None:
            keys.flush()  # the file is whole before it is copied or committed
            if not is_local(store.fs):
                store.fs.put(local_keys, posixpath.join(store.root, key_map))
        previous = index_partition.manifest().meta if index_partition.exists() else {}
        index_partition.commit([data], INDEX_SCHEMA, meta={"version": version, "ann": segments, "ann_keys": key_map})
        # then what the new index no longer names: the one it replaced, other (superseded) builds' segments
        stale = [f for f in [*ann_files(previous), previous.get("ann_keys")] if f and f not in segments and f != key_map]
        folder = posixpath.dirname(store.side_path(PIPELINE, ANN_AREA, version, "_"))
        stale += [
            posixpath.relpath(path, store.root)
            for path in (store.fs.ls(folder, detail=False) if store.fs.exists(folder) else [])
            if posixpath.relpath(path, store.root) not in dedup_files
        ]
        for path in {posixpath.join(store.root, f) for f in stale}:
            if store.fs.exists(path):
                store.fs.rm(path)

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


def _append_keys(keys: np.ndarray, at: int, batch: pa.ChunkedArray) -> int:
    """A batch of released rows' HNSW keys into the key map at ``at``; where the next batch goes.
    Dedup gives keys in the order it writes rows, so the map is sorted (a lookup's precondition)."""
    values = np.asarray(batch.to_numpy(zero_copy_only=False), dtype=np.uint64)
    if len(values) and ((at and values[0] <= keys[at - 1]) or np.any(values[1:] <= values[:-1])):
        raise ValueError("the released rows' HNSW keys are not increasing in row order: the key map would not be sorted")
    keys[at : at + len(values)] = values
    return at + len(values)


def _local(store: Store, folder: str) -> str:
    url = store.url(folder)
    return url[len("file://") :] if url.startswith("file://") else url
