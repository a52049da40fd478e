"""The one place the library meets Airflow at run time: connections and the task's context.

Imported only inside task bodies, so DAG files parse without loading the library's heavy
dependencies.
"""

from __future__ import annotations

from typing import Any

from infinisynth.llm import RoleConfig
from infinisynth.settings import connection_fields, role_config, store_for
from infinisynth.storage import Store


def connection_lookup(conn_id: str) -> dict[str, Any] | None:
    """Airflow's connection (metadata DB, environment or secrets backend) as a plain dict."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return connection_fields(conn)


def run_store(params: dict[str, Any]) -> Store:
    return store_for(params.get("storage_root") or None, connection_lookup)


def run_role(role: str, **overrides: Any) -> RoleConfig:
    return role_config(role, connection_lookup, **overrides)


def variable(key: str) -> str | None:
    """An Airflow Variable's text inside a task (metadata DB or secrets backend); None when unset
    or when not running inside a task."""
    import sys

    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    if runner is None or getattr(runner, "SUPERVISOR_COMMS", None) is None:
        return None
    from airflow.sdk import Variable

    try:
        value = Variable.get(key, default=None)
    except Exception:  # a Variable backend that cannot answer must not fail the run: prices are a report
        return None
    return None if value is None else str(value)
