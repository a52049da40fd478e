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
import sys
import tempfile
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


STACK_SECRETS = REPO / "scripts" / "stack_secrets.py"


def run_compose_config(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with only ``env`` (never a developer's own .env)."""
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: scripts/system-deps.sh installs it"
    empty = Path(tempfile.mkdtemp()) / "empty.env"
    empty.touch()
    argv = [docker_compose, "--env-file", str(empty)]
    for name in files or ("docker-compose.yaml",):
        argv += ["-f", str(REPO / name)]
    return subprocess.run(
        [*argv, "config"], capture_output=True, text=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=60
    )


def generated_env(tmp_path: Path) -> dict[str, str]:
    """What `make env` writes, as a mapping."""
    env_file = tmp_path / "generated.env"
    subprocess.run([sys.executable, str(STACK_SECRETS), "generate", "--env-file", str(env_file)], check=True, capture_output=True)
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#"))


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_compose_config(*files, env={**SECRETS_FOR_TESTS, **(env or {})})
    assert result.returncode == 0, f"docker-compose config rejected the file:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_config()


def _fresh_secrets() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as directory:
        return {k: v for k, v in generated_env(Path(directory)).items() if k in SECRET_NAMES}


SECRET_NAMES = (
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
)
SECRETS_FOR_TESTS = _fresh_secrets()


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
    assert store.fs.client_kwargs["endpoint_url"] == "http://minio:9000" and store.fs.key == SECRETS_FOR_TESTS["MINIO_ROOT_USER"]
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


# -- secrets: the stack fails closed -------------------------------------------------------------


def check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_SECRETS), "check"], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True
    )


def test_compose_refuses_to_run_without_each_secret_and_says_how_to_set_it():
    for name in SECRET_NAMES:
        result = run_compose_config(env={k: v for k, v in SECRETS_FOR_TESTS.items() if k != name})
        assert result.returncode != 0, name
        assert name in result.stderr and "make env" in result.stderr, result.stderr


def test_no_secret_has_a_usable_default_in_the_compose_file_or_env_example():
    compose = (REPO / "docker-compose.yaml").read_text()
    example = dict(
        line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    for name in SECRET_NAMES:
        assert f"${{{name}:-" not in compose and f"${{{name}-" not in compose, name  # no fallback value
        assert example[name] == "", f".env.example ships a value for {name}"
    assert "change-me" not in compose and "infinisynth-secret" not in compose
    # The stack's first service refuses .env.example as it is, and every published default.
    refused = check_secrets({k: example[k] for k in SECRET_NAMES})
    assert refused.returncode == 1 and all(f"{name} is not set" in refused.stderr for name in SECRET_NAMES), refused.stderr
    for name, weak in (
        ("AIRFLOW_JWT_SECRET", "change-me"),
        ("MINIO_ROOT_PASSWORD", "infinisynth-secret"),
        ("POSTGRES_PASSWORD", "airflow"),
    ):
        refused = check_secrets({**SECRETS_FOR_TESTS, name: weak})
        assert refused.returncode == 1 and f"{name} is a published default" in refused.stderr, refused.stderr
    short = check_secrets({**SECRETS_FOR_TESTS, "AIRFLOW_ADMIN_PASSWORD": "hunter2"})
    assert short.returncode == 1 and "AIRFLOW_ADMIN_PASSWORD is too short" in short.stderr
    not_fernet = check_secrets({**SECRETS_FOR_TESTS, "AIRFLOW_FERNET_KEY": "x" * 44})
    assert not_fernet.returncode == 1 and "not a Fernet key" in not_fernet.stderr
    assert check_secrets(SECRETS_FOR_TESTS).returncode == 0


def test_every_service_waits_for_the_secrets_check(stack):
    secrets_service = stack["services"]["secrets"]
    assert "stack_secrets.py check" in " ".join(secrets_service["command"])
    for name, service in stack["services"].items():
        if name != "secrets":
            assert service["depends_on"]["secrets"]["condition"] == "service_completed_successfully", name
    # The admin's password is the generated one, in the file the api-server reads.
    api = stack["services"]["airflow-apiserver"]["environment"]
    assert api["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == "/opt/airflow/auth/passwords.json"


def test_make_env_writes_distinct_strong_secrets_and_never_overwrites(tmp_path):
    from cryptography.fernet import Fernet

    env_file = tmp_path / ".env"
    first = subprocess.run([sys.executable, str(STACK_SECRETS), "generate", "--env-file", str(env_file)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert env_file.stat().st_mode & 0o777 == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#"))
    secrets = [values[name] for name in SECRET_NAMES]
    assert len(set(secrets)) == len(secrets) and all(len(v) >= 16 for v in secrets)
    assert values["LLM_MODEL"] == "smollm2-135m-instruct"  # the rest of .env.example is kept
    fernet = Fernet(values["AIRFLOW_FERNET_KEY"].encode())
    assert fernet.decrypt(fernet.encrypt(b"sk-live-model-key")) == b"sk-live-model-key"
    assert check_secrets(values).returncode == 0
    (tmp_path / "again").mkdir()
    assert all(values[k] != v for k, v in generated_env(tmp_path / "again").items() if k in SECRET_NAMES)  # fresh each time

    before = env_file.read_bytes()
    again = subprocess.run([sys.executable, str(STACK_SECRETS), "generate", "--env-file", str(env_file)], capture_output=True, text=True)
    assert again.returncode != 0 and "not overwriting" in again.stderr
    assert env_file.read_bytes() == before


def test_only_the_ui_port_is_published_unless_the_user_opts_in(stack):
    published = {name for name, service in stack["services"].items() if service.get("ports")}
    assert published == {"airflow-apiserver"}
    opted_in = compose_config("docker-compose.yaml", "docker-compose.ports.yaml")
    for name in ("minio", "lint"):
        ports = opted_in["services"][name]["ports"]
        assert ports and all(str(p.get("host_ip") if isinstance(p, dict) else p).startswith("127.0.0.1") for p in ports), ports
