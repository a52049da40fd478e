"""A run's report, assembled from what the run left in storage: pure functions, no Airflow.

Everything here reads manifests, rejected tables and report files through :mod:`infinisynth.storage`
(``file://`` or ``s3://``) and returns plain JSON-able dicts that the page's charts draw. Only
chosen fields leave a manifest (never a whole ``meta``), and every string that could carry a
credential (a URL's user info, an ``sk-...`` key) goes through :func:`redact` first.

Airflow's part (which run, which root, the task instances' wall times) comes in as arguments:
``infinisynth.ui_report.airflow`` looks it up inside the api-server.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from infinisynth.quality_dimensions import DIMENSIONS
from infinisynth.storage import MANIFEST, Partition, PartitionNotFound, SchemaMismatch, Store, partition_key

# DAG id -> the pipeline folder its tables live in, and its published table.
PIPELINES: dict[str, str] = {
    "code_instruct": "code_instruct",
    "subject_instruct": "subject_instruct",
    "deficiency_diagnosis": "diagnosis",
}
PUBLISHED = "dataset"
PAPER_COMPLEXITY = {"seed": 3.17, "reverse": 5.85, "backfeed": 6.83}  # Infinite-Instruct, Table 3
SAMPLE_ROWS = 20
MAX_SAMPLE_CHARS = 4000  # per field of a rejected-row sample
TREND_NIGHTS = 14

_SECRET_PATTERNS = (
    re.compile(r"(?<=://)[^/@\s:]+(:[^/@\s]*)?@"),  # user:password@ in a URL
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),  # an OpenAI-style key
    re.compile(r"(?i)\b(api[_-]?key|password|secret|token)=[^&\s]+"),  # a secret in a query string
)


def redact(value: Any) -> Any:
    """``value`` with anything that looks like a credential replaced by ``***`` (recursively)."""
    if isinstance(value, str):
        for pattern in _SECRET_PATTERNS:
            value = pattern.sub("***@" if pattern is _SECRET_PATTERNS[0] else "***", value)
        return value
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


@dataclass(frozen=True)
class RunRef:
    """Which partition of which pipeline a DAG run wrote: ``ds`` is the logical date, or the
    diagnosis loop's iteration partition (``2026-01-02.iter0003``)."""

    dag_id: str
    run_id: str
    pipeline: str
    ds: str
    iteration: int | None = None


class UnknownRun(LookupError):
    """The DAG is not one of the pipelines, or the run left nothing in storage."""


def resolve_run(store: Store, dag_id: str, run_id: str, logical_date: datetime | str | None) -> RunRef:
    """The partition a run of ``dag_id`` wrote (see :class:`RunRef`)."""
    if dag_id not in PIPELINES:
        raise UnknownRun(f"{dag_id} is not a synthesis pipeline ({', '.join(PIPELINES)})")
    pipeline = PIPELINES[dag_id]
    if dag_id == "deficiency_diagnosis":
        from infinisynth.diagnosis import iterations

        mine = [row for row in iterations.history(store) if row["run_id"] == run_id]
        if not mine:
            raise UnknownRun(f"no diagnosis iteration was claimed by run {run_id}")
        return RunRef(dag_id, run_id, pipeline, mine[-1]["partition"], int(mine[-1]["iteration"]))
    if logical_date is None:
        raise UnknownRun(f"run {run_id} has no logical date, so no partition")
    ds = logical_date[:10] if isinstance(logical_date, str) else logical_date.date().isoformat()
    return RunRef(dag_id, run_id, pipeline, ds)


# -- the funnel ----------------------------------------------------------------------------------


