"""Celery workers of a test's Airflow home, as real processes (``airflow celery worker``).

Two workers on one machine share its host name, so each one's tasks report the worker's own
name instead (``[core] hostname_callable`` = :func:`worker_name`): ``task_instance.hostname``
then says which worker ran which try.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.airflow import AIRFLOW

WORKER_NAME_ENV = "INFINISYNTH_TEST_WORKER"


def worker_name() -> str:
    """``[core] hostname_callable`` for test workers: the worker's name, else the machine's."""
    import socket

    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def celery_env(broker_url: str, database_url: str) -> dict[str, str]:
    """The CeleryExecutor settings of docker-compose.yaml, pointed at the test's servers."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url,  # SQLAlchemy 2.1 defaults to psycopg 3
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # Both workers share each role's limits through the same Redis, as in docker-compose.yaml.
        "INFINISYNTH_LIMITS_URL": broker_url.rsplit("/", 1)[0] + "/1",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.support.celery_stack.worker_name",
        # A killed worker's task stops heartbeating: found and retried in seconds, not minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        # A task the killed worker had reserved but not started waits this long in "queued".
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    }


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the worker and every task process it forked (its process group): a lost machine."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=20)


@contextmanager
def celery_workers(env: dict[str, str], log_dir: Path, names: tuple[str, ...] = ("worker-a", "worker-b")) -> Iterator[dict[str, Worker]]:
    workers: dict[str, Worker] = {}
    try:
        for name in names:
            log = (log_dir / f"{name}.log").open("wb")
            argv = [AIRFLOW, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "2", "--skip-serve-logs"]
            argv += ["--pid", str(log_dir / f"{name}.pid")]  # one pid file each: Celery locks it
            process = subprocess.Popen(
                argv, env={**env, WORKER_NAME_ENV: name}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()
            workers[name] = Worker(name, process)
        yield workers
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                try:
                    os.killpg(worker.process.pid, signal.SIGTERM)
                    worker.process.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            worker.kill()
