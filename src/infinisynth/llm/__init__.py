"""The LLM client every stage uses: one configured client per role.

Names are imported on first use, so that light modules (the stage contract reads
:mod:`infinisynth.llm.reasons`) do not load the OpenAI client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infinisynth.llm.cache import ResponseCache
    from infinisynth.llm.client import LLMClient, LLMRejection, first_failure
    from infinisynth.llm.roles import ROLES, RoleConfig, StructuredMode
    from infinisynth.llm.usage import UsageMeter

_HOMES = {
    "LLMClient": "infinisynth.llm.client",
    "LLMRejection": "infinisynth.llm.client",
    "first_failure": "infinisynth.llm.client",
    "ResponseCache": "infinisynth.llm.cache",
    "ROLES": "infinisynth.llm.roles",
    "RoleConfig": "infinisynth.llm.roles",
    "StructuredMode": "infinisynth.llm.roles",
    "UsageMeter": "infinisynth.llm.usage",
}

__all__ = ["LLMClient", "LLMRejection", "ROLES", "ResponseCache", "RoleConfig", "StructuredMode", "UsageMeter", "first_failure"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value
