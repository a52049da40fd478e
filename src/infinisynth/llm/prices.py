"""What a model's tokens cost: a small dated price table, overridable per role and per model.

Prices are US dollars per million tokens. A role's price comes from, first to last:

1. its connection's ``extra.price`` (``{"input": 0.15, "output": 0.6, "cached_input": 0.075,
   "batch_discount": 0.5}``; the :class:`~infinisynth.llm.RoleConfig` field ``price``);
2. the Airflow Variable ``infinisynth_prices`` (JSON: model -> price, same keys), also read from
   the environment as ``AIRFLOW_VAR_INFINISYNTH_PRICES``;
3. :data:`DEFAULT_PRICES` below (list prices as of :data:`PRICES_AS_OF`: check your provider's);
4. nothing: a local or unknown model costs 0 and is reported as *unpriced*.

A model id matches a table entry exactly, else by its longest entry prefix followed by ``-``
(``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``); a ``provider/`` prefix is ignored.

What is priced how: input tokens at ``input`` (those the provider served from its prompt cache at
``cached_input``), output tokens at ``output``, tokens of provider batch-API requests at the batch
price (``batch_input``/``batch_output``, default the interactive price times ``batch_discount``).
Answers from our own response cache (:mod:`infinisynth.llm.cache`) make no request and cost 0.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

VARIABLE = "infinisynth_prices"
PRICES_AS_OF = "2025-06-01"
PER = 1_000_000  # prices are per million tokens


class Price(BaseModel):
    """Dollars per million tokens of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0, description="Input tokens served from the provider's prompt cache (default: input)")
    batch_discount: float = Field(0.5, ge=0, le=1, description="Batch-API price as a share of the interactive one")
    batch_input: float | None = Field(None, ge=0)
    batch_output: float | None = Field(None, ge=0)
    source: str = "table"  # where this price came from: connection, variable, table

    def dollars(
        self,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_prompt_tokens: int = 0,
        batch: bool = False,
    ) -> float:
        """The cost of one request's tokens."""
        cached = min(cached_prompt_tokens, prompt_tokens)
        if batch:
            rate_in = self.batch_input if self.batch_input is not None else self.input * self.batch_discount
            rate_out = self.batch_output if self.batch_output is not None else self.output * self.batch_discount
            rate_cached = rate_in if self.cached_input is None else min(rate_in, self.cached_input * self.batch_discount)
        else:
            rate_in, rate_out = self.input, self.output
            rate_cached = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * rate_in + cached * rate_cached + completion_tokens * rate_out) / PER


def _p(input: float, output: float, cached_input: float | None = None) -> Price:
    return Price(input=input, output=output, cached_input=cached_input)


# List prices in dollars per million tokens as of PRICES_AS_OF; both providers' batch APIs halve them.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": _p(2.50, 10.00, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-4.1": _p(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "o3": _p(2.00, 8.00, 0.50),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08),
    "claude-3-5-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-7-sonnet": _p(3.00, 15.00, 0.30),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30),
    "claude-opus-4": _p(15.00, 75.00, 1.50),
}

VariableLookup = Callable[[str], "str | None"]


def match(model: str, table: Mapping[str, Any]) -> str | None:
    """The table entry for ``model``: exact, else the longest entry it extends by ``-...``."""
    names = [model, model.rsplit("/", 1)[-1]]
    for name in names:
        if name in table:
            return name
    for name in names:
        prefixes = [key for key in table if name.startswith(f"{key}-")]
        if prefixes:
            return max(prefixes, key=len)
    return None


def price_for(model: str, override: Mapping[str, Any] | None = None, variable: VariableLookup | None = None) -> Price | None:
    """The price of ``model`` (None: unpriced). ``override``: the role connection's ``price``;
    ``variable``: how to read an Airflow Variable (default: the environment, then Airflow)."""
    if override:
        return Price.model_validate({**override, "source": "connection"})
    table = variable_prices(variable)
    name = match(model, table)
    if name is not None:
        try:
            return Price.model_validate({**table[name], "source": "variable"})
        except ValidationError as exc:
            raise ValueError(f"Variable {VARIABLE}: the price of {name!r} is not valid: {exc}") from None
    name = match(model, DEFAULT_PRICES)
    return DEFAULT_PRICES[name] if name is not None else None


def role_price(role: Any, variable: VariableLookup | None = None) -> Price | None:
    """The price of a :class:`~infinisynth.llm.RoleConfig`'s model (its ``price`` field first)."""
    return price_for(role.model, getattr(role, "price", None), variable)


def variable_prices(variable: VariableLookup | None = None) -> dict[str, Any]:
    """The Variable ``infinisynth_prices`` as a mapping (empty when unset)."""
    raw = (variable or _variable)(VARIABLE)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Variable {VARIABLE} must be JSON mapping model -> price ({exc.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"Variable {VARIABLE} must be a JSON object mapping model -> {{input, output, ...}}")
    return value


def _variable(key: str) -> str | None:
    raw = os.environ.get(f"AIRFLOW_VAR_{key.upper()}")
    if raw:
        return raw
    try:  # inside an Airflow task: the metadata DB or a secrets backend
        from infinisynth.airflow_env import variable
    except ImportError:
        return None
    return variable(key)


def describe(price: Price | None) -> str:
    if price is None:
        return "unpriced"
    return f"${price.input:g} in / ${price.output:g} out per 1M tokens ({price.source})"
