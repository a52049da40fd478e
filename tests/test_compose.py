"""The production stack's docker-compose.yaml, checked without a Docker engine.

``docker-compose config`` (Debian's docker-compose, installed by the README's commands) parses
and validates the file and resolves its variables; the rest checks that what the stack hands the
Airflow containers is what the library reads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infinisynth.model_server import MODEL_ALIAS
from infinisynth.settings import lint_service_url, role_config, store_for

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: scripts/system-deps.sh installs it"
    result = subprocess.run(
        [docker_compose, "-f", str(REPO / "docker-compose.yaml"), *args, "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_config()


def test_the_stack_has_every_service_the_design_names(stack):
    services = set(stack["services"])
    assert {"postgres", "redis", "minio", "minio-init", "lint", "model", *AIRFLOW_SERVICES} <= services
    assert stack["services"]["model"]["profiles"] == ["local-model"]  # optional
    for name in AIRFLOW_SERVICES:
        assert stack["services"][name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Workers wait for the lint sidecar to be healthy before taking tasks.
    assert stack["services"]["airflow-worker"]["depends_on"]["lint"]["condition"] == "service_healthy"


def test_every_image_builds_from_files_in_the_repository(stack):
    for name, service in stack["services"].items():
        if "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]  # docker-compose 1.x prints the short form
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: bind mount {source} is missing"


def test_the_airflow_image_matches_the_pinned_airflow():
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    base = re.search(r"^FROM apache/airflow:(\S+?)-python", (REPO / "docker/airflow.Dockerfile").read_text(), re.MULTILINE)
    assert pinned and base and pinned.group(1) == base.group(1)


def test_the_library_reads_what_the_stack_configures(stack):
    env = stack["services"]["airflow-worker"]["environment"]
    lookup = lambda conn_id: _connection(env, conn_id)  # noqa: E731

    store = store_for(env["INFINISYNTH_ROOT"], lookup)
    assert store.root_url == "s3://infinisynth/data"
    assert store.fs.client_kwargs["endpoint_url"] == "http://minio:9000" and store.fs.key == "infinisynth"
    assert lint_service_url(lookup) == "http://lint:8787"
    generator = role_config("generator", lookup)
    assert generator.base_url == "http://model:8765/v1" and generator.model == MODEL_ALIAS


def test_model_settings_come_from_the_env_file_and_keys_stay_out_of_the_file(tmp_path):
    configured = compose_config(
        env={"LLM_BASE_URL": "https://vllm.internal/v1", "LLM_API_KEY": "sk-live-123", "LLM_MODEL": "qwen2.5-coder-32b"}
    )
    conn = json.loads(configured["services"]["airflow-worker"]["environment"]["AIRFLOW_CONN_LLM_DEFAULT"])
    assert conn["host"] == "https://vllm.internal/v1" and conn["password"] == "sk-live-123"
    assert conn["extra"]["model"] == "qwen2.5-coder-32b"
    assert "sk-" not in (REPO / "docker-compose.yaml").read_text()


def _connection(env: dict[str, str], conn_id: str) -> dict[str, Any] | None:
    raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    return json.loads(raw) if raw else None
