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


@pytest.fixture
def headline_prompt(tmp_path, monkeypatch):
    """A prompts folder holding the test stage's prompt (tests/test_stage_contract.py), in use."""
    from tests.test_stage_contract import PROMPT

    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "test_headline.toml").write_text(PROMPT)
    monkeypatch.setenv("INFINISYNTH_PROMPTS_DIR", str(folder))
    return folder
