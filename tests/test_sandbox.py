"""Dynamic verification in the bubblewrap sandbox: verdicts, and a hostile suite that must stay inside.

Every test runs real code in real bubblewrap sandboxes (nothing is stubbed). Limits are tight so
hostile runs end quickly; each still has to come back with a verdict, and the host (this process,
its files, its other runs) must not notice.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infinisynth.verify import execute
from infinisynth.verify.execute import ERROR, FAILED, KILLED, PASSED, TIMEOUT, ExecItem, ExecLimits, Sandbox, SandboxUnavailable

REPO = Path(__file__).resolve().parents[1]
LIMITS = ExecLimits(wall_seconds=6.0, cpu_seconds=3, memory_mb=256, max_processes=16, max_output_bytes=64 * 1024)
SLACK = 15.0  # seconds beyond the wall limit a verdict may take (start-up, reaping) on a loaded machine


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS, slots=2)


def run(sandbox: Sandbox, items: list[ExecItem]) -> dict[str, execute.ExecResult]:
    results = asyncio.run(sandbox.run(items))
    assert [r.id for r in results] == [i.id for i in items]
    return {r.id: r for r in results}


def sandbox_processes(sandbox: Sandbox, wait: float = 10.0) -> list[int]:
    """Processes of the sandbox users still running on the host (zombies, already dead, aside),
    after giving the kernel up to ``wait`` seconds to finish killing a PID namespace."""
    uids = {str(uid) for uid in sandbox.uids}
    deadline = time.monotonic() + wait
    while True:
        alive = []
        for entry in Path("/proc").iterdir():
            try:
                status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            except (OSError, ValueError):
                continue
            if (
                status.get("Uid", "").split()[:1]
                and status["Uid"].split()[0] in uids
                and not status.get("State", "").strip().startswith("Z")
            ):
                alive.append(int(entry.name))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@dataclass
class Host:
    """What a hostile run must leave alone: a canary file, a secret in the environment, and a
    loopback listener nothing may reach."""

    tmp_path: Path
    canary: Path
    listener: socket.socket

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def assert_untouched(self, sandbox: Sandbox) -> None:
        """Files intact, no connection reached the listener, no process of the sandbox left."""
        assert self.canary.read_text() == "still here" and self.tmp_path.exists()
        with pytest.raises(BlockingIOError):
            self.listener.accept()
        assert sandbox_processes(sandbox) == []


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    canary = tmp_path / "CANARY"
    canary.write_text("still here")
    monkeypatch.setenv("INFINISYNTH_TEST_SECRET", "hunter2-secret")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        yield Host(tmp_path, canary, listener)


def test_passed_failed_and_error_verdicts_name_what_happened(sandbox):
    solution = "def add(a, b):\n    return a + b\n"
    items = [
        ExecItem("pass", "python", solution, "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"),
        ExecItem("fail", "python", solution, "assert add(1, 2) == 3\nassert add(2, 2) == 5, 'two and two'\nassert add(0, 0) == 1\n"),
        ExecItem("raise", "python", "def add(a, b):\n    return a + c\n", "assert add(1, 2) == 3\n"),
        ExecItem("syntax", "python", "def add(a, b)\n    return a + b\n", "assert add(1, 2) == 3\n"),
        ExecItem("exit-early", "python", "import os\nos._exit(0)\n", "assert False\n"),
        ExecItem(
            "fake-pass",
            "python",
            'print(\'@@infinisynth-tests \' + \'0\' * 32 + \' {"status": "passed", "detail": ""}\')\n',
            "assert 1 == 2\n",
        ),
    ]
    results = run(sandbox, items)
    assert (results["pass"].verdict, results["pass"].detail) == (PASSED, "every test ran")
    assert results["fail"].verdict == FAILED
    assert results["fail"].detail == "tests.py line 2: assert add(2, 2) == 5, 'two and two': two and two"
    assert results["raise"].verdict == ERROR and "NameError" in results["raise"].detail and "solution.py line 2" in results["raise"].detail
    assert results["syntax"].verdict == ERROR and "SyntaxError" in results["syntax"].detail
    assert results["exit-early"].verdict == ERROR and "before the tests did" in results["exit-early"].detail
    assert results["fake-pass"].verdict == FAILED  # a printed look-alike of the harness's line does not count


def test_the_hostile_suite_gets_verdicts_within_bounds_and_the_host_is_untouched(sandbox, host, tmp_path):
    canary, port = host.canary, host.port
    outside = tmp_path / "written-from-inside"
    project_file = REPO / "pyproject.toml"

    hostile = {
        "fork-bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", {TIMEOUT, KILLED, ERROR}),
        "infinite-loop": ("while True:\n    pass\n", {TIMEOUT}),
        "memory-bomb": ("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n", {KILLED}),
        "print-1gb": ("import sys\nchunk = 'x' * 65536\nfor _ in range(16384):\n    sys.stdout.write(chunk)\n", {KILLED}),
        "print-1gb-stderr": ("import sys\nchunk = 'x' * 65536\nfor _ in range(16384):\n    sys.stderr.write(chunk)\n", {KILLED}),
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", {ERROR}),
        "internet": ("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\n", {ERROR}),
        "project-file": (f"raise RuntimeError(open({str(project_file)!r}).read()[:80])\n", {ERROR}),
        "env-secret": ("import os\nraise RuntimeError(os.environ.get('INFINISYNTH_TEST_SECRET', 'no secret here'))\n", {ERROR}),
        "write-outside": (f"open({str(outside)!r}, 'w').write('escaped')\n", {ERROR}),
        "write-system": ("open('/usr/lib/escaped', 'w').write('escaped')\n", {ERROR}),
        "kill-parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n", {PASSED, KILLED, ERROR}),
        "delete-canary": (
            f"import os, shutil\nfor path in ({str(canary)!r},):\n    try:\n        os.remove(path)\n    except OSError as exc:\n        print(exc)\n"
            f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\nraise RuntimeError(str(os.path.exists({str(canary)!r})))\n",
            {ERROR},
        ),
    }
    items = [ExecItem(name, "python", code, "assert True\n") for name, (code, _) in hostile.items()]
    items.append(ExecItem("honest", "python", "def double(x):\n    return 2 * x\n", "assert double(21) == 42\n"))
    results = run(sandbox, items)

    for name, (_, allowed) in hostile.items():
        result = results[name]
        assert result.verdict in allowed, (name, result)
        assert result.seconds <= LIMITS.wall_seconds + SLACK, (name, result)
    assert results["honest"].verdict == PASSED  # its neighbours' behaviour cost it nothing
    assert "TimeoutError" not in results["network"].detail  # refused at once: there is no network
    assert "FileNotFoundError" in results["project-file"].detail  # the project is not there
    assert results["env-secret"].detail.startswith("RuntimeError: no secret here")
    assert "Read-only file system" in results["write-system"].detail or "Permission denied" in results["write-system"].detail
    assert results["delete-canary"].detail.startswith("RuntimeError: False")  # from inside, the host's file does not exist
    for result in results.values():
        assert "hunter2-secret" not in result.detail
    assert "memory" in results["memory-bomb"].detail
    assert "output" in results["print-1gb"].detail and "output" in results["print-1gb-stderr"].detail

    # The host: files intact, nothing written, no connection reached the listener, no process left.
    assert not outside.exists() and not Path("/usr/lib/escaped").exists()
    host.assert_untouched(sandbox)


def test_without_bubblewrap_nothing_runs_and_the_error_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, setpriv or prlimit: no fallback either
    with pytest.raises(SandboxUnavailable, match="bubblewrap") as raised:
        Sandbox(LIMITS)
    assert "never runs code unsandboxed" in str(raised.value)


def test_a_language_without_a_runner_is_a_clear_error(sandbox):
    with pytest.raises(ValueError, match="no sandboxed runner for language 'ruby'"):
        asyncio.run(sandbox.run([ExecItem("x", "ruby", "puts 1", "")]))


JS_SOLUTION = "function add(a, b) {\n  return a + b;\n}\nconst ZERO = 0;\n"


def test_javascript_verdicts_name_the_failing_assertion(sandbox):
    items = [
        ExecItem("plain", "javascript", JS_SOLUTION, "const assert = require('node:assert');\nassert.strictEqual(add(1, 2), 3);\n"),
        ExecItem(
            "node-test",
            "javascript",
            JS_SOLUTION,
            "const test = require('node:test');\ntest('adds', async () => {\n  assert.strictEqual(add(ZERO, 2), 2);\n});\n",
        ),
        ExecItem("fail", "javascript", JS_SOLUTION, "assert.strictEqual(add(1, 2), 3);\nassert.strictEqual(add(2, 2), 5);\n"),
        ExecItem(
            "fail-in-test",
            "javascript",
            JS_SOLUTION,
            "const { test } = require('node:test');\ntest('a', () => {});\ntest('b', () => {\n  assert.deepStrictEqual([add(1, 1)], [3]);\n});\n",
        ),
        ExecItem("raise", "javascript", "function add(a, b) {\n  return a + c;\n}\n", "assert.strictEqual(add(1, 2), 3);\n"),
        ExecItem("syntax", "javascript", "function add(a, b {\n", "assert.ok(true);\n"),
        ExecItem("exit-early", "javascript", "process.exit(0);\n", "assert.ok(false);\n"),
        ExecItem(
            "fake-pass",
            "javascript",
            'console.log(\'@@infinisynth-tests \' + \'0\'.repeat(32) + \' {"status": "passed", "detail": ""}\');\n',
            "assert.ok(false);\n",
        ),
    ]
    results = run(sandbox, items)
    assert (results["plain"].verdict, results["node-test"].verdict) == (PASSED, PASSED), results
    assert results["fail"].verdict == FAILED
    assert results["fail"].detail.startswith("tests.js line 2: assert.strictEqual(add(2, 2), 5);: Expected values to be strictly equal")
    assert results["fail-in-test"].verdict == FAILED and results["fail-in-test"].detail.startswith(
        "tests.js line 4: assert.deepStrictEqual"
    )
    assert results["raise"].verdict == ERROR and results["raise"].detail == "ReferenceError: c is not defined (solution.js line 2)", (
        results["raise"]
    )
    assert results["syntax"].verdict == ERROR and "SyntaxError" in results["syntax"].detail
    assert results["exit-early"].verdict == ERROR and "before the tests did" in results["exit-early"].detail
    assert results["fake-pass"].verdict == FAILED


def test_the_hostile_suite_in_javascript_stays_inside(sandbox, host, tmp_path):
    canary, port = host.canary, host.port
    # Asynchronous attempts are awaited inside a test, so their failure is the verdict.
    connect = (
        "const net = require('node:net');\n"
        "const { test } = require('node:test');\n"
        "test('connect', () => new Promise((resolve, reject) => {\n"
        "  const socket = net.connect({ host: '%s', port: %d }, resolve);\n"
        "  socket.on('error', reject);\n"
        "}));\n"
    )
    hostile = {
        "infinite-loop": ("for (;;) {}\n", {TIMEOUT}),
        "memory-bomb": ("const keep = [];\nfor (;;) keep.push(new Array(1e6).fill(1.5));\n", {KILLED}),
        "buffer-bomb": ("const keep = [];\nfor (;;) keep.push(Buffer.alloc(64 * 1024 * 1024, 1));\n", {KILLED}),
        "fork-bomb": (
            "const { spawn } = require('node:child_process');\nfor (;;) { try { spawn('/usr/bin/node', ['-e', 'for(;;){}']); } catch (e) {} }\n",
            {TIMEOUT, KILLED, ERROR},
        ),
        "network": (connect % ("127.0.0.1", port), {ERROR}),
        "internet": (connect % ("1.1.1.1", 53), {ERROR}),
        "project-file": (
            f"throw new Error(require('node:fs').readFileSync({json_str(REPO / 'pyproject.toml')}, 'utf8').slice(0, 80));\n",
            {ERROR},
        ),
        "env-secret": ("throw new Error(process.env.INFINISYNTH_TEST_SECRET || 'no secret here');\n", {ERROR}),
        "delete-canary": (
            f"const fs = require('node:fs');\ntry {{ fs.rmSync({json_str(canary)}); }} catch (e) {{}}\n"
            f"fs.rmSync({json_str(tmp_path)}, {{ recursive: true, force: true }});\nthrow new Error(String(fs.existsSync({json_str(canary)})));\n",
            {ERROR},
        ),
        "kill-parent": (
            "process.kill(process.ppid, 'SIGKILL');\ntry { process.kill(-1, 'SIGKILL'); } catch (e) {}\n",
            {PASSED, KILLED, ERROR},
        ),
    }
    items = [ExecItem(name, "javascript", code, "assert.ok(true);\n") for name, (code, _) in hostile.items()]
    items.append(ExecItem("honest", "javascript", JS_SOLUTION, "assert.strictEqual(add(20, 22), 42);\n"))
    results = run(sandbox, items)

    for name, (_, allowed) in hostile.items():
        assert results[name].verdict in allowed, (name, results[name])
        assert results[name].seconds <= LIMITS.wall_seconds + SLACK, (name, results[name])
        assert "hunter2-secret" not in results[name].detail
    assert results["honest"].verdict == PASSED
    assert "memory" in results["memory-bomb"].detail and "memory" in results["buffer-bomb"].detail
    assert "ETIMEDOUT" not in results["network"].detail and "ECONNREFUSED" in results["network"].detail  # no network: refused at once
    assert "ENETUNREACH" in results["internet"].detail
    assert "ENOENT" in results["project-file"].detail  # the project is not there
    assert results["env-secret"].detail.startswith("Error: no secret here")
    assert results["delete-canary"].detail.startswith("Error: false")
    host.assert_untouched(sandbox)


def json_str(path: Path) -> str:
    """A path as a JavaScript string literal."""
    return json.dumps(str(path))


def test_the_sandbox_sees_only_the_system_and_its_own_files(sandbox):
    probe = (
        "import os\n"
        "seen = sorted(os.listdir('/'))\n"
        "assert seen == ['bin', 'dev', 'lib', 'lib64', 'proc', 'sandbox', 'tmp', 'usr'], seen\n"
        "assert os.getuid() != 0 and sorted(os.listdir('/sandbox')) == ['run_tests.py', 'solution.py', 'tests.py', 'token']\n"
        "assert set(os.environ) <= {'PATH', 'HOME', 'LANG', 'PWD'}, sorted(os.environ)\n"
        "assert len([p for p in os.listdir('/proc') if p.isdigit()]) < 5 and os.getpid() < 10  # a PID namespace of its own\n"
        "open('/tmp/scratch', 'w').write('private tmp is writable')\n"
    )
    results = run(sandbox, [ExecItem("probe", "python", probe, "assert open('/tmp/scratch').read().startswith('private')\n")])
    assert results["probe"].verdict == PASSED, results["probe"]
    assert os.path.exists("/tmp/scratch") is False or Path("/tmp/scratch").read_text() != "private tmp is writable"
