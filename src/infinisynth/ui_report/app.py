"""The report's web app: a FastAPI app the Airflow plugin mounts at ``/synthesis`` in the api-server.

Pages (jinja2, autoescaped) show the numbers as tables; the charts are drawn in the browser by
plotly.js (shipped in the ``plotly`` wheel, served from here) from the JSON API beside them:

``GET /``                                              the pipelines' recent runs, each linking to its report
``GET /runs/{dag_id}/{run_id}``                         one run's report (run id ``latest``: the newest run)
``GET /runs/{dag_id}/{run_id}/rejected/{stage}?reason=`` a sample of a stage's rejected rows (of a reason)
``GET /api/runs/{dag_id}/{run_id}``                     the report as JSON (what the charts read)
``GET /api/runs/{dag_id}/{run_id}/rejected/{stage}``    the sample as JSON

Every route needs an authenticated user (``backend.user``, a FastAPI dependency: 401/403 before
any data is read), and a run's routes need read access to its DAG's runs (``backend.can_read``).
Airflow's side (who the user is, what they may read, the run, its task instances, the store) is a
:class:`Backend`, so the app runs under test without Airflow: ``infinisynth.ui_report.airflow``
builds the real one.
"""

# No `from __future__ import annotations` here: FastAPI must see the closure's `User` type itself.
import importlib.resources
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from infinisynth.storage import StorageError, Store
from infinisynth.ui_report import data

HERE = Path(__file__).resolve().parent


@dataclass
class RunInfo:
    """What Airflow knows of a DAG run: its conf (for ``storage_root``), logical date, task instances."""

    dag_id: str
    run_id: str
    logical_date: datetime | str | None
    conf: dict[str, Any] = field(default_factory=dict)
    state: str | None = None
    task_instances: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Backend:
    """Airflow's side of the app. ``user`` is a FastAPI dependency returning the user (raising
    401/403 for none); ``can_read(user, dag_id)`` says whether they may read that DAG's runs;
    ``run(dag_id, run_id)`` finds a run (None: no such run); ``recent_runs(dag_ids, limit)``
    lists runs as :class:`RunInfo` without task instances, newest first; ``store(root)`` opens a
    storage root (None: the default one)."""

    user: Callable[..., Any]
    can_read: Callable[[Any, str], bool]
    run: Callable[[str, str], RunInfo | None]
    recent_runs: Callable[[Sequence[str], int], list[RunInfo]]
    store: Callable[[str | None], Store]


def plotly_js() -> Path:
    """plotly.min.js from the ``plotly`` package (no CDN: the UI works offline)."""
    return Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))


def create_app(backend: Backend) -> FastAPI:
    User = Annotated[Any, Depends(backend.user)]  # the authenticated user; 401/403 before anything else
    app = FastAPI(
        title="Synthesis report",
        dependencies=[Depends(backend.user)],  # every route, static files too: no data without a session
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    templates.filters["url"] = lambda value: quote(str(value), safe="")

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = templates.get_template(name).render(base=base, **context)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, **PRIVATE})

    def load(user: Any, dag_id: str, run_id: str) -> tuple[RunInfo, Store, data.RunRef]:
        if dag_id not in data.PIPELINES:
            raise HTTPException(404, f"{dag_id} is not a synthesis pipeline (one of {', '.join(data.PIPELINES)})")
        if not backend.can_read(user, dag_id):
            raise HTTPException(403, "Forbidden")
        run = backend.run(dag_id, run_id)
        if run is None and run_id == LATEST:  # the DAG's newest run (what `make demo` links to)
            newest = backend.recent_runs([dag_id], 1)
            run = backend.run(dag_id, newest[0].run_id) if newest else None
        if run is None:
            raise HTTPException(404, f"no run {run_id} of {dag_id}")
        store = backend.store(run.conf.get("storage_root") or None)
        try:
            ref = data.resolve_run(store, dag_id, run.run_id, run.logical_date)
        except data.UnknownRun as exc:
            raise HTTPException(404, str(exc)) from None
        return run, store, ref

    def report_of(user: Any, dag_id: str, run_id: str) -> dict[str, Any]:
        run, store, ref = load(user, dag_id, run_id)
        try:
            report = data.run_report(store, ref, run.task_instances)
        except StorageError as exc:
            raise HTTPException(502, data.redact(str(exc))) from None
        report["state"] = run.state
        return report

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: User) -> HTMLResponse:
        readable = [d for d in data.PIPELINES if backend.can_read(user, d)]
        runs = backend.recent_runs(readable, 60)
        return page(request, "index.html", pipelines=readable, runs=runs)

    @app.get("/api/runs/{dag_id}/{run_id}")
    def report_json(dag_id: str, run_id: str, user: User) -> JSONResponse:
        return JSONResponse(report_of(user, dag_id, run_id), headers=PRIVATE)

    @app.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def report_page(request: Request, dag_id: str, run_id: str, user: User) -> HTMLResponse:
        report = report_of(user, dag_id, run_id)
        return page(request, "report.html", report=report, paper=data.PAPER_COMPLEXITY)

    @app.get("/api/runs/{dag_id}/{run_id}/rejected/{stage}")
    def rejected_json(dag_id: str, run_id: str, stage: str, user: User, reason: str | None = None) -> JSONResponse:
        _, store, ref = load(user, dag_id, run_id)
        return JSONResponse(data.rejected_sample(store, ref.pipeline, ref.ds, _stage(stage), reason), headers=PRIVATE)

    @app.get("/runs/{dag_id}/{run_id}/rejected/{stage}", response_class=HTMLResponse)
    def rejected_page(request: Request, dag_id: str, run_id: str, stage: str, user: User, reason: str | None = None) -> HTMLResponse:
        _, store, ref = load(user, dag_id, run_id)
        sample = data.rejected_sample(store, ref.pipeline, ref.ds, _stage(stage), reason)
        return page(request, "rejected.html", dag_id=dag_id, run_id=run_id, ds=ref.ds, sample=sample)

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "private, max-age=86400"})
        if name not in STATIC:
            raise HTTPException(404)
        return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    return app


PRIVATE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}  # run data: never in a shared cache
LATEST = "latest"  # as a run id: the DAG's newest run
STATIC = {"report.js": "text/javascript", "report.css": "text/css"}
# Scripts only from here (no inline script, no eval of data); plotly needs inline styles.
CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'"


def _stage(stage: str) -> str:
    """A stage name as a path segment under the pipeline: nothing that climbs out of it."""
    if not stage or "/" in stage or stage.startswith(".") or stage.startswith("_"):
        raise HTTPException(404, "no such stage")
    return stage
