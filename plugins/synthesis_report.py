"""The "Synthesis" pages in the Airflow UI: a nav entry, and a report tab on every DAG run.

Thin on purpose: the app and its data live in the library (``infinisynth.ui_report``); this only
mounts the app in the api-server at ``/synthesis`` (behind Airflow's authentication) and adds the
two external views the UI shows in an iframe (``{DAG_ID}``/``{RUN_ID}`` are filled in by the UI).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from infinisynth.ui_report import PREFIX, airflow_app  # light: the app itself is built on its first request


class SynthesisReportPlugin(AirflowPlugin):
    name = "synthesis_report"
    fastapi_apps = [{"app": airflow_app(), "url_prefix": PREFIX, "name": "Synthesis report"}]
    external_views = [
        {"name": "Synthesis", "href": f"{PREFIX}/", "destination": "nav", "url_route": "synthesis", "nav_top_level": True},
        {
            "name": "Synthesis report",
            "href": f"{PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "synthesis-run",
        },
    ]
