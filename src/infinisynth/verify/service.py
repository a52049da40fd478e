"""The lint gate as an HTTP sidecar: the same :class:`LocalGate`, behind FastAPI.

    POST /v1/lint     {"items": [{"id", "language", "code"}]}
                   -> {"results": [{"id", "passed", "findings": [{"tool", "rule", "line", "message"}], "tools": [...]}]}
    POST /v1/execute  {"items": [{"id", "language": "python"|"javascript", "code", "tests"}]}
                   -> {"results": [{"id", "verdict", "detail", "seconds"}]}   (bubblewrap sandbox; 503 without it)
    GET  /healthz     -> {"status", "tools": {tool: version}, "fingerprint", "limits", "sandbox"}

Results come back in request order with the ids as sent. An item whose language the gate has no
checker for gets its own failing verdict (rule ``unsupported_language``) rather than failing the
whole request, so a client built against another version of the language list still gets every
other verdict. Bad requests get a 4xx with a message saying what is wrong: 413 for a body over
``max_body_bytes``, 422 for JSON that is not the shape above or has more than ``max_items`` items.

Run: ``python -m infinisynth.verify.service --host 127.0.0.1 --port 8787`` (``make lint-service``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infinisynth.verify.execute import ExecItem, ExecLimits, Sandbox, SandboxUnavailable
from infinisynth.verify.gate import GateSettings, LocalGate
from infinisynth.verify.languages import supported
from infinisynth.verify.model import GATE_TOOL, Finding, LinterUnavailable, LintItem, LintResult

log = logging.getLogger(__name__)

UNSUPPORTED_LANGUAGE = "unsupported_language"
DEFAULT_PORT = 8787


@dataclass(frozen=True)
class ServiceLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_items: int = 5000
    max_id_chars: int = 512


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    language: str = Field(min_length=1, max_length=64)
    code: str


class _ExecItem(_Item):
    tests: str


class _Request(BaseModel):
    """The body of ``/v1/lint``."""

    model_config = ConfigDict(extra="forbid")
    shape: ClassVar[str] = '{"items": [{"id", "language", "code"}]}'
    items: list[_Item]


class _ExecRequest(BaseModel):
    """The body of ``/v1/execute``."""

    model_config = ConfigDict(extra="forbid")
    shape: ClassVar[str] = '{"items": [{"id", "language", "code", "tests"}]}'
    items: list[_ExecItem]


_Body = TypeVar("_Body", _Request, _ExecRequest)


def result_json(result: LintResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "passed": result.passed,
        "findings": [asdict(f) for f in result.findings],
        "tools": [{"tool": t, "version": v} for t, v in result.tools],
    }


def create_app(
    gate: LocalGate | None = None, limits: ServiceLimits = ServiceLimits(), exec_limits: ExecLimits | None = None, exec_slots: int = 0
) -> FastAPI:
    gate = gate or LocalGate()
    exec_limits = exec_limits or ExecLimits()
    app = FastAPI(title="infinisynth lint gate", version="1", docs_url=None, redoc_url=None)
    runner: dict[str, Sandbox] = {}  # built on first use: a missing bwrap fails /v1/execute only

    def sandbox_runner() -> Sandbox:
        if "sandbox" not in runner:
            runner["sandbox"] = Sandbox(exec_limits, slots=exec_slots or gate.settings.worker_count())
        return runner["sandbox"]

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        tools, missing = {}, {}
        for linter in {id(x): x for group in gate.linters.values() for x in group}.values():
            try:
                tools[linter.tool] = linter.version
            except LinterUnavailable as exc:
                missing[linter.tool] = str(exc)
        try:
            sandboxed = sandbox_runner()
            sandbox_info: dict[str, Any] = {
                "available": True,
                "bubblewrap": sandboxed.version,
                "languages": sorted(sandboxed.languages()),
                "limits": asdict(exec_limits),
            }
        except SandboxUnavailable as exc:
            sandbox_info = {"available": False, "error": str(exc)}
        body = {
            "status": "ok" if not missing else "unavailable",
            "tools": tools,
            "missing": missing,
            "fingerprint": gate.fingerprint(),
            "limits": {**asdict(limits), "max_code_bytes": gate.settings.max_code_bytes},
            "sandbox": sandbox_info,
        }
        return JSONResponse(body, status_code=200 if not missing else 503)

    @app.post("/v1/lint")
    async def lint(request: Request) -> JSONResponse:
        items = (await _read_items(request, _Request, limits)).items
        too_long = next((i for i, item in enumerate(items) if len(item.id) > limits.max_id_chars), None)
        if too_long is not None:
            raise HTTPException(422, f"items.{too_long}.id is longer than {limits.max_id_chars} characters")
        checkable = [
            LintItem(str(n), item.language, item.code)
            for n, item in enumerate(items)
            if supported(item.language) and item.language in gate.linters
        ]
        try:
            checked = {int(r.id): r for r in await gate.check(checkable)}
        except LinterUnavailable as exc:
            raise HTTPException(503, f"a linter is not installed in the service: {exc}") from None
        results = []
        for n, item in enumerate(items):
            result = checked.get(n)
            if result is None:
                unsupported = Finding(GATE_TOOL, UNSUPPORTED_LANGUAGE, 0, f"the gate has no checker for language {item.language!r}")
                result = LintResult(item.id, False, (unsupported,))
            results.append(result_json(LintResult(item.id, result.passed, result.findings, result.tools)))
        return JSONResponse({"results": results})

    @app.post("/v1/execute")
    async def execute(request: Request) -> JSONResponse:
        parsed = await _read_items(request, _ExecRequest, limits)
        try:
            sandboxed = sandbox_runner()
        except SandboxUnavailable as exc:
            raise HTTPException(503, f"no sandbox, so nothing is run: {exc}") from None
        languages = sandboxed.languages()
        unsupported = next((i for i, item in enumerate(parsed.items) if item.language not in languages), None)
        if unsupported is not None:
            raise HTTPException(422, f"items.{unsupported}.language: only {', '.join(sorted(languages))} solutions can be executed")
        done = await sandboxed.run([ExecItem(item.id, item.language, item.code, item.tests) for item in parsed.items])
        return JSONResponse({"results": [asdict(result) for result in done]})

    return app


async def _read_items(request: Request, model: type[_Body], limits: ServiceLimits) -> _Body:
    """The request's body as ``model`` (a list of ``items``), or 413 (over the byte cap) or 422
    (not that shape, or more items than one request may carry)."""
    request_body = await _read_capped(request, limits.max_body_bytes)
    try:
        parsed = model.model_validate_json(request_body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        raise HTTPException(422, f"the body must be {model.shape} ({problems})") from None
    if len(parsed.items) > limits.max_items:
        raise HTTPException(
            422, f"{len(parsed.items)} items in one request; the service takes at most {limits.max_items}: split the request"
        )
    return parsed


async def _read_capped(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``cap`` (declared or streamed)."""
    declared = request.headers.get("content-length")
    too_large = HTTPException(413, f"the request body is over the limit of {cap} bytes: send fewer or smaller items per request")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "Content-Length is not a number")
        if int(declared) > cap:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise too_large
    return bytes(body)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the static lint gate over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=0, help="linter processes at once (0 = the CPUs available)")
    parser.add_argument("--max-code-bytes", type=int, default=GateSettings.max_code_bytes)
    parser.add_argument("--timeout-scale", type=float, default=1.0)
    parser.add_argument("--max-body-bytes", type=int, default=ServiceLimits.max_body_bytes)
    parser.add_argument("--max-items", type=int, default=ServiceLimits.max_items)
    parser.add_argument("--exec-wall-seconds", type=float, default=ExecLimits.wall_seconds, help="/v1/execute: wall time per run")
    parser.add_argument("--exec-cpu-seconds", type=int, default=ExecLimits.cpu_seconds, help="/v1/execute: CPU time per run")
    parser.add_argument("--exec-memory-mb", type=int, default=ExecLimits.memory_mb, help="/v1/execute: address space per process")
    parser.add_argument("--exec-slots", type=int, default=0, help="/v1/execute: runs at once (0 = the CPUs available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gate = LocalGate(GateSettings(workers=args.workers, max_code_bytes=args.max_code_bytes, timeout_scale=args.timeout_scale))
    exec_limits = ExecLimits(wall_seconds=args.exec_wall_seconds, cpu_seconds=args.exec_cpu_seconds, memory_mb=args.exec_memory_mb)
    app = create_app(gate, ServiceLimits(max_body_bytes=args.max_body_bytes, max_items=args.max_items), exec_limits, args.exec_slots)
    log.info("lint gate %s on http://%s:%d", json.dumps({"workers": gate.settings.worker_count()}), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
