"""The stage contract: what every step of every pipeline is, and what it owes the accounting.

Three kinds of step, one accounting. Each input row ends in exactly one :data:`Outcome`, either
:class:`Passed` (one or more output rows) or :class:`Rejected` (a reason). A rejection is *final*
(the answer was judged: invalid, too low a score, a lint error, ...) or *transient* (a model call
did not complete: 429, 5xx, timeout, dropped connection, broken body; see
:mod:`infinisynth.llm.reasons`). A transient outcome is nobody's verdict: it is never checkpointed
nor written to the rejected table, and the row counts as *pending* until a retry or a re-run does
it. Every kind ends in the same commit (:func:`infinisynth.shards.commit_stage`), which checks that
in = passed + rejected + pending and records the funnel:

- a **row step** (:class:`Stage`, most often a :class:`ModelStage`) takes one row at a time; the
  runner gives it concurrency, checkpoints and progress;
- a **batch step** (:class:`BatchStage`) takes a whole shard at once, e.g. the lint gate, which
  checks many answers with few linter processes;
- a **global step** (:class:`GlobalStep`) takes whole partitions, e.g. the knowledge-graph build or
  seed selection, and hands the next stage its shards.

A :class:`ModelStage` declares, as class attributes, its name, output schema, prompt file, role and
settings model; from them it derives one cache key (every prompt's version, the role's generation
config, the settings) and the provenance of the rows it makes. A subclass keeps only what is its
own: ``format_input`` (row -> messages) and ``format_output`` (row, answer -> outcome).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from infinisynth.llm.reasons import is_transient
from infinisynth.prompts import PromptTemplate, load_prompt
from infinisynth.records import content_id

if TYPE_CHECKING:
    from infinisynth.llm import LLMClient
    from infinisynth.llm.client import ChatAnswer

Row = dict[str, Any]
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Passed:
    rows: list[Row]


@dataclass(frozen=True)
class Rejected:
    """A row that produced no output, and why. Its reason decides its kind: a transient reason
    (:data:`infinisynth.llm.reasons.TRANSIENT_REASONS`, e.g. ``server_error``) means the row is
    still to be done; any other is a final verdict for the rejected table."""

    reason: str
    detail: str
    raw_answer: str | None = None
    evidence: dict[str, Any] | None = None  # facts behind the verdict (scores, lint findings)

    @property
    def transient(self) -> bool:
        """The call did not complete: redo the row on a retry or re-run; never record it."""
        return is_transient(self.reason)


Outcome = Passed | Rejected


class Stage(Protocol):
    """A row step: what the runner needs of it."""

    name: str
    schema: pa.Schema

    def cache_key(self, row: Row) -> str: ...

    async def process(self, row: Row) -> Outcome: ...


class BatchStage:
    """A batch step: one call per shard, one outcome per row, in order.

    Built by :meth:`from_context` (the run's settings and connections); ``shard_stats`` carries a
    shard's own counts to the commit, where ``commit_meta`` turns every shard's into manifest keys.
    """

    name: str = ""
    schema: pa.Schema = pa.schema([])

    @classmethod
    def from_context(cls, ctx: Any) -> BatchStage:
        return cls()

    async def process_batch(self, rows: Sequence[Row]) -> list[Outcome]:
        raise NotImplementedError

    def for_micro_batches(self) -> BatchStage:
        """This step as a streamed chain runs it (:mod:`infinisynth.stream`): on small batches
        while the chain's model calls share the CPU. Default: itself."""
        return self

    def shard_stats(self, rows: Sequence[Row], outcomes: Sequence[Outcome]) -> dict[str, Any]:
        return {}

    @classmethod
    def commit_meta(cls, ctx: Any, shard_stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {}


@dataclass
class StepOutput:
    """What a global step made of its whole input: the next stage's rows, plus its accounting."""

    table: pa.Table
    rows_in: int
    rejected: list[Row] | pa.Table = field(default_factory=list)  # rows for the rejected table (see rejected_row)
    meta: dict[str, Any] = field(default_factory=dict)  # the step's own report, kept in the manifest
    passed: int | None = None  # inputs that passed, when not every unrejected one did (a selection)


class GlobalStep:
    """A global step: whole partitions in, one stage's table out (sharded for the next mapped task).

    Built with the run's context (:class:`infinisynth.steps.RunContext`: store, partition key,
    settings, connections); :meth:`run` returns the table and its accounting, which the runner
    writes and commits like any other stage's.
    """

    name: str = ""
    schema: pa.Schema = pa.schema([])

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def run(self) -> StepOutput:
        raise NotImplementedError

    def after_commit(self, funnel: dict[str, Any]) -> None:
        """Called once the step's table is published (e.g. to record that an iteration completed)."""


class NoSettings(BaseModel):
    model_config = ConfigDict(frozen=True)


class StageSettings(BaseModel):
    """Base of a stage's settings: frozen, and unknown fields are an error (a typo is not a knob)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelStage:
    """A row step that calls one LLM role per row.

    Declare on the subclass: ``name``, ``schema``, ``prompt`` (the prompt file; ``also_renders`` for
    other prompt files it uses), ``role``, ``Settings`` (a :class:`StageSettings` model), ``answer``
    (the structured-output model, or None for plain text) and, for stages that make new rows rather
    than annotate them, ``origin``. Override ``format_input`` and ``format_output``; override
    ``process`` only when one row takes several calls.
    """

    name: str = ""
    schema: pa.Schema = pa.schema([])
    prompt: ClassVar[str] = ""
    also_renders: ClassVar[tuple[str, ...]] = ()
    role: ClassVar[str] = "generator"
    Settings: ClassVar[type[BaseModel]] = NoSettings
    answer: ClassVar[type[BaseModel] | None] = None
    origin: ClassVar[str | None] = None  # the origin of rows this stage makes (None: keep the input's)
    id_prefix: ClassVar[str | None] = None  # what new row ids are hashed with (None: the class's name)

    def __init__(self, client: LLMClient, settings: BaseModel | None = None, *, name: str | None = None, prompt_dir: str | None = None):
        self.client = client
        self.settings = settings if settings is not None else self.Settings()
        if not isinstance(self.settings, self.Settings):
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__}, not {type(self.settings).__name__}")
        self.name = name or type(self).name
        self.prompts = {file: load_prompt(file, prompt_dir) for file in self.prompt_files()}
        self._key = self.fingerprint()

    @classmethod
    def prompt_files(cls) -> tuple[str, ...]:
        return tuple(p for p in (cls.prompt, *cls.also_renders) if p)

    @classmethod
    def prompt_versions(cls) -> dict[str, str]:
        """Each prompt file's version (its hash), for the stage's manifest."""
        return {file: load_prompt(file).version for file in cls.prompt_files()}

    @classmethod
    def prepare_rows(cls, rows: list[Row]) -> list[Row]:
        """The rows this stage takes from its input shard (all of them, unless a stage says otherwise)."""
        return rows

    @property
    def template(self) -> PromptTemplate:
        return self.prompts[self.prompt]

    @property
    def model(self) -> str:
        return self.client.config.model

    def fingerprint(self) -> str:
        """One key for everything that decides this stage's answers: prompt versions, the role's
        generation config and the settings. A change to any of them misses the checkpoints."""
        versions = {file: template.version for file, template in self.prompts.items()}
        return content_id(type(self).__name__, versions, self.client.config.generation_config(), self.settings.model_dump(mode="json"))

    def cache_key(self, row: Row) -> str:
        return self._key

    # -- the rows a stage writes ----------------------------------------------------------------

    def provenance(self, row: Row | None = None) -> str:
        """``row``'s provenance JSON (``{stage: {prompt, model}}``) with this stage added."""
        return with_provenance(row or {}, self.name, self.template.version if self.prompt else "-", self.model)

    def annotate(self, row: Row, **fields: Any) -> Row:
        """``row`` with this stage's fields added: the same id, its provenance extended."""
        return {**row, **fields, "provenance": self.provenance(row)}

    def derive(self, row: Row, *key: Any, **fields: Any) -> Row:
        """A new row made from ``row``: a content id from the stage, the parent id and ``key``; the
        parent and its ancestors as ``parent_ids``; the stage's origin; a fresh provenance."""
        return {
            "id": content_id(self.id_prefix or type(self).name, row["id"], *key),
            "parent_ids": [row["id"], *(row.get("parent_ids") or [])],
            "origin": self.origin or row.get("origin"),
            "lang": row.get("lang"),
            **fields,
            "provenance": self.provenance(),
        }

    # -- the row step ---------------------------------------------------------------------------

    def format_input(self, row: Row) -> Messages:
        """The messages for ``row``."""
        raise NotImplementedError

    def format_output(self, row: Row, answer: Any) -> Outcome:
        """What ``answer`` (a validated ``answer`` model, or :class:`ChatAnswer` text) makes of ``row``."""
        raise NotImplementedError

    async def ask(self, messages: Messages) -> BaseModel | ChatAnswer:
        if self.answer is None:
            return await self.client.chat(messages, stage=self.name)
        return await self.client.structured(messages, self.answer, stage=self.name)

    async def process(self, row: Row) -> Outcome:
        return self.format_output(row, await self.ask(self.format_input(row)))


def with_provenance(row: Row, stage: str, prompt_version: str, model: str) -> str:
    """The row's provenance JSON with this stage's prompt version and model added."""
    provenance = json.loads(row.get("provenance") or "{}")
    provenance[stage] = {"prompt": prompt_version, "model": model}
    return json.dumps(provenance, sort_keys=True)


def rejected_row(stage: str, row: Row, outcome: Rejected) -> Row:
    """The rejected table's row for an input (a final rejection): the input itself is kept, so
    nothing is lost."""
    from infinisynth.records import canonical_json

    return {
        "id": row["id"],
        "stage": stage,
        "reason": outcome.reason,
        "detail": outcome.detail,
        "raw_answer": outcome.raw_answer,
        "evidence_json": canonical_json(outcome.evidence) if outcome.evidence is not None else None,
        "input_json": canonical_json(row),
    }