def stage_manifests(store: Store, pipeline: str, ds: str) -> list[tuple[str, dict[str, Any]]]:
    """(table, manifest meta) of every committed table of the partition, in commit order."""
    pattern = posixpath.join(store.root, pipeline, "*", partition_key(ds), MANIFEST)
    store.fs.invalidate_cache(posixpath.join(store.root, pipeline))
    found = []
    for path in sorted(store.fs.glob(pattern)):
        directory = posixpath.dirname(path)
        table = posixpath.basename(posixpath.dirname(directory))
        if table.startswith("_") or table == "rejected":
            continue
        manifest = Partition(store, directory).manifest()
        found.append((manifest.created_at, table, {**manifest.meta, "rows": manifest.rows}))
    return [(table, meta) for _, table, meta in sorted(found, key=lambda item: (item[0], item[1]))]


def funnel(store: Store, pipeline: str, ds: str) -> list[dict[str, Any]]:
    """Every stage of the run that recorded a funnel: in, passed, out, rejected (by reason), pending,
    usage; in commit order. The published table's night funnel (its stages in pipeline order) is
    the order when there is one."""
    entries: dict[str, dict[str, Any]] = {}
    night: list[str] = []
    for table, meta in stage_manifests(store, pipeline, ds):
        entry = meta.get("funnel")
        if isinstance(entry, dict) and "rows_in" in entry:
            entries[entry.get("stage", table)] = {**entry, **{k: meta[k] for k in _GATE_KEYS if k in meta}}
        elif isinstance(entry, list) and table == PUBLISHED:
            night = [e["stage"] for e in entry if isinstance(e, dict) and "stage" in e]
            for e in entry:
                entries[e["stage"]] = {**e, **entries.get(e["stage"], {})}
    ordered = [s for s in night if s in entries] + [s for s in entries if s not in night]
    return [_funnel_entry(entries[s]) for s in ordered]


def _funnel_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("stage", "rows_in", "inputs_passed", "rows_out", "rejected", "rejected_by_reason", "pending", "pending_by_reason")
    out = {k: entry.get(k, 0 if k not in ("rejected_by_reason", "pending_by_reason") else {}) for k in keep}
    out["usage"] = {key: _usage(value) for key, value in (entry.get("usage") or {}).items()}
    out["dollars"] = float(entry.get("dollars") or 0.0)
    for key in _GATE_KEYS:
        if key in entry:
            out[key] = entry[key]
    return out


_GATE_KEYS = ("discard_by_language", "test_pass_by_language")  # the lint and test gates' per-language figures


def _usage(value: Mapping[str, Any]) -> dict[str, Any]:
    fields = ("requests", "cached_requests", "batch_requests", "prompt_tokens", "completion_tokens", "total_tokens", "unpriced_requests")
    return {**{k: int(value.get(k) or 0) for k in fields}, "dollars": float(value.get("dollars") or 0.0)}


