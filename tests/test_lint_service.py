"""The lint sidecar as a real process on loopback: raw HTTP contract, errors, and the client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from infinisynth.processes import free_port, stop
from infinisynth.verify.client import LintServiceClient, LintServiceError
from infinisynth.verify.gate import LocalGate
from infinisynth.verify.model import BINARY_CODE, CODE_TOO_LARGE, LintItem
from tests.support.servers import wait_for_http

REPO = Path(__file__).resolve().parents[1]
MAX_BODY = 200_000
MAX_ITEMS = 50


def start_service(port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "infinisynth.verify.service", "--host", "127.0.0.1", "--port", str(port), *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextmanager
def running_service(*extra: str) -> Iterator[tuple[str, int]]:
    """The service as a real process on a free loopback port: (base URL, port)."""
    port = free_port()
    process = start_service(port, *extra)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", timeout=60)
        yield url, port
    finally:
        stop(process, timeout=20)


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with running_service("--max-body-bytes", str(MAX_BODY), "--max-items", str(MAX_ITEMS)) as (url, _):
        yield url


def test_healthz_names_every_tool_with_its_version(service):
    body = httpx.get(f"{service}/healthz").json()
    assert body["status"] == "ok" and body["missing"] == {}
    assert set(body["tools"]) == {"pylint", "eslint", "checkstyle", "javac", "clang-tidy", "sqlfluff", "tree-sitter"}
    assert all(body["tools"].values())
    assert body["limits"]["max_body_bytes"] == MAX_BODY and body["limits"]["max_items"] == MAX_ITEMS
    assert body["fingerprint"] == LocalGate().fingerprint()  # the same gate as in-process


def test_lint_answers_in_request_order_with_the_ids_as_sent(service):
    items = [
        {"id": "z-last", "language": "python", "code": "print(undefined_name)\n"},
        {"id": "a-first", "language": "javascript", "code": "console.log(1);\n"},
        {"id": "../../etc/passwd", "language": "sql", "code": "SELEC a FROM WHERE;"},
        {"id": "dup", "language": "go", "code": "package main\nfunc main() {}\n"},
        {"id": "dup", "language": "klingon", "code": "Qapla'"},
        {"id": "nul", "language": "python", "code": "x = 1\u0000"},
    ]
    response = httpx.post(f"{service}/v1/lint", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [i["id"] for i in items]
    assert [r["passed"] for r in results] == [False, True, False, True, False, False]
    assert results[0]["findings"] == [
        {"tool": "pylint", "rule": "undefined-variable", "line": 1, "message": "Undefined variable 'undefined_name'"}
    ]
    assert results[2]["findings"][0]["tool"] == "sqlfluff"
    assert results[4]["findings"][0]["rule"] == "unsupported_language"
    assert results[5]["findings"][0]["rule"] == BINARY_CODE
    assert {t["tool"] for t in results[0]["tools"]} == {"pylint"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "the body must be"),
        (json.dumps({"items": [{"id": "x", "language": "python"}]}).encode(), 422, "items.0.code"),
        (json.dumps({"items": [{"id": "x", "language": "python", "code": 3}]}).encode(), 422, "items.0.code"),
        (json.dumps({"items": "all of them"}).encode(), 422, "items"),
        (json.dumps({"things": []}).encode(), 422, "items"),
        (
            json.dumps({"items": [{"id": str(n), "language": "python", "code": "x=1"} for n in range(MAX_ITEMS + 1)]}).encode(),
            422,
            "at most 50",
        ),
        (json.dumps({"items": [{"id": "x", "language": "python", "code": "x = 1\n" * (MAX_BODY // 6)}]}).encode(), 413, "over the limit"),
    ],
)
def test_bad_requests_get_a_clear_4xx(service, body, status, message):
    response = httpx.post(f"{service}/v1/lint", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_a_streamed_body_over_the_limit_is_refused_without_a_content_length(service):
    def chunks():
        yield b'{"items": [{"id": "x", "language": "python", "code": "'
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{service}/v1/lint", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit" in response.json()["detail"]
    assert httpx.get(f"{service}/healthz").status_code == 200  # still serving


def test_the_client_splits_big_checks_and_agrees_with_the_local_gate(service):
    items = [
        LintItem(f"py-{n}", "python", f"def f_{n}(x):\n    return x + {'y' if n % 3 == 0 else n}\n" + "# padding\n" * 400)
        for n in range(60)
    ]
    items += [
        LintItem("js", "javascript", "missingFn();\n"),
        LintItem("latin1", "python", "print('caf\xe9')".encode("latin-1")),
        LintItem("too-big", "python", "x = 1\n" * (MAX_BODY // 5)),
        LintItem("surrogate", "python", "print('\ud800')\n"),  # JSON cannot carry it: judged here, as the gate would
    ]
    client = LintServiceClient(service)
    remote = asyncio.run(client.check(items))
    assert [r.id for r in remote] == [i.id for i in items]
    local = asyncio.run(LocalGate().check(items[:61]))
    assert [(r.passed, r.findings) for r in remote[:61]] == [(r.passed, r.findings) for r in local]
    assert sum(not r.passed for r in remote[:60]) == 20
    assert remote[61].findings[0].rule == BINARY_CODE
    assert remote[62].findings[0].rule == CODE_TOO_LARGE
    assert remote[63].findings == asyncio.run(LocalGate().check([items[63]]))[0].findings
    assert client.fingerprint() == LocalGate().fingerprint()


def test_the_client_retries_until_the_service_is_up_and_reports_4xx(tmp_path):
    port = free_port()
    client = LintServiceClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.05)
    with pytest.raises(LintServiceError, match="failed after 2 attempts"):
        client.fingerprint()

    # The service starts while the client is still retrying: the check goes through.
    slow_client = LintServiceClient(f"http://127.0.0.1:{port}", retries=8, backoff=0.5)
    process = start_service(port, "--max-items", "3")
    try:
        results = asyncio.run(slow_client.check([LintItem(str(n), "python", f"print({n})\n") for n in range(7)]))
        assert [r.passed for r in results] == [True] * 7  # in three requests of at most 3 items
        with pytest.raises(LintServiceError, match="HTTP 422"):
            _post_invalid(slow_client)
    finally:
        stop(process, timeout=20)


def _post_invalid(client: LintServiceClient) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as http:
            await client._post(http, [{"id": "x", "language": "python"}])  # no code: the service says 422

    asyncio.run(go())


def test_empty_code_too_large_code_and_too_deep_nesting_fail_with_their_reasons_over_http(service):
    comments = {
        "python": "# TODO\n",
        "javascript": "// TODO\n",
        "jsx": "/* TODO */",
        "typescript": "/** TODO */\n",
        "tsx": "// TODO",
        "java": "// class Main {}\n",
        "c": "/* int main(void); */\n",
        "cpp": "// int main();\n",
        "sql": "-- SELECT 1;\n",
        "go": "// package main\n",
        "rust": "// fn main() {}\n",
        "shell": "# echo hi\n",
    }
    items = []
    for language, comment in comments.items():
        items += [
            {"id": f"{language}:empty", "language": language, "code": ""},
            {"id": f"{language}:blank", "language": language, "code": "  \n\t\n"},
            {"id": f"{language}:comment", "language": language, "code": comment},
        ]
    items += [
        {"id": "deep", "language": "cpp", "code": "int x = " + "(" * 300 + "1" + ")" * 300 + ";\n"},
        {"id": "big", "language": "python", "code": "#" * 60_000 + "\n"},  # over the service's 50,000
        {"id": "ok", "language": "python", "code": "# a comment\nprint(1)\n"},
    ]
    with running_service("--max-code-bytes", "50000") as (url, _):
        response = httpx.post(f"{url}/v1/lint", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    for language in comments:
        for kind in ("empty", "blank", "comment"):
            result = results[f"{language}:{kind}"]
            assert not result["passed"], (language, kind)
            assert [(f["tool"], f["rule"]) for f in result["findings"]] == [("gate", "empty_code")], (language, kind, result)
    assert [(f["tool"], f["rule"]) for f in results["deep"]["findings"]] == [("gate", "nesting_too_deep")]
    assert [f["rule"] for f in results["big"]["findings"]] == [CODE_TOO_LARGE]
    assert results["ok"]["passed"]

    # The client gives the same verdicts as the local gate.
    lint_items = [LintItem(item["id"], item["language"], item["code"]) for item in items if item["id"] != "big"]
    remote = asyncio.run(LintServiceClient(service).check(lint_items))
    local = asyncio.run(LocalGate().check(lint_items))
    assert [(r.passed, r.findings) for r in remote] == [(r.passed, r.findings) for r in local]
    assert all(r.gate_reason == "empty_code" for r in remote[: 3 * len(comments)])


def test_execute_runs_solutions_with_their_tests_in_the_sandbox(service):
    assert httpx.get(f"{service}/healthz").json()["sandbox"]["available"] is True
    solution = "def add(a, b):\n    return a + b\n"
    items = [
        {"id": "pass", "language": "python", "code": solution, "tests": "assert add(2, 3) == 5\n"},
        {"id": "fail", "language": "python", "code": solution, "tests": "assert add(2, 3) == 5\nassert add(2, 2) == 5\n"},
        {"id": "escape", "language": "python", "code": f"print(open({str(REPO / 'pyproject.toml')!r}).read())\n", "tests": ""},
        {"id": "flood", "language": "python", "code": "while True:\n    print('x' * 10000)\n", "tests": ""},
    ]
    response = httpx.post(f"{service}/v1/execute", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["pass", "fail", "escape", "flood"]
    assert [r["verdict"] for r in results] == ["passed", "failed", "error", "killed"]
    assert results[1]["detail"] == "tests.py line 2: assert add(2, 2) == 5"
    assert "FileNotFoundError" in results[2]["detail"]

    # The client: same verdicts, ids as given.
    from infinisynth.verify.execute import ExecItem

    client_items = [ExecItem(f"c-{item['id']}", item["language"], item["code"], item["tests"]) for item in items[:2]]
    answered = asyncio.run(LintServiceClient(service).execute(client_items))
    assert [(r.id, r.verdict) for r in answered] == [("c-pass", "passed"), ("c-fail", "failed")]

    # JavaScript runs too (node's runner); a language without one is refused, not run some other way.
    assert httpx.get(f"{service}/healthz").json()["sandbox"]["languages"] == ["javascript", "python"]
    js = {
        "id": "js",
        "language": "javascript",
        "code": "function add(a, b) { return a + b; }\n",
        "tests": "assert.strictEqual(add(2, 2), 5);\n",
    }
    answered_js = httpx.post(f"{service}/v1/execute", json={"items": [js]}, timeout=120).json()["results"]
    assert answered_js[0]["verdict"] == "failed" and answered_js[0]["detail"].startswith(
        "tests.js line 1: assert.strictEqual(add(2, 2), 5);"
    )
    bad = httpx.post(f"{service}/v1/execute", json={"items": [{"id": "x", "language": "ruby", "code": "", "tests": ""}]})
    assert bad.status_code == 422 and "only javascript, python" in bad.json()["detail"]
    missing = httpx.post(f"{service}/v1/execute", json={"items": [{"id": "x", "language": "python", "code": ""}]})
    assert missing.status_code == 422 and "items.0.tests" in missing.json()["detail"]
