"""The report app's Airflow side, inside the api-server: the user from Airflow's own authentication
(the UI's ``_token`` JWT cookie or a bearer token, via ``get_user``), read access to a DAG's runs
from the auth manager, the run and its task instances from the metadata DB, and the storage root
the run used (its conf's ``storage_root``, else ``INFINISYNTH_ROOT``, else ``data/``), with S3
credentials from the storage connection (never shown).

Imported only by the plugin (``plugins/synthesis_report.py``) in the api-server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from infinisynth.settings import connection_fields, store_for
from infinisynth.storage import Store
from infinisynth.ui_report.app import Backend, RunInfo, create_app


def connection_lookup(conn_id: str) -> dict[str, Any] | None:
    """A connection (metadata DB, environment or secrets backend) as a plain dict, server side."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models import Connection

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    return connection_fields(conn)


def can_read(user: Any, dag_id: str) -> bool:
    """Whether ``user`` may read ``dag_id``'s runs (GET on its DAG-run entity), as the REST API asks."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    team = DagModel.get_team_name(dag_id)
    return bool(
        get_auth_manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id, team_name=team), user=user
        )
    )


def find_run(dag_id: str, run_id: str) -> RunInfo | None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            return None
        tis = session.execute(
            select(
                TaskInstance.task_id,
                TaskInstance.map_index,
                TaskInstance.start_date,
                TaskInstance.end_date,
                TaskInstance.duration,
                TaskInstance.state,
            ).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        return RunInfo(
            dag_id=dag_id,
            run_id=run_id,
            logical_date=run.logical_date or run.run_after,
            conf=dict(run.conf or {}),
            state=str(run.state) if run.state else None,
            task_instances=[dict(row._mapping) for row in tis],
        )


def recent_runs(dag_ids: Sequence[str], limit: int) -> list[RunInfo]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not dag_ids:
        return []
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id.in_(list(dag_ids))).order_by(DagRun.run_after.desc()).limit(limit)).all()
        return [
            RunInfo(dag_id=r.dag_id, run_id=r.run_id, logical_date=r.logical_date, state=str(r.state) if r.state else None) for r in runs
        ]


def open_store(root: str | None) -> Store:
    return store_for(root, connection_lookup)


def airflow_app() -> FastAPI:
    """The report app wired to Airflow: what the plugin mounts."""
    from airflow.api_fastapi.core_api.security import get_user

    return create_app(Backend(user=get_user, can_read=can_read, run=find_run, recent_runs=recent_runs, store=open_store))
