"""Session fixtures shared by the DAG-run tests: an Airflow home and the embedded model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.airflow import AirflowHome, make_airflow_home


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    return make_airflow_home(tmp_path_factory.mktemp("airflow-home"))


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real embedded model server (SmolLM2 via llama.cpp) on loopback; yields its base URL."""
    from infinisynth.model_server import running_model_server

    log_path = tmp_path_factory.mktemp("model-server") / "server.log"
    with log_path.open("wb") as log, running_model_server(log=log) as base_url:
        yield base_url


def connection_env(base_url: str, **extra: object) -> dict[str, str]:
    """Environment that points the ``llm_default`` connection at ``base_url``."""
    conn = {"conn_type": "openai", "host": base_url, "password": "sk-test-SECRET-dag", "extra": {"model": "scripted", **extra}}
    return {"AIRFLOW_CONN_LLM_DEFAULT": json.dumps(conn)}
