"""The base model's loss on each response, through a completions endpoint's prompt log-probabilities.

For each row the base role scores two texts in one request each (``echo: true, logprobs: 1``, one
generated token that is ignored):

- with the instruction: ``"Instruction:\\n{instruction}\\n\\nResponse:\\n{response}"``
- alone:                ``"Response:\\n{response}"``

A loss is the mean negative log-probability of the response's tokens: those whose text offset
falls inside the response (a token straddling the boundary belongs to neither side). Both texts
share the ``Response:`` header, so the response's first token has context either way.
``loss_reduction = loss_unconditional - loss_conditional``: how much the instruction helps.

vLLM and llama.cpp's server return prompt log-probabilities this way. llama-cpp-python pairs each
token with the wrong position unless the model adds a BOS token; ``infinisynth.model_server``
makes the embedded model do so.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from infinisynth.llm import LLMClient, RoleConfig, UsageMeter
from infinisynth.records import content_id
from infinisynth.stages.base import ModelStage, Outcome, Passed, Rejected, Row, StageSettings
from infinisynth.subject.tagging import TAGGED_SCHEMA

STAGE = "losses"
ROLE = "base"
TEMPLATE_VERSION = "losses-v1"  # part of the cache key: change it with the texts below
CONDITIONAL_PREFIX = "Instruction:\n{instruction}\n\nResponse:\n"
UNCONDITIONAL_PREFIX = "Response:\n"

LOSS_FIELDS = [
    pa.field("loss_conditional", pa.float64()),  # mean token NLL of the response given the instruction
    pa.field("loss_unconditional", pa.float64()),  # ... of the response alone
    pa.field("loss_reduction", pa.float64()),  # unconditional - conditional
    pa.field("loss_tokens", pa.int32()),  # response tokens scored (with the instruction)
    pa.field("loss_note", pa.string()),  # why a row has no losses (e.g. no_response), else null
]


def loss_schema(input_schema: pa.Schema) -> pa.Schema:
    """``input_schema`` with the loss columns appended (replacing any it already has)."""
    names = {f.name for f in LOSS_FIELDS}
    return pa.schema([f for f in input_schema if f.name not in names] + LOSS_FIELDS)


LOSSES_SCHEMA = loss_schema(TAGGED_SCHEMA)


class NoLogprobs(ValueError):
    """The endpoint's answer carries no usable prompt log-probabilities."""


@dataclass(frozen=True)
class ResponseLoss:
    loss_given_instruction: float
    loss_alone: float
    tokens: int

    @property
    def reduction(self) -> float:
        return self.loss_alone - self.loss_given_instruction


class LossSettings(StageSettings):
    max_instruction_chars: int = 6_000  # long texts are cut so both fit the base model's context
    max_response_chars: int = 6_000


async def text_loss(client: LLMClient, prefix: str, text: str, *, stage: str = STAGE) -> tuple[float, int]:
    """Mean NLL (nats per token) of ``text`` after ``prefix``, and how many tokens it averaged."""
    full = prefix + text
    answer = await client.completion(full, stage=stage, max_tokens=1, extra={"echo": True, "logprobs": 1})
    choice = answer.choices[0] if answer.choices else None
    logprobs = choice.logprobs if choice is not None else None
    if logprobs is None or not logprobs.token_logprobs or not logprobs.text_offset:
        raise NoLogprobs(f"{client.config.base_url} returned no prompt log-probabilities (does it support echo with logprobs?)")
    start, end = len(prefix), len(full)
    offsets, values = logprobs.text_offset, logprobs.token_logprobs
    scores = [v for i, (o, v) in enumerate(zip(offsets, values)) if start <= o < end and not (i == 0 and v is None)]
    if not scores or any(v is None for v in scores):
        raise NoLogprobs(f"no log-probabilities for the scored text's tokens (offsets {offsets[:3]}... for {end} characters)")
    return -sum(scores) / len(scores), len(scores)


async def response_loss(client: LLMClient, instruction: str, response: str, settings: LossSettings | None = None) -> ResponseLoss:
    settings = settings if settings is not None else LossSettings()
    instruction = instruction[: settings.max_instruction_chars]
    response = response[: settings.max_response_chars]
    (given, tokens), (alone, _) = await asyncio.gather(
        text_loss(client, CONDITIONAL_PREFIX.format(instruction=instruction), response),
        text_loss(client, UNCONDITIONAL_PREFIX, response),
    )
    return ResponseLoss(loss_given_instruction=given, loss_alone=alone, tokens=tokens)


def response_losses(role: RoleConfig, rows: Sequence[dict[str, Any]], settings: LossSettings | None = None) -> list[ResponseLoss]:
    """Losses of many rows outside the runner (benchmarks, notebooks); failures raise."""

    async def go() -> list[ResponseLoss]:
        async with LLMClient(role, UsageMeter()) as client:
            return list(await asyncio.gather(*(response_loss(client, r["instruction"], r["response"], settings) for r in rows)))

    return asyncio.run(go())


class ResponseLosses(ModelStage):
    """A stage over shard rows (role ``base``): the input row plus the loss columns.

    No prompt file: the texts it scores are the templates above (``TEMPLATE_VERSION``, part of the
    cache key). Its output schema is ``input_schema`` with the loss columns.
    """

    name = STAGE
    schema = LOSSES_SCHEMA
    prompt = ""
    role = ROLE
    Settings = LossSettings
    settings: LossSettings

    def __init__(
        self,
        client: LLMClient,
        settings: LossSettings | None = None,
        *,
        name: str | None = None,
        prompt_dir: str | None = None,
        input_schema: pa.Schema | None = None,
    ):
        super().__init__(client, settings, name=name, prompt_dir=prompt_dir)
        if input_schema is not None:
            self.schema = loss_schema(input_schema)

    def fingerprint(self) -> str:
        return content_id(super().fingerprint(), TEMPLATE_VERSION)

    def format_output(self, row: Row, answer: ResponseLoss) -> Outcome:
        values = (answer.loss_given_instruction, answer.loss_alone)
        if not all(math.isfinite(v) for v in values):
            return Rejected(
                "non_finite_loss",
                f"losses {values} are not finite",
                evidence={"loss_conditional": str(values[0]), "loss_unconditional": str(values[1])},
            )
        return Passed(
            [
                {
                    **row,
                    "loss_conditional": answer.loss_given_instruction,
                    "loss_unconditional": answer.loss_alone,
                    "loss_reduction": answer.reduction,
                    "loss_tokens": answer.tokens,
                    "loss_note": None,
                }
            ]
        )

    async def process(self, row: Row) -> Outcome:
        if not (row.get("response") or "").strip():
            # Nothing to score: the row goes on (tags can still select it), its losses stay empty.
            return Passed([{**row, **_no_losses("no_response")}])
        try:
            loss = await response_loss(self.client, row["instruction"], row["response"], self.settings)
        except NoLogprobs as exc:
            return Rejected("no_logprobs", str(exc))
        return self.format_output(row, loss)


def _no_losses(note: str) -> dict[str, Any]:
    return {"loss_conditional": None, "loss_unconditional": None, "loss_reduction": None, "loss_tokens": 0, "loss_note": note}
