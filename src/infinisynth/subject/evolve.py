"""Metadata-guided evolution (Infinity Instruct Subject, after Evol-Instruct): seed -> harder instruction.

Four operations, chosen per row and guided by its metadata:

- ``add_reasoning``: answering must take several explicit reasoning steps;
- ``concretize``: replace general concepts with specific ones (named entities, numbers, data);
- ``deepen``: ask about the issue in more depth and with more constraints;
- ``in_breadth``: a new instruction in the same domain on a rarer, related skill (diversify).

The prompt names the seed's fine-grained tags and domains, so evolution stays on the skills that
made the seed worth picking. The operation is drawn by a seeded generator keyed on the row, so a
re-run draws the same one (and hits the runner's checkpoints): every operation has weight 1, plus 2
for the operation that serves each of the seed's selection reasons (a long-tail seed is widened in
breadth, a multi-skill one gets reasoning steps, an undertrained one is deepened, a hard-to-follow
one concretized), and the operation of the previous generation is never repeated.

Generations: a row of generation ``g`` evolves into generation ``g + 1``; the pipeline runs this
stage once per generation over the survivors of the previous generation's oracle check.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from infinisynth.records import content_id, schema_with
from infinisynth.stages.base import Messages, ModelStage, Outcome, Passed, Rejected, Row, StageSettings, with_provenance

OPERATIONS = ("add_reasoning", "concretize", "deepen", "in_breadth")

# Which operation serves a seed picked for a given reason (selection reason codes contain these).
OPERATION_FOR_REASON = {
    "long_tail": "in_breadth",
    "multi_skill": "add_reasoning",
    "undertrained": "deepen",
    "hard_to_follow": "concretize",
}
REASON_WEIGHT = 2.0

LINEAGE_STEP = pa.struct([("generation", pa.int32()), ("operation", pa.string()), ("id", pa.string())])

# What every row of the evolution chain carries, seeds included (a seed is generation 0).
CHAIN_FIELDS = [
    pa.field("instruction", pa.string(), nullable=False),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("domains", pa.list_(pa.string())),
    pa.field("selection_reasons", pa.list_(pa.string())),
    pa.field("seed_id", pa.string()),
    pa.field("generation", pa.int32()),
    pa.field("lineage", pa.list_(LINEAGE_STEP)),  # the steps from the seed to this row
    pa.field("provenance", pa.string()),
]
SEED_SCHEMA = schema_with(
    *CHAIN_FIELDS,
    pa.field("response", pa.string()),
    pa.field("source", pa.string()),  # the pool's origin label (a dataset, or code_instruct)
    pa.field("loss_conditional", pa.float64()),
    pa.field("loss_unconditional", pa.float64()),
    pa.field("loss_reduction", pa.float64()),
)
EVOLVED_FIELDS = [
    pa.field("parent_instruction", pa.string()),
    pa.field("operation", pa.string()),
]
EVOLVED_SCHEMA = schema_with(*CHAIN_FIELDS, *EVOLVED_FIELDS)


class EvolvedInstruction(BaseModel):
    instruction: str = Field(min_length=1)


class EvolutionSettings(StageSettings):
    sampling_seed: int = 0
    min_chars: int = 10
    max_chars: int = 8_000


def choose_operation(row: dict[str, Any], sampling_seed: int = 0) -> str:
    """The operation for this row's next generation: seeded, reason-weighted, never a repeat."""
    weights = dict.fromkeys(OPERATIONS, 1.0)
    for reason in row.get("selection_reasons") or []:
        for key, operation in OPERATION_FOR_REASON.items():
            if key in reason:
                weights[operation] += REASON_WEIGHT
    lineage = row.get("lineage") or []
    if lineage:
        weights.pop(lineage[-1]["operation"], None)
    rng = random.Random(content_id("evolve", row["id"], sampling_seed))
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def prompt_values(instruction: str, operation: str, tags: list[str] | None, domains: list[str] | None) -> dict[str, Any]:
    """What the evolution prompt is rendered with (the oracle re-renders it for its copy check)."""
    return {"instruction": instruction, "operation": operation, "tags": list(tags or []), "domains": list(domains or [])}


class Evolution(ModelStage):
    """One generation: each row evolves into a row of the next generation.

    The provenance key is ``evolve_g{generation}`` of the row it makes (the pipeline's step name),
    and it extends the parent's provenance, so a row carries every generation it went through.
    """

    name = "evolve"
    schema = EVOLVED_SCHEMA
    prompt = "subject_evolution"
    role = "generator"
    Settings = EvolutionSettings
    answer = EvolvedInstruction
    origin = "evolved"
    id_prefix = "evolved"
    settings: EvolutionSettings

    def format_input(self, row: Row) -> Messages:
        operation = choose_operation(row, self.settings.sampling_seed)
        return self.template.render(**prompt_values(row["instruction"], operation, row.get("tags"), row.get("domains")))

    def format_output(self, row: Row, answer: EvolvedInstruction) -> Outcome:
        instruction = answer.instruction.strip()
        if len(instruction) < self.settings.min_chars:
            return Rejected(
                "too_short",
                f"evolved instruction has {len(instruction)} characters; at least {self.settings.min_chars} needed",
                raw_answer=instruction,
            )
        if len(instruction) > self.settings.max_chars:
            return Rejected(
                "too_long",
                f"evolved instruction has {len(instruction)} characters; at most {self.settings.max_chars} allowed",
                raw_answer=instruction,
            )
        operation = choose_operation(row, self.settings.sampling_seed)
        generation = int(row.get("generation") or 0) + 1
        evolved = self.derive(
            row,
            operation,
            instruction,
            instruction=instruction,
            tags=row.get("tags") or [],
            domains=row.get("domains") or [],
            selection_reasons=row.get("selection_reasons") or [],
            seed_id=row.get("seed_id") or row["id"],
            generation=generation,
            parent_instruction=row["instruction"],
            operation=operation,
        )
        evolved["lineage"] = [*(row.get("lineage") or []), {"generation": generation, "operation": operation, "id": evolved["id"]}]
        # The parent's provenance goes on: a row carries every generation that made it.
        evolved["provenance"] = with_provenance(row, f"evolve_g{generation}", self.template.version, self.model)
        return Passed([evolved])
