"""The production stack's servers as local processes on loopback: PostgreSQL (Airflow's metadata
DB) and Redis (Celery's broker and the roles' shared limits). Debian's packages, no Docker.

PostgreSQL refuses to run as root: as root the cluster is created and run as the ``postgres``
user (which Debian's package creates), in a directory that user owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infinisynth.processes import free_port, stop

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _pg_tool(name: str) -> str:
    found = PG_BIN / name if (PG_BIN / name).exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: `make setup` installs the postgresql package")
    return str(found)


def _as_postgres_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def running_postgres(database: str = "airflow") -> Iterator[str]:
    """A private PostgreSQL cluster on a free loopback port; yields a SQLAlchemy URL for
    ``database`` (created, owned by a password-less ``airflow`` role). Stopped and removed after."""
    workdir = Path(tempfile.mkdtemp(prefix="pg-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run(
            _as_postgres_user([_pg_tool("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]),
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_postgres_user([_pg_tool("pg_ctl"), "-D", str(data), "-o", options, "-l", str(workdir / "server.log"), "-w", "start"]),
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        psql = _as_postgres_user([_pg_tool("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        subprocess.run([*psql, "-c", "CREATE ROLE airflow LOGIN"], check=True, capture_output=True, text=True)
        subprocess.run([*psql, "-c", f"CREATE DATABASE {database} OWNER airflow"], check=True, capture_output=True, text=True)
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres_user([_pg_tool("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running_redis() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is missing: `make setup` installs the redis-server package")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)
