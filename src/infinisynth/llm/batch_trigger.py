"""The trigger a batch-mode model task defers to: polls one provider batch until it has ended.

It runs in Airflow's triggerer (or in-process under ``airflow dags test``), so this module imports
only Airflow's trigger base at import time; the OpenAI client is loaded when the trigger runs. Its
arguments hold no secret (they are stored in the metadata DB and shown in logs): the API key is
looked up where it runs, from the role's connections (``llm_<role>``, its fallbacks,
``llm_default``), as :func:`infinisynth.settings.role_config` does in the task.

The event only wakes the task: the task polls the batch once more itself and reads the results
(:meth:`infinisynth.llm.batch.ShardBatches.settle`), so an event of a trigger that gave up (no
key, an endpoint that keeps failing) never loses the batch: the task defers again.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

TERMINAL = ("completed", "failed", "expired", "cancelled")
# Connections tried before llm_default, as infinisynth.settings.ROLE_FALLBACKS says (kept here so
# the triggerer does not import the library's settings and storage).
ROLE_FALLBACKS: dict[str, tuple[str, ...]] = {"oracle": ("judge",)}
MAX_POLL_FAILURES = 20  # in a row: then the task is woken to look for itself


class BatchTrigger(BaseTrigger):
    """Fires once ``batch_id`` at ``base_url`` is completed, failed, expired or cancelled."""

    def __init__(self, batch_id: str, base_url: str, role: str, poll_seconds: float = 60.0):
        super().__init__()
        self.batch_id = batch_id
        self.base_url = base_url
        self.role = role
        self.poll_seconds = float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = {"batch_id": self.batch_id, "base_url": self.base_url, "role": self.role, "poll_seconds": self.poll_seconds}
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The OpenAI client takes most of a second to import: not on the triggerer's event loop.
        batch = await asyncio.to_thread(importlib.import_module, "infinisynth.llm.batch")
        batch_status = batch.batch_status
        api_key = await self._api_key()
        started, failures = time.monotonic(), 0
        while True:
            # The task looked at the batch just before deferring: wait before each look, the first
            # too. A batch found ended the instant the task deferred fires the trigger before the
            # deferring task's exit has reached the scheduler, which then takes the resumed run for
            # a stray and fails it (an Airflow race, seen under load: a needless retry).
            await asyncio.sleep(self.poll_seconds)
            try:
                found = await batch_status(self.base_url, api_key, self.batch_id)
            except Exception as exc:  # the endpoint's trouble: keep polling, within a bound
                failures += 1
                self.log.warning("polling batch %s failed (%d in a row): %s", self.batch_id, failures, type(exc).__name__)
                if failures >= MAX_POLL_FAILURES:
                    yield TriggerEvent({"batch_id": self.batch_id, "status": "unknown", "error": type(exc).__name__})
                    return
            else:
                failures = 0
                status = found.get("status")
                if status in TERMINAL:
                    self.log.info("batch %s %s after %.0fs", self.batch_id, status, time.monotonic() - started)
                    yield TriggerEvent({"batch_id": self.batch_id, "status": status, "request_counts": found.get("request_counts")})
                    return
                self.log.info("batch %s is %s: %s", self.batch_id, status, found.get("request_counts"))

    async def _api_key(self) -> str:
        """The role's API key, from the first of its connections that exists (as the task found it)."""
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        for conn_id in [f"llm_{r}" for r in (self.role, *ROLE_FALLBACKS.get(self.role, ()))] + ["llm_default"]:
            try:
                conn = await Connection.async_get(conn_id)
            except AirflowNotFoundException:
                continue
            return str(conn.password or "sk-no-key-required")
        return "sk-no-key-required"
