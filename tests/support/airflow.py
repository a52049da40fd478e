"""A throwaway Airflow home for tests (its own SQLite DB) and a runner for ``airflow dags test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@dataclass
class AirflowHome:
    env: dict[str, str]

    def run(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AIRFLOW, *args], env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
        )

    def dags_test(self, dag_id: str, ds: str, conf: dict[str, Any], extra_env: dict[str, str], timeout: float = 600) -> str:
        """Run a whole DAG in-process for ``ds``; return its output, failing loudly if the run failed."""
        result = self.run("dags", "test", dag_id, ds, "-c", json.dumps(conf), extra_env=extra_env, timeout=timeout)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "state=failed" in output or "DagRunState.FAILED" in output:
            raise AssertionError(f"dags test {dag_id} failed (exit {result.returncode}):\n{output[-6000:]}")
        return output


def make_airflow_home(directory: Path) -> AirflowHome:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(directory),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
    }
    home = AirflowHome(env)
    for args in (("db", "migrate"), ("pools", "set", "llm", "4", "model calls")):
        result = home.run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return home
