"""Per-role endpoint settings. Every LLM call names a role; each role is configured separately."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# generator writes problems and responses; judge scores; tagger tags; oracle checks and diagnoses;
# base scores losses through a completions endpoint; target is the model under diagnosis.
ROLES = ("generator", "judge", "tagger", "oracle", "base", "target")
# Roles whose answers the response cache never serves: the target is the model under diagnosis,
# and a newly registered model may sit behind the same URL and model id as the last one.
UNCACHED_ROLES = frozenset({"target"})

StructuredMode = Literal["json_schema", "json_object", "prompt"]
CallMode = Literal["online", "batch"]


class RoleConfig(BaseModel):
    """How to reach one role's model, and how hard to push it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: str
    base_url: str
    model: str
    api_key: SecretStr = SecretStr("sk-no-key-required")
    # OpenAI: json_schema; llama.cpp's server: json_object (with a schema); anything else: prompt.
    structured_output: StructuredMode = "json_schema"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, gt=0)
    # Limits hold across every task and worker of the deployment (llm/limits.py), keyed by
    # endpoint + model + API key: roles that share those share one budget.
    max_concurrency: int = Field(8, gt=0)
    min_concurrency: int = Field(1, gt=0)  # the floor of the adaptive limit
    adaptive: bool = True  # 429/503/latency halve the in-flight limit; successes raise it again
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    # Where the shared budget lives: redis://host:6379/1 or sqlite:///path; default: the
    # INFINISYNTH_LIMITS_URL variable, else a SQLite file in ~/.cache/infinisynth/.
    limits_url: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)  # transport: 429, 5xx, timeouts, dropped connections
    max_invalid_retries: int = Field(2, ge=0)  # answers that do not validate
    seed: int | None = None
    # Penalties on tokens the answer already used (OpenAI's; llama.cpp's server honours both): a
    # small model's follow-up turns repeat themselves without them. None: not sent.
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # Dollars per million tokens (infinisynth.llm.prices.Price keys: input, output, cached_input,
    # batch_discount ...); None: the Variable infinisynth_prices, then the built-in table. Not part
    # of the generation config: a new price never invalidates a cached answer.
    price: dict[str, float] | None = None
    # Batch mode (llm/batch.py): a model stage of this role sends its requests as one provider
    # batch (/v1/files + /v1/batches, half the price) and its task defers until the batch is done.
    mode: CallMode = "online"
    batch_completion_window: str = "24h"
    batch_poll_seconds: float = Field(60.0, gt=0)
    batch_max_rounds: int = Field(3, ge=1)  # batches per shard (re-asks, follow-up calls); then online

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def with_overrides(self, **overrides: Any) -> RoleConfig:
        """A copy with the given (non-None) settings replaced, validated again."""
        values = self.model_dump()
        values["api_key"] = self.api_key
        values.update({k: v for k, v in overrides.items() if v is not None})
        return RoleConfig(**values)

    def generation_config(self) -> dict[str, Any]:
        """Everything of this role that decides what an answer is: part of every stage's cache key."""
        config = self.model_dump(include={"model", "structured_output", "temperature", "max_tokens", "seed", "max_invalid_retries"})
        # Penalties only when set, so the cache keys of roles without them stay as they were.
        config.update(self.penalties())
        return config

    def penalties(self) -> dict[str, float]:
        """The repetition penalties this role sends (those that are set)."""
        values = {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty}
        return {key: value for key, value in values.items() if value is not None}

    def public_dict(self) -> dict[str, Any]:
        """Settings fit for logs, XCom and manifests: no API key (nor the limits store's URL)."""
        return self.model_dump(exclude={"api_key", "limits_url"})
