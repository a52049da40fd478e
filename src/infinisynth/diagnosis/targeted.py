"""Targeted synthesis: new instructions for the top deficiency groups, in proportion to weight.

1. :func:`plan_targets` gives each of the top groups a share of the iteration's cap by weight
   (largest remainders, so the counts add up to the cap exactly) and lays out one row per
   instruction to write.
2. :class:`TargetedSynthesis` (role ``generator``) writes each one from the abstract deficiency
   only; it never sees a diagnosis prompt.
3. :func:`screen_leakage` rejects any instruction too close to a diagnosis prompt (or to an
   evaluation benchmark) by embedding similarity or n-gram overlap, with that reason.

Rows keep ``origin = diagnosis`` and the ``deficiency`` they target all the way to publishing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from infinisynth.diagnosis.leakage import LeakageSettings, closest
from infinisynth.languages import display_name
from infinisynth.records import content_id, schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, rejected_row
from infinisynth.stages.problems import PROBLEM_FIELDS, ProblemAnswer, ProblemChecks, check_problem

DEFICIENCY_TARGET_TYPE = pa.struct(
    [
        ("group_id", pa.string()),
        ("rank", pa.int32()),
        ("skill", pa.string()),
        ("knowledge_area", pa.string()),
        ("error_type", pa.string()),
        ("weight", pa.float64()),
    ]
)
PLAN_SCHEMA = schema_with(
    pa.field("deficiency", DEFICIENCY_TARGET_TYPE, nullable=False),
    pa.field("descriptions", pa.list_(pa.string()), nullable=False),
    pa.field("variant", pa.int32(), nullable=False),
    pa.field("iteration", pa.int32(), nullable=False),
)
TARGETED_SCHEMA = schema_with(
    *PROBLEM_FIELDS,
    pa.field("deficiency", DEFICIENCY_TARGET_TYPE, nullable=False),
    pa.field("iteration", pa.int32(), nullable=False),
)


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders; sums to ``total``)."""
    if total <= 0 or not weights or sum(weights) <= 0:
        return [0 for _ in weights]
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_targets(groups: pa.Table, *, cap: int, top_groups: int, iteration: int) -> pa.Table:
    """One row per instruction to write, for the ``top_groups`` heaviest groups, ``cap`` in all."""
    top = groups.to_pylist()[:top_groups]
    rows = []
    for group, count in zip(top, allocate([g["weight"] for g in top], cap)):
        deficiency = {k: group[k] for k in ("group_id", "rank", "skill", "knowledge_area", "error_type", "weight")}
        for variant in range(count):
            rows.append(
                {
                    "id": content_id("target", iteration, group["group_id"], variant),
                    "parent_ids": [group["group_id"]],
                    "origin": "diagnosis",
                    "lang": group["lang"],
                    "deficiency": deficiency,
                    "descriptions": [e["description"] for e in group["examples"]],
                    "variant": variant,
                    "iteration": iteration,
                }
            )
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


class TargetedSynthesis(ModelStage):
    name = "targeted"
    schema = TARGETED_SCHEMA
    prompt = "diagnosis_targeted"
    role = "generator"
    Settings = ProblemChecks
    answer = ProblemAnswer
    origin = "diagnosis"
    id_prefix = "diagnosis"
    settings: ProblemChecks

    def format_input(self, row: Row) -> Messages:
        deficiency = row["deficiency"]
        return self.template.render(
            skill=deficiency["skill"],
            knowledge_area=deficiency["knowledge_area"],
            error_type=deficiency["error_type"],
            descriptions=row["descriptions"],
            variant=row["variant"],
            lang_name=display_name(row.get("lang")),
        )

    def format_output(self, row: Row, answer: ProblemAnswer) -> Outcome:
        problem = answer.problem.strip()
        problem_check = check_problem(problem, self.settings)
        if problem_check is not None:
            return Rejected(*problem_check, raw_answer=problem)
        return Passed(
            [
                self.derive(
                    row,
                    problem,
                    problem=problem,
                    seed=None,
                    combination=None,
                    variant=row["variant"],
                    deficiency=row["deficiency"],
                    iteration=row["iteration"],
                )
            ]
        )


def screen_leakage(
    targeted: pa.Table,
    protected: Sequence[tuple[str, str, str]],
    settings: LeakageSettings,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept rows, rejected rows) of the targeted instructions.

    ``protected`` holds (kind, id, text): kind ``diagnosis`` for the diagnosis prompts,
    ``benchmark`` for evaluation benchmarks. A row too close to one is rejected with reason
    ``too_close_to_<kind>`` and the measure, score and closest text's id as evidence.
    """
    rows = targeted.to_pylist()
    nearest = closest([r["problem"] for r in rows], [text for _, _, text in protected], settings)
    ids = [f"{kind}:{item_id}" for kind, item_id, _ in protected]
    kept, rejected = [], []
    for row, near in zip(rows, nearest):
        measure = near.too_close(settings)
        if measure is None:
            kept.append(row)
            continue
        evidence = near.evidence(ids)
        ref = evidence["cosine_closest"] if measure == "embedding" else evidence["ngram_closest"]
        kind = ref.split(":", 1)[0]
        score = evidence["cosine"] if measure == "embedding" else evidence["ngram_overlap"]
        limit = settings.max_cosine if measure == "embedding" else settings.max_ngram_overlap
        detail = f"{measure} similarity {score:.3f} >= {limit:g} to {ref}"
        rejected.append(rejected_row("leakage", row, Rejected(f"too_close_to_{kind}", detail, evidence={"measure": measure, **evidence})))
    return kept, rejected
