"""Where data lives and how each LLM role is reached, resolved from connections and run settings.

Roles come from connections named ``llm_<role>`` (falling back to ``llm_default``): ``host`` is the
OpenAI-compatible base URL (``.../v1``), ``password`` the API key, ``extra`` any
:class:`~infinisynth.llm.RoleConfig` field (``model``, ``structured_output``, ``max_concurrency``,
``requests_per_minute``, ...). Run settings (DAG Params) override connection settings.

A role's limits hold across every task and worker (:mod:`infinisynth.llm.limits`): their shared
store is the role connection's ``extra.limits_url``, else ``INFINISYNTH_LIMITS_URL`` (e.g. the
Celery stack's ``redis://redis:6379/1``), else a SQLite file in ``~/.cache/infinisynth/`` shared by
the processes of one machine.

Object storage for ``s3://`` roots comes from the connection named by ``INFINISYNTH_STORAGE_CONN``
(default ``infinisynth_s3``): ``login``/``password`` are the access key pair, ``extra.endpoint_url``
points at MinIO or any S3-compatible server.

The static verification gate runs in-process unless ``INFINISYNTH_LINT_URL`` or the connection
``lint_service`` names the lint sidecar (``make lint-service``).

The library takes a ``lookup(conn_id) -> dict | None`` so it runs without Airflow; inside tasks
the DAG layer passes Airflow's own connection lookup (secrets backends included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infinisynth.llm import RoleConfig
from infinisynth.prompts import PROJECT_ROOT
from infinisynth.storage import Store

ConnectionLookup = Callable[[str], "dict[str, Any] | None"]

DEFAULT_STORAGE_CONN = "infinisynth_s3"


def default_root() -> str:
    return os.environ.get("INFINISYNTH_ROOT") or f"file://{Path(PROJECT_ROOT, 'data').resolve()}"


def env_connection(conn_id: str) -> dict[str, Any] | None:
    """A connection from ``AIRFLOW_CONN_<ID>`` in JSON form, for use outside Airflow."""
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"AIRFLOW_CONN_{conn_id.upper()} must be a JSON connection ({exc.msg})") from None
    extra = value.get("extra") or {}
    value["extra"] = json.loads(extra) if isinstance(extra, str) else extra
    return value


def connection_fields(conn: Any) -> dict[str, Any]:
    """An Airflow connection (the task SDK's or the api-server's model) as the plain dict a lookup returns."""
    return {
        "host": conn.host,
        "login": conn.login,
        "password": conn.password,
        "port": conn.port,
        "schema": conn.schema,
        "extra": conn.extra_dejson,
    }


# Roles that borrow another role's connection before ``llm_default``: the oracle judges answers,
# so an installation with a judge model but no oracle uses the judge; the follow-up turns of a
# conversation are the generator's unless they have a connection (and penalties) of their own.
ROLE_FALLBACKS: dict[str, tuple[str, ...]] = {"oracle": ("judge",), "followup": ("generator",)}


def role_config(role: str, lookup: ConnectionLookup = env_connection, **overrides: Any) -> RoleConfig:
    """The settings for ``role``: its connection, else its fallbacks', else ``llm_default``, then ``overrides``."""
    names = [f"llm_{r}" for r in (role, *ROLE_FALLBACKS.get(role, ()))] + ["llm_default"]
    conn = next((found for found in map(lookup, names) if found is not None), None)
    if conn is None:
        raise LookupError(
            f"no connection for the {role!r} role: define one of {names} "
            "(host = OpenAI-compatible base URL, password = API key, extra.model = model id)"
        )
    extra = dict(conn.get("extra") or {})
    base_url = extra.pop("base_url", None) or _base_url(conn)
    values: dict[str, Any] = {"role": role, "base_url": base_url, **extra}
    if conn.get("password"):
        values["api_key"] = conn["password"]
    values.update({k: v for k, v in overrides.items() if v not in (None, "")})
    if "model" not in values:
        raise LookupError(f"the connection for the {role!r} role names no model (set extra.model)")
    return RoleConfig(**values)


def store_for(root: str | None = None, lookup: ConnectionLookup = env_connection) -> Store:
    """The store at ``root`` (default: ``INFINISYNTH_ROOT`` or ``data/`` in the project)."""
    root = root or default_root()
    options: dict[str, Any] = {}
    if root.startswith("s3://"):
        conn = lookup(os.environ.get("INFINISYNTH_STORAGE_CONN", DEFAULT_STORAGE_CONN))
        if conn is not None:
            extra = dict(conn.get("extra") or {})
            if conn.get("login"):
                options["key"] = conn["login"]
            if conn.get("password"):
                options["secret"] = conn["password"]
            client_kwargs = {k: extra[k] for k in ("endpoint_url", "region_name") if extra.get(k)}
            if client_kwargs:
                options["client_kwargs"] = client_kwargs
    return Store(root, options)


def lint_service_url(lookup: ConnectionLookup = env_connection) -> str | None:
    """The lint sidecar's base URL: ``INFINISYNTH_LINT_URL``, else the ``lint_service`` connection
    (``host``, or ``schema``/``host``/``port``), else None: lint in-process."""
    url = os.environ.get("INFINISYNTH_LINT_URL")
    conn = None if url else lookup("lint_service")
    if conn is not None:
        url = (conn.get("host") or "").strip()
        if url and "://" not in url:
            port = f":{conn['port']}" if conn.get("port") else ""
            url = f"{conn.get('schema') or 'http'}://{url}{port}"
    return url.rstrip("/") if url else None


def _base_url(conn: dict[str, Any]) -> str:
    host = (conn.get("host") or "").strip()
    if not host:
        raise LookupError("an LLM connection needs its base URL in 'host' or extra.base_url")
    if "://" not in host:
        scheme = conn.get("schema") or "http"
        port = f":{conn['port']}" if conn.get("port") else ""
        host = f"{scheme}://{host}{port}/v1"
    return host
