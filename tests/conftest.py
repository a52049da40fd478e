"""Make the ``infinisynth`` library under ``plugins/`` importable in tests; the scripted server."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from tests.support.servers import ScriptedOpenAI, scripted_openai  # noqa: E402

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedOpenAI]:
    """One scripted OpenAI-compatible server (a real HTTP process on loopback) for the session."""
    with scripted_openai() as server:
        yield server


@pytest.fixture
def fresh_scripted(scripted: ScriptedOpenAI) -> ScriptedOpenAI:
    """The session's scripted server with no rules and zeroed counters."""
    scripted.reset()
    return scripted
