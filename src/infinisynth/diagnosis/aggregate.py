"""Aggregation: the oracle's deficiencies grouped and ranked across the whole diagnosis set.

A group is one (skill, knowledge area, error type). Labels are normalized (case, punctuation,
articles), and labels of the same error type whose embeddings are at least ``merge_similarity``
apart (default 0.91, the paper's tag-merging threshold lambda) join the heavier group, so "handling
duplicate values" and "handling duplicates values" are one weakness, not two.

Weight = sum of severity weights (minor 1, major 2, critical 3) over the group's failures: a
group ranks by how often *and* how badly the model fails. Each group keeps a few examples (the
diagnosis row and the abstract description), for the report and for targeted synthesis.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import pyarrow as pa

from infinisynth.diagnosis.diagnose import SEVERITY_WEIGHT
from infinisynth.records import content_id

EXAMPLE_TYPE = pa.struct([("diagnosis_id", pa.string()), ("description", pa.string()), ("severity", pa.string())])
GROUP_SCHEMA = pa.schema(
    [
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("skill", pa.string(), nullable=False),
        pa.field("knowledge_area", pa.string(), nullable=False),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("failures", pa.int32(), nullable=False),  # deficiencies in the group
        pa.field("prompts", pa.int32(), nullable=False),  # distinct diagnosis prompts they came from
        pa.field("severity_mean", pa.float64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("share", pa.float64(), nullable=False),  # of the iteration's total weight
        pa.field("lang", pa.string()),  # the most common language of its prompts
        pa.field("examples", pa.list_(EXAMPLE_TYPE), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),  # every label merged into it
    ]
)
MAX_EXAMPLES = 3
_ARTICLES = re.compile(r"\b(the|a|an)\b")
_NON_WORD = re.compile(r"[^a-z0-9+#]+")


def normalize(label: str) -> str:
    text = _NON_WORD.sub(" ", label.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


@dataclass
class _Group:
    skill: str
    knowledge_area: str
    error_type: str
    severities: list[str] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)
    langs: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    @property
    def weight(self) -> float:
        return sum(SEVERITY_WEIGHT[s] for s in self.severities)

    def absorb(self, other: _Group) -> None:
        self.severities += other.severities
        self.prompts |= other.prompts
        self.langs.update(other.langs)
        self.examples += other.examples
        self.labels |= other.labels


def accuracy(verdicts: pa.Table) -> dict[str, Any]:
    """Judged prompts, correct ones, and the share correct (None if nothing was judged)."""
    correct = sum(bool(v) for v in verdicts.column("correct").to_pylist()) if verdicts.num_rows else 0
    return {
        "judged": verdicts.num_rows,
        "correct": correct,
        "accuracy": round(correct / verdicts.num_rows, 4) if verdicts.num_rows else None,
    }


def check_counts(verdicts: pa.Table) -> dict[str, int]:
    """How many verdicts the reference check decided, and on how many it overruled the oracle."""
    if "checked_by" not in verdicts.column_names:
        return {"reference_checked": 0, "oracle_overruled": 0}
    rows = verdicts.select(["checked_by", "correct", "oracle_correct"]).to_pylist()
    checked = [r for r in rows if r["checked_by"] == "reference"]
    return {"reference_checked": len(checked), "oracle_overruled": sum(r["correct"] != r["oracle_correct"] for r in checked)}


def deficiency_groups(verdicts: pa.Table, merge_similarity: float = 0.91) -> pa.Table:
    """Group every deficiency of every incorrect verdict; rank by weight, then by frequency."""
    groups: dict[tuple[str, str, str], _Group] = {}
    for row in verdicts.to_pylist():
        if row["correct"]:
            continue
        for item in row["deficiencies"]:
            key = (normalize(item["skill"]), normalize(item["knowledge_area"]), item["error_type"])
            group = groups.setdefault(key, _Group(item["skill"].strip(), item["knowledge_area"].strip(), item["error_type"]))
            group.severities.append(item["severity"])
            group.prompts.add(row["id"])
            if row.get("lang"):
                group.langs[row["lang"]] += 1
            group.examples.append({"diagnosis_id": row["id"], "description": item["description"], "severity": item["severity"]})
            group.labels.add(f"{item['knowledge_area'].strip()}: {item['skill'].strip()}")
    merged = _merge_similar(sorted(groups.values(), key=lambda g: (-g.weight, -len(g.severities), g.skill)), merge_similarity)
    ranked = sorted(merged, key=lambda g: (-g.weight, -len(g.severities), -len(g.prompts), normalize(g.skill)))
    total = sum(g.weight for g in ranked) or 1.0
    rows = [
        {
            "rank": rank,
            "group_id": content_id("deficiency", normalize(g.skill), normalize(g.knowledge_area), g.error_type),
            "skill": g.skill,
            "knowledge_area": g.knowledge_area,
            "error_type": g.error_type,
            "failures": len(g.severities),
            "prompts": len(g.prompts),
            "severity_mean": round(fmean(SEVERITY_WEIGHT[s] for s in g.severities), 3),
            "weight": g.weight,
            "share": round(g.weight / total, 4),
            "lang": g.langs.most_common(1)[0][0] if g.langs else None,
            "examples": _spread(g.examples),
            "labels": sorted(g.labels),
        }
        for rank, g in enumerate(ranked, 1)
    ]
    return pa.Table.from_pylist(rows, schema=GROUP_SCHEMA)


def _spread(examples: list[dict[str, str]]) -> list[dict[str, str]]:
    """Up to MAX_EXAMPLES examples from different diagnosis prompts, most severe first."""
    chosen, seen = [], set()
    for example in sorted(examples, key=lambda e: (-SEVERITY_WEIGHT[e["severity"]], e["diagnosis_id"])):
        if example["diagnosis_id"] not in seen:
            seen.add(example["diagnosis_id"])
            chosen.append(example)
    return chosen[:MAX_EXAMPLES]


def _merge_similar(groups: list[_Group], threshold: float) -> list[_Group]:
    """Fold each group into the first heavier group of the same error type within ``threshold``."""
    if threshold >= 1.0 or len(groups) < 2:
        return groups
    from infinisynth.diagnosis.leakage import embed  # the embedding model loads only when needed

    vectors = embed([f"{g.knowledge_area}: {g.skill}" for g in groups])
    kept: list[int] = []
    for i, group in enumerate(groups):
        home = next((k for k in kept if groups[k].error_type == group.error_type and float(vectors[i] @ vectors[k]) >= threshold), None)
        if home is None:
            kept.append(i)
        else:
            groups[home].absorb(group)
    return [groups[k] for k in kept]
