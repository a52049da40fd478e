"""Run one linter process with a time, memory and output bound, in a fresh folder only we write to.

Limits are set with util-linux ``prlimit`` rather than ``preexec_fn``: the gate runs inside threaded
hosts (Airflow workers, uvicorn), where Python code between fork and exec can deadlock. The
process gets its own session, so a timeout kills everything it started. Its environment is a
minimal one we build: nothing from ours (keys, ``PYTHONPATH``, ``NODE_OPTIONS``,
``JAVA_TOOL_OPTIONS``) reaches it, and ``HOME`` is the batch folder, so no per-user linter config
is read either.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = "timeout"
OUTPUT_LIMIT = "output_limit"

_STDERR_KEEP = 64 * 1024  # stderr is only read for error messages: keep its head, drain the rest
_READ_CHUNK = 64 * 1024
_REAP_SECONDS = 10.0


@dataclass(frozen=True)
class Limits:
    timeout: float  # seconds of wall-clock time
    memory_bytes: int  # data segment (heap and private writable mappings) of the process
    max_output: int  # bytes of stdout; more is treated as a flood
    max_file_bytes: int = 64 * 1024 * 1024  # largest file the process may write


@dataclass(frozen=True)
class Completed:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    failure: str | None = None  # TIMEOUT or OUTPUT_LIMIT when the run was cut short

    def stderr_tail(self, chars: int = 500) -> str:
        return self.stderr.decode("utf-8", "replace").strip()[-chars:]


class _Flood(Exception):
    pass


def base_env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(extra)
    return env


@contextmanager
def batch_dir(parent: str | None = None) -> Iterator[Path]:
    """A new private folder (mode 0700, random name) removed afterwards, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="lint-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_bounded(argv: list[str], *, cwd: Path, env: dict[str, str], limits: Limits, prlimit: bool = True) -> Completed:
    """Run ``argv`` to completion or until a limit is hit; never raises for the child's behaviour.

    ``prlimit=False``: ``argv`` sets its own resource limits (the execution sandbox does, for the
    user it runs as); the wall clock and the output bound still hold."""
    cpu_seconds = max(1, int(limits.timeout * 4))  # a backstop for a child that escapes the kill
    prefix = [
        "prlimit",
        f"--data={limits.memory_bytes}",
        f"--cpu={cpu_seconds}",
        f"--fsize={limits.max_file_bytes}",
        "--core=0",
        "--",
    ]
    if not prlimit:
        prefix = []
    process = await asyncio.create_subprocess_exec(
        *prefix,
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    stdout, stderr = bytearray(), bytearray()
    failure = None
    try:
        async with asyncio.timeout(limits.timeout):
            await _communicate(process, stdout, stderr, limits.max_output)
    except TimeoutError:
        failure = TIMEOUT
    except _Flood:
        failure = OUTPUT_LIMIT
    finally:
        if process.returncode is None or failure is not None:
            _kill_group(process.pid)
            await _reap(process)
    return Completed(process.returncode, bytes(stdout), bytes(stderr), failure)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a killed process. Its pipes must be drained first: asyncio (3.11) only reports the
    exit once both pipes are closed, and a pipe we stopped reading stays paused and never sees EOF."""

    async def drain(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(_READ_CHUNK):
            pass

    try:
        async with asyncio.timeout(_REAP_SECONDS):
            await asyncio.gather(drain(process.stdout), drain(process.stderr))
            await process.wait()
    except TimeoutError:
        # Something outside the process group still holds a pipe open: stop listening to it.
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()


async def _communicate(process: asyncio.subprocess.Process, stdout: bytearray, stderr: bytearray, max_output: int) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_read(process.stdout, stdout, max_output, flood_fails=True))
            group.create_task(_read(process.stderr, stderr, _STDERR_KEEP, flood_fails=False))
            group.create_task(process.wait())
    except* _Flood:
        raise _Flood() from None


async def _read(stream: asyncio.StreamReader | None, buffer: bytearray, cap: int, *, flood_fails: bool) -> None:
    assert stream is not None
    while chunk := await stream.read(_READ_CHUNK):
        room = cap - len(buffer)
        if len(chunk) > room:
            if flood_fails:
                raise _Flood()
            buffer.extend(chunk[: max(room, 0)])
        else:
            buffer.extend(chunk)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
