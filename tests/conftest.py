"""The scripted OpenAI-compatible server fixture (the library is installed: ``pip install -e .``)."""

from collections.abc import Iterator

import pytest

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
