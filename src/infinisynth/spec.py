"""A pipeline, declared: its settings model and one list of steps.

Everything else is derived from this declaration: the DAG's tasks (:mod:`infinisynth.airflow_dag`),
the task bodies that run and commit a step (:mod:`infinisynth.steps`), each stage's settings, and
the DAG's Params (:func:`params_from_settings`, so a knob is declared once, on the settings model).

This module is light on purpose (dataclasses and pydantic only): DAG files import it at parse time.
Stage classes are named by their import path and loaded only when a task runs.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

StepKind = Literal["model", "batch", "global"]


@dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    - ``stage``: ``"module:Class"``, a :class:`~infinisynth.stages.base.ModelStage` (``model``), a
      batch step (``batch``) or a global step (``global``).
    - ``upstream``: the steps whose committed rows this one reads, as shards (a model or batch step
      maps one task over them; a global step reads whole partitions).
    - ``task``: the Airflow task id of the step's main task (default: the step's name);
      ``commit_task`` the id of its commit task (default: ``commit_<name>``).
    - ``role`` overrides the stage class's role; ``settings`` maps a stage-settings field to the
      pipeline-settings field it comes from (fields of the same name map by themselves).
    - ``when``: a predicate on the pipeline's settings; false, the step maps over no rows and
      writes no partition (e.g. generations beyond the ``generations`` setting).
    - ``fused``: runs in the same mapped task as its one upstream (a model or batch step, the
      one before it in the chain), over that task's output, and is committed with the chain's
      head (evolution and its oracle check; quality, responses and the gates: one task per
      shard). The chain's rows stream from step to step (:mod:`infinisynth.stream`).
    - ``beside``: runs in the mapped task of step ``beside`` (a step mapped over the same
      upstream shards), after that step's chain, and is committed with it: no task instances of
      its own (seed-problem scoring beside reverse construction: mined seeds switch it off, and a
      mapped task of its own still cost Airflow a process per shard).
    - ``commits`` (global steps): the mapped upstream steps this step's task commits before it
      runs (default: its first upstream, when that is a mapped step).
    - ``in_funnel``/``funnel_meta``: whether the night's funnel lists the step, and which of its
      manifest keys go beside its entry.
    """

    name: str
    stage: str
    kind: StepKind = "model"
    upstream: tuple[str, ...] = ()
    task: str | None = None
    commit_task: str | None = None
    role: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    when: Callable[[Any], bool] | None = None
    fused: bool = False
    beside: str | None = None
    commits: tuple[str, ...] | None = None
    in_funnel: bool = True  # part of the night's funnel table
    funnel_meta: tuple[str, ...] = ()  # manifest keys shown beside the step's funnel entry

    @property
    def task_id(self) -> str:
        return self.task or self.name

    @property
    def mapped(self) -> bool:
        return self.kind != "global"

    def runs(self, settings: Any) -> bool:
        return self.when is None or bool(self.when(settings))


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its name (the top folder of its data), settings model and steps. ``context``
    names a ``"module:function"`` that builds a run's context when the default (the logical date
    as partition, the Params as settings) does not fit, e.g. the diagnosis loop's iterations."""

    name: str
    settings: type[BaseModel]
    steps: tuple[Step, ...]
    context: str | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: step names repeat: {names}")
        for position, step in enumerate(self.steps):
            for up in step.upstream:
                if up not in names[:position]:
                    raise ValueError(f"{self.name}.{step.name}: upstream {up!r} is not an earlier step")
            if step.mapped and not step.upstream:
                raise ValueError(f"{self.name}.{step.name}: a mapped step needs an upstream to map over")
            if step.fused and (len(step.upstream) != 1 or not step.mapped or not self.step(step.upstream[0]).mapped):
                raise ValueError(
                    f"{self.name}.{step.name}: a fused step is a model or batch step with exactly one upstream model or batch step"
                )
        for step in self.steps:
            if step.beside is not None:
                host = self.step(step.beside)
                if not step.mapped or step.fused or not host.mapped or host.fused or host.beside or host.upstream != step.upstream:
                    raise ValueError(
                        f"{self.name}.{step.name}: beside names a model or batch step of its own task that reads the same upstream steps"
                    )
                if any(self.feeds(s.name) for s in self.chain(step.name)):
                    raise ValueError(f"{self.name}.{step.name}: a step beside another feeds no mapped step")
        for step in self.steps:
            followers = [s.name for s in self.steps if s.fused and s.upstream[0] == step.name]
            if len(followers) > 1:
                raise ValueError(f"{self.name}.{step.name}: a chain is a line, but {followers} are all fused after it")
        for step in self.steps:
            inputs = {fed.upstream for fed in self.feeds(step.name)}
            if len(inputs) > 1:
                raise ValueError(f"{self.name}: the steps fed by {step.name!r} must read the same upstream steps, not {sorted(inputs)}")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"{self.name} has no step {name!r}; steps: {[s.name for s in self.steps]}")

    def consumers(self, name: str) -> list[Step]:
        return [s for s in self.steps if name in s.upstream]

    def feeds(self, name: str) -> list[Step]:
        """The mapped steps that expand over the shards handed out when ``name`` finishes: those
        whose last upstream is ``name`` (they all read the same upstream steps)."""
        return [s for s in self.steps if s.mapped and not s.fused and not s.beside and s.upstream and s.upstream[-1] == name]

    def chain(self, name: str) -> list[Step]:
        """``name`` and the steps fused after it, in order: what one mapped task runs."""
        steps = [self.step(name)]
        while True:
            fused = [s for s in self.steps if s.fused and s.upstream[0] == steps[-1].name]
            if not fused:
                return steps
            steps.append(fused[0])

    def chains(self, name: str) -> list[list[Step]]:
        """What the mapped task of step ``name`` runs: its chain, then the chains beside it."""
        return [self.chain(name)] + [self.chain(s.name) for s in self.steps if s.beside == name]

    def task_steps(self, name: str) -> list[Step]:
        """Every step the mapped task of ``name`` runs (and its commit publishes), in order."""
        return [step for chain in self.chains(name) for step in chain]

    def head(self, name: str) -> str:
        """The step whose mapped task runs ``name``: the first step of its chain (itself unless
        fused), or the step it runs beside."""
        step = self.step(name)
        while step.fused or step.beside:
            step = self.step(step.upstream[0] if step.fused else step.beside or "")
        return step.name

    def absorbed(self, step: Step) -> tuple[str, ...]:
        """The mapped steps (chain heads) a global step commits in its own task."""
        if step.mapped:
            return ()
        if step.commits is not None:
            return step.commits
        return (self.head(step.upstream[0]),) if step.upstream and self.step(step.upstream[0]).mapped else ()

    def committed_by(self, name: str) -> Step | None:
        """The global step that commits mapped step ``name`` in its own task, or None when the
        mapped step has a commit task of its own."""
        return next((s for s in self.steps if name in self.absorbed(s)), None)


