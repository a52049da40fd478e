"""Start the project's test servers as real processes on loopback, and stop them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infinisynth.processes import stop

SUPPORT = Path(__file__).resolve().parent


class ScriptedOpenAI:
    """Handle on a running scripted server: its base URL and its control API."""

    def __init__(self, process: subprocess.Popen[str], port: int):
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def script(self, rules: list[dict[str, Any]]) -> None:
        self._call("POST", "/_control/rules", rules)

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_control/stats")


@contextmanager
def listening_process(argv: list[str], what: str, **popen: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A child process that prints ``LISTENING <port>`` once it serves: (process, port); stopped after."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **popen)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"{what} did not start: {line!r}")
        yield process, int(line.split()[1])
    finally:
        stop(process)


@contextmanager
def scripted_openai(latency: float = 0.0, capacity: int = 64) -> Iterator[ScriptedOpenAI]:
    argv = [sys.executable, str(SUPPORT / "scripted_openai.py"), "--port", "0", "--latency", str(latency), "--capacity", str(capacity)]
    with listening_process(argv, "scripted server") as (process, port):
        yield ScriptedOpenAI(process, port)


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.2)
