"""Prompt templates: one TOML file per prompt in ``include/prompts/``, rendered with Jinja2.

A template's version is the hash of its file, and that version is part of every cache and record
key, so editing a prompt can never reuse outputs made with the old text.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def prompts_dir() -> Path:
    return Path(os.environ.get("INFINISYNTH_PROMPTS_DIR", PROJECT_ROOT / "include" / "prompts"))


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str  # "<name>@<12 hex of the file's sha256>"
    system: jinja2.Template | None
    user: jinja2.Template

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages for these values; a missing value is an error, not an empty string."""
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system.render(**values).strip()})
        messages.append({"role": "user", "content": self.user.render(**values).strip()})
        return messages


@lru_cache(maxsize=64)
def load_prompt(name: str, directory: str | None = None) -> PromptTemplate:
    path = Path(directory) if directory else prompts_dir()
    path = path / f"{name}.toml"
    raw = path.read_bytes()
    try:
        body = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid prompt file ({exc})") from exc
    if "user" not in body:
        raise ValueError(f"{path}: a prompt file needs a 'user' template")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    system = _ENV.from_string(body["system"]) if body.get("system") else None
    return PromptTemplate(name=name, version=f"{name}@{digest}", system=system, user=_ENV.from_string(body["user"]))
