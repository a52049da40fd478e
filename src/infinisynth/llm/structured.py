"""Structured output in the three shapes endpoints accept, and lenient parsing of what comes back.

- ``json_schema``: OpenAI's ``response_format={"type": "json_schema", ...}``.
- ``json_object``: llama.cpp's server takes ``{"type": "json_object", "schema": ...}`` and
  constrains decoding to the schema.
- ``prompt``: no server support; the schema goes into the prompt and the answer is parsed.

Whatever the mode, the answer is validated against the pydantic model before anyone sees it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from infinisynth.llm.roles import StructuredMode

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)\n?```", re.DOTALL)


class InvalidAnswer(ValueError):
    """The answer could not be parsed or did not fit the schema; ``str()`` says why."""


@lru_cache(maxsize=128)
def json_schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def response_format(mode: StructuredMode, model: type[BaseModel]) -> dict[str, Any] | None:
    schema = json_schema_of(model)
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema, "strict": False}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def with_schema_instruction(messages: list[dict[str, str]], model: type[BaseModel]) -> list[dict[str, str]]:
    """Append the schema to the last user turn, for endpoints that cannot enforce it themselves."""
    note = _schema_note(model)
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message["role"] == "user":
            message["content"] = message["content"] + note
            break
    return out


@lru_cache(maxsize=128)
def _schema_note(model: type[BaseModel]) -> str:
    # Titles are class names ("ReverseProblem"): small models copy them into their answers.
    schema = json.dumps(_without_titles(json_schema_of(model)), separators=(",", ":"))
    return f"\n\nReply with only a JSON object that matches this JSON schema, and nothing else:\n{schema}"


def _without_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


def parse_answer(text: str | None, model: type[M]) -> M:
    """The answer as a validated model instance, or :class:`InvalidAnswer` saying what is wrong.

    Tolerates what chat models wrap around JSON (a code fence, a sentence before or after).
    """
    if text is None or not text.strip():
        raise InvalidAnswer("empty answer")
    candidate = _extract_json(text)
    try:
        value = json.loads(candidate, strict=False)  # raw newlines in strings: the schema still rules
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:5])
        raise InvalidAnswer(f"does not match the {model.__name__} schema ({problems})") from None


def _extract_json(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("{") or stripped.startswith("["):
        return stripped
    fenced = _FENCE.search(stripped)
    if fenced:
        return fenced.group(1).strip()
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        return stripped[start : end + 1]
    return stripped