def usage_by_role_stage(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tokens and dollars per ``role/stage`` over the run, biggest first."""
    totals: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for key, usage in entry.get("usage", {}).items():
            into = totals.setdefault(key, {"key": key, **{k: 0 for k in usage}})
            for k, v in usage.items():
                into[k] = round(into[k] + v, 6) if k == "dollars" else into[k] + v
    for row in totals.values():
        row["role"], _, row["stage"] = row["key"].partition("/")
    return sorted(totals.values(), key=lambda r: (-r["total_tokens"], r["key"]))


# -- rejected rows -------------------------------------------------------------------------------


def rejected_sample(
    store: Store, pipeline: str, ds: str, stage: str, reason: str | None = None, limit: int = SAMPLE_ROWS
) -> dict[str, Any]:
    """Up to ``limit`` rejected rows of a stage (of one reason): input, raw model answer, reason,
    detail, evidence. The text is the model's, untrusted: the page shows it escaped, as text."""
    partition = store.rejected(pipeline, stage, ds)
    try:
        total = partition.manifest().rows
    except PartitionNotFound:
        return {"stage": stage, "reason": reason, "rows": [], "matching": 0, "total": 0}
    rows: list[dict[str, Any]] = []
    matching = 0
    for batch in partition.iter_batches():
        for row in batch.to_pylist():
            if reason is not None and row.get("reason") != reason:
                continue
            matching += 1
            if len(rows) < limit:
                rows.append(
                    {
                        "id": row.get("id"),
                        "reason": row.get("reason"),
                        "detail": _clip(row.get("detail")),
                        "input": _clip(_pretty(row.get("input_json"))),
                        "raw_answer": _clip(row.get("raw_answer")),
                        "evidence": _clip(_pretty(row.get("evidence_json"))),
                    }
                )
    return redact({"stage": stage, "reason": reason, "rows": rows, "matching": matching, "total": total})


def _pretty(text: str | None) -> str | None:
    if not text:
        return text
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return text


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_SAMPLE_CHARS:
        return text
    return text[:MAX_SAMPLE_CHARS] + f"\n... ({len(text) - MAX_SAMPLE_CHARS} more characters)"


def _rejected_rows(store: Store, pipeline: str, ds: str, stage: str, columns: list[str]) -> list[dict[str, Any]]:
    try:
        return store.rejected(pipeline, stage, ds).read(columns=columns).to_pylist()
    except PartitionNotFound:
        return []


def _table_rows(store: Store, pipeline: str, stage: str, ds: str, columns: list[str] | None) -> list[dict[str, Any]]:
    """The rows of a committed table (only ``columns``), or none when it is absent or lacks them."""
    try:
        return store.partition(pipeline, stage, ds).read(columns=columns).to_pylist()
    except (PartitionNotFound, SchemaMismatch):
        return []


# -- quality and the lint gate -------------------------------------------------------------------


def quality_histograms(store: Store, pipeline: str, ds: str, stage: str = "quality") -> dict[str, Any]:
    """Counts of each dimension's mean score (over the judges) in integer bins 0..10, over every
    assessed problem of the stage: those that passed and those rejected with their scores."""
    scores: list[Mapping[str, Any]] = [
        r["quality_scores"] for r in _table_rows(store, pipeline, stage, ds, ["quality_scores"]) if r["quality_scores"]
    ]
    for row in _rejected_rows(store, pipeline, ds, stage, ["evidence_json"]):
        try:
            evidence = json.loads(row["evidence_json"] or "{}")
        except ValueError:
            continue
        if isinstance(evidence.get("quality_scores"), dict):
            scores.append(evidence["quality_scores"])
    bins = list(range(11))
    histograms = {}
    for dimension in DIMENSIONS:
        counts = [0] * len(bins)
        for s in scores:
            value = s.get(dimension)
            if isinstance(value, (int, float)):
                counts[min(10, max(0, int(round(value))))] += 1
        histograms[dimension] = counts
    return {"bins": bins, "dimensions": histograms, "problems": len(scores)}


def complexity(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Mean complexity by origin beside the paper's figures."""
    measured = meta.get("complexity_by_origin") or {}
    return [
        {
            "origin": origin,
            "mean": (measured.get(origin) or {}).get("mean"),
            "problems": (measured.get(origin) or {}).get("problems", 0),
            "paper": paper,
        }
        for origin, paper in PAPER_COMPLEXITY.items()
    ]


def lint_gate(store: Store, pipeline: str, ds: str, entries: Sequence[Mapping[str, Any]], top: int = 10) -> dict[str, Any]:
    """The lint gate's discard rate per language and its most frequent findings per language."""
    verify = next((e for e in entries if e["stage"] == "verify"), None)
    by_language = dict((verify or {}).get("discard_by_language") or {})
    findings: dict[str, Counter[str]] = defaultdict(Counter)
    for row in _rejected_rows(store, pipeline, ds, "verify", ["input_json", "evidence_json", "reason"]):
        try:
            lang = json.loads(row["input_json"] or "{}").get("lang") or "unknown"
            evidence = json.loads(row["evidence_json"] or "{}")
        except ValueError:
            continue
        for finding in evidence.get("lint_findings") or []:
            findings[lang][f"{finding.get('tool')} {finding.get('rule')}"] += 1
        if not evidence.get("lint_findings"):
            findings[lang][f"({row['reason']})"] += 1
    return {
        "by_language": [{"language": lang, **stats} for lang, stats in sorted(by_language.items())],
        "top_findings": {lang: [{"finding": f, "count": n} for f, n in c.most_common(top)] for lang, c in sorted(findings.items())},
    }


def test_gate(store: Store, pipeline: str, ds: str, entries: Sequence[Mapping[str, Any]], top: int = 5) -> dict[str, Any] | None:
    """The test gate's verdicts and pass rate per language (None when it was off), with the most
    frequent failure details (the first failing assertion) of the rows it rejected or reported."""
    execute = next((e for e in entries if e["stage"] == "execute"), None)
    by_language = dict((execute or {}).get("test_pass_by_language") or {})
    if not any(stats.get("run") or stats.get("unverified") for stats in by_language.values()):
        return None  # the gate was off: nothing ran, nothing to show
    failures: dict[str, Counter[str]] = defaultdict(Counter)
    for row in _rejected_rows(store, pipeline, ds, "execute", ["input_json", "detail", "reason"]):
        try:
            lang = json.loads(row["input_json"] or "{}").get("lang") or "unknown"
        except ValueError:
            continue
        failures[lang][f"{row['reason']}: {(row['detail'] or '')[:120]}"] += 1
    for row in _table_rows(store, pipeline, "execute", ds, ["lang", "test_verdict", "test_detail"]):
        if row["test_verdict"] not in (None, "passed", "unverified"):  # report mode keeps them
            failures[row["lang"] or "unknown"][f"tests_{row['test_verdict']}: {(row['test_detail'] or '')[:120]}"] += 1
    return {
        "by_language": [{"language": lang, **stats} for lang, stats in sorted(by_language.items())],
        "top_failures": {lang: [{"failure": f, "count": n} for f, n in c.most_common(top)] for lang, c in sorted(failures.items())},
    }


# -- the subject pipeline ------------------------------------------------------------------------


def subject_section(store: Store, ds: str) -> dict[str, Any] | None:
    """Tags per domain, the co-occurrence degree distribution with its power-law fit, difficulty
    before and after each generation, and the seed-selection criteria's counts and overlaps, from
    the night's ``reports/ds=.../report.json``."""
    path = store.side_path("subject_instruct", "reports", ds, "report.json")
    try:
        report = store.read_json(path)
    except FileNotFoundError:
        return None
    scopes = {}
    for scope in ("pool", "dataset"):
        part = report.get(scope) or {}
        network = part.get("network") or {}
        domains = {
            domain: sum(tags.values()) if isinstance(tags, dict) else tags for domain, tags in (part.get("tags_per_domain") or {}).items()
        }
        distribution = {int(k): int(v) for k, v in (network.get("degree_distribution") or {}).items()}
        scopes[scope] = {
            "rows": part.get("rows", 0),
            "tags_per_domain": dict(sorted(domains.items(), key=lambda kv: (-kv[1], kv[0]))),
            "distinct_tags_per_domain": {d: len(t) for d, t in (part.get("tags_per_domain") or {}).items() if isinstance(t, dict)},
            "degrees": sorted(distribution),
            "degree_counts": [distribution[d] for d in sorted(distribution)],
            "power_law": network.get("power_law") or {},
            "fit_line": fit_line(distribution, network.get("power_law") or {}),
            "tags": network.get("tags", 0),
            "edges": network.get("edges", 0),
        }
    return {
        "vocabulary_tags": report.get("vocabulary_tags", 0),
        "scopes": scopes,
        "difficulty": report.get("difficulty") or {},
        "selection": _selection(report.get("selection") or {}),
        "report_url": store.url(path),
    }


def fit_line(distribution: Mapping[int, int], fit: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """The fitted discrete power law over the distribution's tail, as P(degree = d): the share of
    tags in the tail times d^-alpha / zeta(alpha, xmin) (as in the report's PNG)."""
    total = sum(distribution.values())
    if not total or not fit.get("alpha") or not fit.get("xmin"):
        return None
    from scipy.special import zeta

    tail = [d for d in sorted(distribution) if d >= fit["xmin"]]
    share = fit.get("tail_nodes", sum(distribution[d] for d in tail)) / total
    norm = float(zeta(fit["alpha"], fit["xmin"]))
    return {"x": [float(d) for d in tail], "y": [share * d ** -fit["alpha"] / norm for d in tail]}


def _selection(selection: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in selection.items() if isinstance(v, (int, float, str, dict, list))}


# -- the diagnosis loop --------------------------------------------------------------------------


def diagnosis_section(store: Store, ref: RunRef) -> dict[str, Any]:
    """Accuracy across iterations, this iteration's ranked deficiencies with examples, and the
    targeted rows published per deficiency."""
    from infinisynth.diagnosis import iterations

    history = iterations.history(store)
    accuracy = [
        {
            "iteration": r["iteration"],
            "accuracy": r["accuracy"],
            "judged": r["judged"],
            "correct": r["correct"],
            "status": r["status"],
            "target_model": r["target_model"],
        }
        for r in history
    ]
    ranked = sorted(_table_rows(store, "diagnosis", "deficiencies", ref.ds, None), key=lambda r: r.get("rank") or 0)
    deficiencies = [
        {
            "rank": g.get("rank"),
            "label": _deficiency_label(g),
            "error_type": g.get("error_type"),
            "failures": g.get("failures"),
            "prompts": g.get("prompts"),
            "share": g.get("share"),
            "examples": [
                f"{e.get('description')} ({e.get('severity')}, {e.get('diagnosis_id')})"
                for e in (g.get("examples") or [])[:3]
                if isinstance(e, dict)
            ],
        }
        for g in ranked
    ]
    per_deficiency: dict[str, dict[str, Any]] = {}
    for table, key in (("targeted", "planned"), (PUBLISHED, "published")):
        for row in _table_rows(store, "diagnosis", table, ref.ds, ["deficiency"]):
            label = _deficiency_label(row["deficiency"] or {})
            entry = per_deficiency.setdefault(label, {"deficiency": label, "planned": 0, "published": 0})
            entry[key] += 1
    return redact(
        {
            "iteration": ref.iteration,
            "accuracy": accuracy,
            "deficiencies": deficiencies,
            "targeted_per_deficiency": sorted(per_deficiency.values(), key=lambda e: (-e["planned"], e["deficiency"])),
        }
    )


def _deficiency_label(group: Mapping[str, Any]) -> str:
    rank = group.get("rank")
    name = f"{group.get('knowledge_area') or '?'}: {group.get('skill') or '?'}"
    return f"#{rank} {name}" if rank is not None else name


# -- wall time and trends ------------------------------------------------------------------------


def wall_times(task_instances: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task (a mapped task's instances together): from its first start to its last end, the
    summed run time, the number of instances; in start order. ``task_instances`` are dicts with
    ``task_id``, ``start_date``, ``end_date`` (datetimes or ISO text) and ``duration`` (seconds)."""
    tasks: dict[str, dict[str, Any]] = {}
    for ti in task_instances:
        start, end = _when(ti.get("start_date")), _when(ti.get("end_date"))
        task = tasks.setdefault(ti["task_id"], {"task_id": ti["task_id"], "start": start, "end": end, "run_seconds": 0.0, "instances": 0})
        task["instances"] += 1
        task["run_seconds"] += float(ti.get("duration") or 0.0)
        if start and (task["start"] is None or start < task["start"]):
            task["start"] = start
        if end and (task["end"] is None or end > task["end"]):
            task["end"] = end
    rows = []
    for task in sorted(tasks.values(), key=lambda t: (t["start"] is None, t["start"] or datetime.max)):
        span = (task["end"] - task["start"]).total_seconds() if task["start"] and task["end"] else None
        rows.append(
            {
                "task_id": task["task_id"],
                "start": task["start"].isoformat() if task["start"] else None,
                "wall_seconds": round(span, 3) if span is not None else None,
                "run_seconds": round(task["run_seconds"], 3),
                "instances": task["instances"],
            }
        )
    return rows


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def trends(store: Store, pipeline: str, ds: str, nights: int = TREND_NIGHTS) -> list[dict[str, Any]]:
    """The last ``nights`` published partitions up to ``ds``: rows published, each stage's discard
    rate (rejected / in), the lint gate's, and the night's dollars and tokens; oldest first."""
    dates = store.committed_dates(pipeline, PUBLISHED, at_or_before=ds)[:nights]
    out = []
    for night in reversed(dates):
        entries = funnel(store, pipeline, night)
        rows_in = sum(e["rows_in"] for e in entries)
        rejected = sum(e["rejected"] for e in entries)
        verify = next((e for e in entries if e["stage"] == "verify"), None)
        usage = usage_by_role_stage(entries)
        out.append(
            {
                "ds": night,
                "published": store.partition(pipeline, PUBLISHED, night).manifest().rows,
                "discard_rate": round(rejected / rows_in, 4) if rows_in else 0.0,
                "lint_discard_rate": round(verify["rejected"] / verify["rows_in"], 4) if verify and verify["rows_in"] else None,
                "dollars": round(sum(u["dollars"] for u in usage), 6),
                "tokens": sum(u["total_tokens"] for u in usage),
            }
        )
    return out


# -- the whole report ----------------------------------------------------------------------------


def run_report(store: Store, ref: RunRef, task_instances: Iterable[Mapping[str, Any]] = (), nights: int = TREND_NIGHTS) -> dict[str, Any]:
    """Everything the run's page shows, as one JSON-able dict."""
    entries = funnel(store, ref.pipeline, ref.ds)
    published: dict[str, Any] = {}
    published_rows = None
    try:
        manifest = store.partition(ref.pipeline, PUBLISHED, ref.ds).manifest()
        published, published_rows = manifest.meta, manifest.rows
    except PartitionNotFound:
        pass
    usage = usage_by_role_stage(entries)
    report: dict[str, Any] = {
        "dag_id": ref.dag_id,
        "run_id": ref.run_id,
        "pipeline": ref.pipeline,
        "ds": ref.ds,
        "storage": store.root_url,
        "published_rows": published_rows,
        "funnel": entries,
        "usage": usage,
        "totals": {
            "tokens": sum(u["total_tokens"] for u in usage),
            "dollars": round(sum(u["dollars"] for u in usage), 6),
            "requests": sum(u["requests"] for u in usage),
            "rejected": sum(e["rejected"] for e in entries),
        },
        "wall_times": wall_times(task_instances),
        "trends": trends(store, ref.pipeline, ref.ds, nights) if ref.dag_id != "deficiency_diagnosis" else [],
    }
    if any(e["stage"] == "quality" for e in entries):
        report["quality"] = quality_histograms(store, ref.pipeline, ref.ds)
    if ref.dag_id == "code_instruct":
        report["complexity"] = complexity(published)
    if any(e["stage"] == "verify" for e in entries):
        report["lint"] = lint_gate(store, ref.pipeline, ref.ds, entries)
    if any(e["stage"] == "execute" for e in entries):
        report["tests"] = test_gate(store, ref.pipeline, ref.ds, entries)
    if ref.dag_id == "subject_instruct":
        report["subject"] = subject_section(store, ref.ds)
    if ref.dag_id == "deficiency_diagnosis":
        report["diagnosis"] = diagnosis_section(store, ref)
    return redact(report)
