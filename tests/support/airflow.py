"""A throwaway Airflow home for tests (its own SQLite DB), a runner for ``airflow dags test``, and
a real scheduler stack (api-server, dag-processor, scheduler) running in the background."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infinisynth.processes import free_port
from tests.support.servers import wait_for_http

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@dataclass
class AirflowHome:
    env: dict[str, str]

    def run(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIRFLOW, *args], env={**self.env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` (``?`` placeholders) from this home's metadata DB, SQLite or PostgreSQL,
        with values as SQLite gives them: datetimes as text, JSON columns as JSON text."""
        import sqlalchemy

        url = self.env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"sqlite:///{self.env['AIRFLOW_HOME']}/airflow.db"
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args={"timeout": 30} if url.startswith("sqlite") else {}
        )
        names = [f"p{i}" for i in range(len(args))]
        for name in names:
            sql = sql.replace("?", f":{name}", 1)
        try:
            with engine.connect() as connection:
                rows = connection.execute(sqlalchemy.text(sql), dict(zip(names, args, strict=True))).mappings().all()
        finally:
            engine.dispose()
        return [{key: _as_sqlite_gives(value) for key, value in row.items()} for row in rows]

    def dags_test(self, dag_id: str, ds: str, conf: dict[str, Any], extra_env: dict[str, str], timeout: float = 600) -> str:
        """Run a whole DAG in-process for ``ds``; return its output, failing loudly if the run failed."""
        result = self.run("dags", "test", dag_id, ds, "-c", json.dumps(conf), extra_env=extra_env, timeout=timeout)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "state=failed" in output or "DagRunState.FAILED" in output:
            # The first error is what matters; the tail says how the run ended.
            first = next((i for i, line in enumerate(output.splitlines()) if "Traceback" in line or "[error" in line), None)
            head = "\n".join(output.splitlines()[first : first + 60]) if first is not None else ""
            raise AssertionError(f"dags test {dag_id} failed (exit {result.returncode}):\n{head}\n...\n{output[-3000:]}")
        return output


def _as_sqlite_gives(value: Any) -> Any:
    import datetime

    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def make_airflow_home(directory: Path, database_url: str | None = None) -> AirflowHome:
    """A migrated Airflow home in ``directory`` with the ``llm`` pool: on its own SQLite file, or on
    ``database_url`` (e.g. :func:`tests.support.services.running_postgres`), which a scheduler
    stack should use: SQLite's single writer makes a CLI that writes while a scheduler runs (``airflow
    backfill create``) fail with "database is locked" whatever its timeout."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(directory),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO),
        **({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url} if database_url else {}),
    }
    home = AirflowHome(env)
    for args in (("db", "migrate"), ("pools", "set", "llm", "4", "model calls")):
        result = home.run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return home


def scheduler_env(home: AirflowHome, port: int) -> dict[str, str]:
    """What a real scheduler stack on SQLite needs: LocalExecutor, one shared JWT secret, the
    execution API at the api server on loopback, and short loop intervals so a test waits less."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret-" + str(port),
        "AIRFLOW__API__SECRET_KEY": "test-only-secret-key",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    }


@contextmanager
def running_scheduler(
    home: AirflowHome, extra_env: dict[str, str], log_dir: Path, timeout: float = 120, triggerer: bool = False
) -> Iterator[dict[str, str]]:
    """``airflow api-server``, ``dag-processor`` and ``scheduler`` (and with ``triggerer``, ``airflow
    triggerer``, which runs deferred tasks' triggers) as background processes (each its own process
    group, killed with its children on exit, whatever happens); yields the env."""
    port = free_port()
    env = {**home.env, **scheduler_env(home, port), **extra_env}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for component in ("api-server", "dag-processor", "scheduler", *(("triggerer",) if triggerer else ())):
            log = (log_dir / f"{component}.log").open("wb")
            processes.append(subprocess.Popen([AIRFLOW, component], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        wait_for_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=timeout)
        yield env
    finally:
        for process in processes:
            _kill_group(process, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            _kill_group(process, signal.SIGKILL)  # the group: task processes the executor forked
            process.wait(timeout=10)


def _kill_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


@contextmanager
def process_group(argv: list[str], log: Path, timeout: float = 30, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as the leader of a process group of its own, its output in ``log``. On exit the
    group gets SIGTERM, then (after up to ``timeout`` seconds) SIGKILL: whatever it forked goes too."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        yield process
    finally:
        _kill_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(process, signal.SIGKILL)
        process.wait(timeout=20)


@contextmanager
def running_api_server(home: AirflowHome, root: str, work: Path, user: str, password: str, timeout: float = 120) -> Iterator[str]:
    """``airflow api-server`` alone, with the project's plugins, over the data at ``root``: Airflow's
    own sign-in, with ``user`` (an admin) and ``password`` the only account. Yields its base URL;
    its log is ``work/api-server.log``."""
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps({user: password}))
    port = free_port()
    env = {
        **home.env,
        "INFINISYNTH_ROOT": root,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": f"test-only-jwt-secret-{port}",
        "AIRFLOW__API__SECRET_KEY": "test-only-secret-key",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
    }
    env.pop("AIRFLOW_CONN_LLM_DEFAULT", None)  # the report makes no model calls
    log = work / "api-server.log"
    base = f"http://127.0.0.1:{port}"
    with process_group([AIRFLOW, "api-server"], log, env=env):
        try:
            wait_for_http(f"{base}/api/v2/monitor/health", timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"the api-server did not start:\n{log.read_text()[-4000:]}") from None
        yield base
