"""The OpenAI batch API for the scripted server (tests/support/scripted_openai.py): files and batches.

- ``POST /v1/files`` (multipart: ``file``, ``purpose=batch``) stores a JSONL file; ``GET
  /v1/files/{id}/content`` returns a stored (or produced) file.
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``)
  answers every line at once with the server's scripted rules, exactly as the online endpoints
  would (so the same rules serve both), and keeps the answers back until the batch is done:
  ``GET /v1/batches/{id}`` says ``validating``, then ``in_progress``, then (after the configured
  delay) ``completed`` with ``output_file_id`` (status-200 lines), ``error_file_id`` (the rest)
  and ``request_counts``. ``GET /v1/batches`` lists them, newest first.
- ``POST /_control/batches`` with ``{"delay": seconds, "outcome": "failed"|"expired"|"cancelled",
  "times": n}``: how long batches take, and that the next ``n`` batches (default: all) end in
  that state instead (expired: every line in the error file as ``batch_expired``; failed and
  cancelled: no files). ``GET /_control/batches`` counts batches created, lines, polls and ids;
  ``POST /_control/reset`` clears batches too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from typing import Any

from aiohttp import web


class ScriptedBatches:
    def __init__(self, server: Any):
        self.server = server
        self.clear()
        reset = server.reset

        async def reset_all(request: web.Request) -> web.Response:
            self.clear()
            return await reset(request)

        server.reset = reset_all  # the server's /_control/reset clears batches as well

    def clear(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.delay = 0.5
        self.outcome: str | None = None
        self.outcome_times: int | None = None
        self.polls = 0
        self.lines = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/files", self.upload),
            web.get("/v1/files/{file_id}/content", self.content),
            web.post("/v1/batches", self.create),
            web.get("/v1/batches", self.list),
            web.get("/v1/batches/{batch_id}", self.retrieve),
            web.post("/v1/batches/{batch_id}/cancel", self.cancel),
            web.post("/_control/batches", self.control),
            web.get("/_control/batches", self.stats),
        ]

    # -- control -------------------------------------------------------------------------------

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "delay" in body:
            self.delay = float(body["delay"])
        if "outcome" in body:
            self.outcome = body["outcome"]
            self.outcome_times = body.get("times")
        if body.get("finish"):  # the provider ends every batch made so far, now
            for batch in self.batches.values():
                batch["_delay"] = 0.0
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "created": len(self.batches),
                "lines": self.lines,
                "polls": self.polls,
                "ids": list(self.batches),
                "statuses": {batch_id: self._view(batch)["status"] for batch_id, batch in self.batches.items()},
            }
        )

    # -- files ---------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not hasattr(upload, "file") or form.get("purpose") != "batch":
            return _error(400, "a multipart 'file' with purpose=batch is required")
        data = upload.file.read()  # type: ignore[union-attr]
        file_id = self._store(data)
        return web.json_response(_file_object(file_id, len(data), getattr(upload, "filename", "batch.jsonl"), "batch"))

    async def content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["file_id"])
        if data is None:
            return _error(404, "no such file")
        return web.Response(body=data, content_type="application/jsonl")

    def _store(self, data: bytes) -> str:
        file_id = f"file-{next(self.ids):04d}"
        self.files[file_id] = data
        return file_id

    # -- batches -------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        data = self.files.get(body.get("input_file_id", ""))
        if data is None:
            return _error(400, "unknown input_file_id")
        outcome = self.outcome
        if outcome and self.outcome_times is not None:
            self.outcome_times -= 1
            if self.outcome_times <= 0:
                self.outcome, self.outcome_times = None, None
        outputs, errors = [], []
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        self.lines += len(lines)
        for line in lines:
            status, response = self._answer(line)
            entry = {
                "id": f"batch_req_{hashlib.sha1(line['custom_id'].encode()).hexdigest()[:12]}",
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": "req", "body": response},
                "error": None,
            }
            (outputs if status == 200 else errors).append(entry)
        batch_id = f"batch_{next(self.ids):04d}"
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window", "24h"),
            "metadata": body.get("metadata"),
            "created_at": int(time.time()),
            "_created": time.monotonic(),
            "_delay": self.delay,
            "_outcome": outcome,
            "_outputs": outputs,
            "_errors": errors,
            "_total": len(lines),
            "_files": None,
        }
        return web.json_response(self._view(self.batches[batch_id]))

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        self.polls += 1
        return web.json_response(self._view(batch))

    async def list(self, request: web.Request) -> web.Response:
        data = [self._view(b) for b in reversed(self.batches.values())]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "no such batch")
        batch["_outcome"] = batch["_outcome"] or "cancelled"
        batch["_delay"] = 0.0
        return web.json_response(self._view(batch))

    def _view(self, batch: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in batch.items() if not k.startswith("_")}
        elapsed = time.monotonic() - batch["_created"]
        counts = {"total": batch["_total"], "completed": 0, "failed": 0}
        view.update(status="in_progress" if elapsed >= batch["_delay"] / 4 else "validating", request_counts=counts)
        view.update(output_file_id=None, error_file_id=None)
        if elapsed < batch["_delay"]:
            return view
        outcome = batch["_outcome"] or "completed"
        if batch["_files"] is None:  # produced once, when the batch ends
            batch["_files"] = (None, None)
            if outcome == "completed":
                batch["_files"] = (self._jsonl(batch["_outputs"]), self._jsonl(batch["_errors"]))
            elif outcome == "expired":
                expired = [
                    {**e, "response": None, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}
                    for e in batch["_outputs"] + batch["_errors"]
                ]  # fmt: skip
                batch["_files"] = (None, self._jsonl(expired))
        output_file, error_file = batch["_files"]
        view.update(status=outcome, output_file_id=output_file, error_file_id=error_file)
        if outcome == "completed":
            counts.update(completed=len(batch["_outputs"]), failed=len(batch["_errors"]))
        elif outcome == "failed":
            counts.update(failed=batch["_total"])
            view["errors"] = {"object": "list", "data": [{"code": "scripted_failure", "message": "the scripted batch failed"}]}
        return view

    def _jsonl(self, entries: list[dict[str, Any]]) -> str | None:
        return self._store("".join(json.dumps(e) + "\n" for e in entries).encode()) if entries else None

    def _answer(self, line: dict[str, Any]) -> tuple[int, Any]:
        """One batch line answered by the server's scripted rules, as its online endpoint would."""
        answers = sys.modules[type(self.server).__module__]  # scripted_openai (``__main__`` when run as a script)
        url, body = line.get("url", ""), line.get("body") or {}
        chat = url.endswith("/chat/completions")
        prompt = answers.prompt_of(body, chat=chat or not url.endswith("/completions"))
        action = self.server._next_action(prompt)
        if action.get("drop"):  # no connection to drop in a batch: a server error
            action = {"status": 500}
        return self.server.answer(body, prompt, action, chat)


def _file_object(file_id: str, size: int, filename: str, purpose: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename, "purpose": purpose}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "scripted", "code": status}}, status=status)


# -- from tests: the control API through a ScriptedOpenAI handle (tests/support/servers.py) -------


def configure_batches(handle: Any, **control: Any) -> None:
    """``delay=seconds``, ``outcome="failed"|"expired"|"cancelled"``, ``times=n``, ``finish=True`` (end
    the batches made so far now)."""
    handle._call("POST", "/_control/batches", control)


def batch_stats(handle: Any) -> dict[str, Any]:
    return handle._call("GET", "/_control/batches")
