"""The LLM client every stage uses: one configured client per role."""

from infinisynth.llm.client import LLMClient, LLMRejection
from infinisynth.llm.roles import ROLES, RoleConfig, StructuredMode
from infinisynth.llm.usage import UsageMeter

__all__ = ["LLMClient", "LLMRejection", "ROLES", "RoleConfig", "StructuredMode", "UsageMeter"]