class PipelineSettings(BaseModel):
    """Base of a pipeline's run settings: every field is a DAG Param (see :func:`params_from_settings`)."""

    model_config = ConfigDict(extra="ignore")

    storage_root: str | None = Field(None, description="Object-storage URL; empty = INFINISYNTH_ROOT or data/ in the project")
    max_transient_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="A model step's shard fails (and is retried) when more of its rows than this share got no answer "
        "(429, 5xx, timeouts, dropped connections, broken bodies after the client's retries); below it they are reported as pending",
    )
    response_cache: bool = Field(
        True,
        description="Reuse final, valid model answers across runs and dates (keyed by the whole request, under {root}/_cache/llm); "
        "an answer sampled at temperature > 0 is reused as drawn",
    )
    response_cache_max_gb: float = Field(
        20.0, gt=0, description="Size bound of the response cache; the oldest answers are deleted first (checked once a day)"
    )
    stream_chains: bool = Field(
        True,
        description="Rows flow through a mapped task's fused steps as each one finishes (e.g. quality -> responses -> lint gate); "
        "off: each step over the whole shard, then the next. The same rows either way",
    )
    estimate: bool = Field(
        False,
        description="Project the run's calls, tokens, dollars and wall time instead of making it: each model step answers "
        "only the first estimate_sample rows of each shard (response cache off), the rest is extrapolated; writes "
        "reports/ds=.../estimate.json, publishes nothing (its tables go under {root}/_estimate) and emits no asset event",
    )
    estimate_sample: int = Field(5, ge=1, description="With estimate on: rows per shard each model step really answers")

    def role_overrides(self, role: str) -> dict[str, Any]:
        """Run settings that override a role's connection: ``<role>_model``, ``<role>_temperature``,
        ``<role>_max_tokens``, ``<role>_frequency_penalty``, ``<role>_presence_penalty`` when the
        settings have them and they are set (0 is a setting)."""
        keys = ("model", "temperature", "max_tokens", "frequency_penalty", "presence_penalty")
        values = {key: getattr(self, f"{role}_{key}", None) for key in keys}
        return {key: value for key, value in values.items() if value not in (None, "")}


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum", "min_length": "minLength"}


def param_schema(info: FieldInfo) -> dict[str, Any]:
    """The JSON-schema keywords of a Param for one settings field: type, choices, bounds, description.

    Optional fields become ``["null", <type>]`` with a None default: Airflow's trigger form treats
    a plain string Param as required, so an empty optional field would disable the Trigger button.
    """
    annotation = info.annotation
    types_: list[str] = []
    choices: list[Any] = []  # a Literal's values: the trigger form shows a dropdown, a wrong value fails the trigger
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for arg in args:
        if arg is type(None):
            types_.insert(0, "null")
        elif get_origin(arg) is Literal:
            choices.extend(get_args(arg))
            types_.extend(t for t in dict.fromkeys(_JSON_TYPES.get(type(value), "string") for value in get_args(arg)) if t not in types_)
        else:
            types_.append(_JSON_TYPES.get(get_origin(arg) or arg, "string"))
    schema: dict[str, Any] = {"type": types_[0] if len(types_) == 1 else types_}
    if choices:
        schema["enum"] = [None, *choices] if "null" in types_ else choices
    for meta in info.metadata:
        for attr, keyword in _BOUNDS.items():
            value = getattr(meta, attr, None)
            if value is not None:
                schema[keyword] = value
    if info.description:
        schema["description"] = info.description
    return schema


def params_from_settings(settings: type[BaseModel]) -> dict[str, Any]:
    """One Airflow Param per settings field, with the field's default, type, bounds and description."""
    from airflow.sdk import Param

    params = {}
    for name, info in settings.model_fields.items():
        if info.is_required():  # the trigger form asks for it
            params[name] = Param(**param_schema(info))
        else:
            params[name] = Param(info.get_default(call_default_factory=True), **param_schema(info))
    return params
