"""The run report inside the Airflow UI (``plugins/synthesis_report.py`` mounts it).

``data`` assembles a run's report from storage (pure functions), ``app`` serves it (FastAPI,
jinja2 pages, plotly.js charts), ``airflow_backend`` wires the app to Airflow in the api-server.
This module stays light: the demo imports :func:`report_url` without FastAPI or Airflow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

PREFIX = "/synthesis"


def ui_base_url() -> str:
    """Where the Airflow UI answers: ``AIRFLOW__API__BASE_URL``, else ``http://localhost:<AIRFLOW__API__PORT or 8080>``."""
    configured = os.environ.get("AIRFLOW__API__BASE_URL")
    if configured:
        return configured.rstrip("/")
    return f"http://localhost:{os.environ.get('AIRFLOW__API__PORT') or 8080}"


def report_path(dag_id: str, run_id: str) -> str:
    """The report's path in the api-server for a run of ``dag_id``."""
    return f"{PREFIX}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


def report_url(dag_id: str, run_id: str = "latest", base_url: str | None = None) -> str:
    """The URL of a run's report (sign in to the UI first: the report needs Airflow's session);
    run id ``latest`` (the default) is the DAG's newest run.

    >>> report_url("code_instruct", "manual__2026-01-02T00:00:00+00:00", "http://localhost:8080")
    'http://localhost:8080/synthesis/runs/code_instruct/manual__2026-01-02T00%3A00%3A00%2B00%3A00'
    """
    return f"{(base_url or ui_base_url()).rstrip('/')}{report_path(dag_id, run_id)}"


def ui_run_url(dag_id: str, run_id: str, base_url: str | None = None) -> str:
    """The run's page in the Airflow UI, on its "Synthesis report" tab."""
    return f"{(base_url or ui_base_url()).rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/synthesis-run"


class LazyApp:
    """An ASGI app that builds the real one (``factory()``) on its first request.

    Every Airflow component imports the plugins (the scheduler, each task's process); only the
    api-server serves this app. Building it lazily keeps FastAPI's security module, pyarrow and
    the report's templates out of everything else's start-up.
    """

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            self._app = self.factory()
        await self._app(scope, receive, send)


def airflow_app() -> LazyApp:
    """The report app wired to Airflow (``airflow_backend.airflow_app``), built on first use: what
    the plugin mounts."""

    def build() -> Any:
        from infinisynth.ui_report.airflow_backend import airflow_app as build_app

        return build_app()

    return LazyApp(build)
