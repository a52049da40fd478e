"""The dataset card (README.md) of a release: YAML front matter a Hub reader parses, and provenance.

Front matter: ``configs`` (the release as ``default``, each variant as its own config, so
``load_dataset(folder, "quality_7")`` reads a variant), ``dataset_info`` with the real features
and row counts of each, ``license``, ``size_categories``, ``task_categories``. Body: the papers,
the models per role and prompt versions that made the rows, each pipeline's funnel, the dedup and
decontamination counts, complexity by origin against the paper's figures, and each variant's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

PAPERS = (
    "Infinite-Instruct: reverse construction and backfeeding construction of code instruction data "
    "(7-dimension quality assessment, static lint filtering)",
    "Infinity Instruct: hierarchical tagging, informative seed selection, evolution, deficiency diagnosis and benchmark decontamination",
)
PAPER_COMPLEXITY = {"seed": 3.17, "reverse": 5.85, "backfeed": 6.83}
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def size_category(rows: int) -> str:
    for bound, label in _SIZES:
        if rows < bound:
            return label
    return "10M<n<100M"


def front_matter(schema: pa.Schema, configs: Mapping[str, tuple[str, int]], license: str, rows: int) -> str:
    """The card's YAML: ``configs`` maps a config name to (its data files' glob, its rows)."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    card = DatasetCardData(
        license=license,
        language=["en"],
        size_categories=[size_category(rows)],
        task_categories=["text-generation"],
        tags=["synthetic", "code", "instruction-tuning", "sft"],
        pretty_name="infinisynth release",
        configs=[
            {"config_name": name, "data_files": [{"split": "train", "path": glob}], **({"default": True} if name == "default" else {})}
            for name, (glob, _) in configs.items()
        ],
    )
    features = Features.from_arrow_schema(schema)
    infos = {
        name: DatasetInfo(features=features, splits=SplitDict({"train": SplitInfo("train", num_examples=count)}))
        for name, (_, count) in configs.items()
    }
    DatasetInfosDict(infos).to_dataset_card_data(card)
    return card.to_yaml()


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _funnel_row(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """A funnel entry as the commit records it (``rows_in``, ``inputs_passed``, ``rows_out`` ...)."""
    return tuple(entry.get(k) for k in ("stage", "rows_in", "inputs_passed", "rows_out", "rejected", "pending"))


def body(summary: Mapping[str, Any]) -> str:
    """The card's Markdown from the release summary (what ``report.json`` holds, less the drops)."""
    parts = [
        f"# infinisynth release {summary['version']}",
        f"Instruction data for supervised fine-tuning, synthesized by infinisynth from the pipelines' datasets of "
        f"{summary['start_date'] or 'the beginning'} to {summary['end_date']}: **{summary['rows']} rows** "
        f"(`messages` plus metadata: origin, lang, tags, domains, quality scores, parent ids, pipeline and date).",
        '## Use\n\n```python\nfrom datasets import load_dataset\nrelease = load_dataset("<this folder or repo>")  '
        '# a variant: load_dataset(..., "quality_7")\n```\n\nTrain with TRL: `trl sft --config sft_config.yaml` '
        "(learning rate 2e-5, 3 epochs, effective batch 512, cosine schedule, loss on assistant turns only).",
        "## Provenance\n\nPapers:\n\n" + "\n".join(f"- {p}" for p in PAPERS),
    ]
    roles = summary.get("roles") or {}
    if roles:
        parts.append(
            "Models per role:\n\n"
            + _table(["role", "model", "endpoint"], [(r, v.get("model"), v.get("base_url")) for r, v in sorted(roles.items())])
        )
    prompts = summary.get("prompt_versions") or {}
    if prompts:
        parts.append("Prompt versions (file: hash):\n\n" + "\n".join(f"- `{k}`: `{v}`" for k, v in sorted(prompts.items())))
    sources = summary.get("sources") or []
    parts.append(
        "Sources:\n\n"
        + _table(
            ["pipeline", "partition", "rows published", "rows taken back for variants"],
            [(s["pipeline"], s["ds"], s["rows"], s.get("extra_rows", 0)) for s in sources],
        )
    )
    for source in sources:
        funnel = source.get("funnel") or []
        if funnel:
            parts.append(
                f"### Funnel: {source['pipeline']} {source['ds']}\n\n"
                + _table(["stage", "in", "passed", "out", "rejected", "pending"], [_funnel_row(f) for f in funnel])
            )
    dedup = summary.get("dedup") or {}
    parts.append(
        "## Deduplication\n\n"
        f"Within this release and against every other release ({', '.join(summary.get('earlier_releases') or []) or 'none yet'}): "
        f"exact (normalized instruction), near (MinHash LSH, Jaccard >= {dedup.get('near_threshold')}), semantic "
        f"(MiniLM cosine >= {dedup.get('semantic_threshold')}, usearch HNSW).\n\n"
        + _table(["method", "rows dropped"], [(m, dedup.get("dropped", {}).get(m, 0)) for m in ("exact", "near", "semantic")])
    )
    decontam = summary.get("decontamination") or {}
    parts.append(
        "## Decontamination\n\n"
        f"Prompts and responses against {', '.join(decontam.get('benchmarks') or [])}: word {decontam.get('ngram')}-gram overlap "
        f"(share >= {decontam.get('ngram_overlap')} of the smaller side, 0 = any shared n-gram) and prompt embedding cosine >= "
        f"{decontam.get('max_cosine')}. Every dropped row, with the benchmark item it matched, is in `report.json`.\n\n"
        + _table(
            ["benchmark", "measure", "rows dropped"],
            [(b, m, n) for b, by in sorted((decontam.get("dropped") or {}).items()) for m, n in sorted(by.items())] or [("-", "-", 0)],
        )
    )
    complexity = summary.get("complexity_by_origin") or {}
    parts.append(
        "## Complexity by origin\n\nMean judge complexity (1-10) of every assessed problem, against Infinite-Instruct's figures.\n\n"
        + _table(
            ["origin", "mean", "problems", "paper"],
            [(o, v.get("mean"), v.get("problems"), PAPER_COMPLEXITY.get(o)) for o, v in sorted(complexity.items())]
            or [("-", None, 0, None)],
        )
    )
    variants = summary.get("variants") or []
    if variants:
        lines = ["## Variants\n\nFrom the same screened rows, without new model calls (the papers' ablations); each is a config."]
        for v in variants:
            lines.append(
                f"### {v['name']}\n\n{v['description']}: **{v['rows']} rows** (`variants/{v['name']}/`)."
                + (f" Note: {v['note']}." if v.get("note") else "")
            )
        parts.append("\n\n".join(lines))
    return "\n\n".join(parts) + "\n"


def dataset_card(schema: pa.Schema, configs: Mapping[str, tuple[str, int]], license: str, summary: Mapping[str, Any]) -> str:
    yaml = front_matter(schema, configs, license, summary["rows"]).rstrip("\n")
    return f"---\n{yaml}\n---\n\n{body(summary)}"


def summary_lines(report: Mapping[str, Any], folder: str) -> str:
    """A release in a few lines (``make demo`` prints it): where it is, its card, its counts."""
    dedup = (report.get("dedup") or {}).get("dropped") or {}
    decontam = (report.get("decontamination") or {}).get("dropped") or {}
    lines = [
        f"release {report['version']} ({report.get('start_date') or 'beginning'} .. {report.get('end_date')}): {folder}",
        f"  card: {report['rows']} rows ({size_category(report['rows'])}), origins {report.get('origins')}, "
        f"configs: default + {len(report.get('variants') or [])} variants; README.md, sft_config.yaml, report.json",
        f"  candidates {report.get('candidates')}; duplicates dropped {dedup or 'none'}; "
        f"contaminated dropped {decontam or 'none'} (screened against {', '.join((report.get('decontamination') or {}).get('benchmarks') or [])})",
        "  variants: " + ", ".join(f"{v['name']} {v['rows']}" for v in report.get("variants") or []),
    ]
    return "\n".join(lines)
