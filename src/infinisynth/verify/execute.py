"""Dynamic verification: run a solution with its tests inside a bubblewrap sandbox, or refuse to.

Python (``run_tests.py``) and JavaScript (``run_tests.js``, Debian's node) have runners; both
interpreters come from the system's ``/usr``. Each run gets its own sandbox, built from nothing:

- **Namespaces**: new user, PID, network, IPC, UTS and mount namespaces (``bwrap --unshare-all``):
  no network at all (not even loopback to the host), no view of the host's processes, and a
  filesystem of the system's ``/usr`` (read-only), a private ``/proc`` and ``/dev``, a private
  ``/tmp`` (tmpfs of ``tmp_bytes``) and the run's own files, read-only, at ``/sandbox``. The
  project, the data, home folders and credentials are not there; the environment is cleared.
- **An unprivileged user of its own**: the run starts as a uid no one else uses (``setpriv``), so
  the process limit (RLIMIT_NPROC, which does not apply to root) holds, and it cannot signal
  anything outside. ``--die-with-parent`` and the PID namespace end every process of the run with
  it; ``--new-session`` keeps it off any terminal.
- **Hard limits** (``prlimit``): CPU seconds, address space, processes, file size; wall time and
  output size are enforced from outside (the whole process group is killed).

There is no fallback: without ``bwrap`` (or ``setpriv``/``prlimit``) :func:`sandbox_status`
raises :class:`SandboxUnavailable` and nothing runs.

Verdicts: ``passed`` (every test ran), ``failed`` (the first failing assertion, with its line in
the tests), ``error`` (any other exception, or the program ended before the tests did),
``timeout`` (wall clock or CPU time), ``killed`` (output over its limit, memory exhausted, or a
signal). The verdict is read from a line the harness prints with a random token after the tests;
output without it never counts as a pass.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infinisynth.verify import sandbox

PASSED = "passed"
FAILED = "failed"
ERROR = "error"
TIMEOUT = "timeout"
KILLED = "killed"
VERDICTS = (PASSED, FAILED, ERROR, TIMEOUT, KILLED)
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Runner:
    """How one language's solution and tests run: file names and the interpreter's command line."""

    language: str
    extension: str  # of solution.<ext> and tests.<ext>
    harness: Path  # copied to /sandbox/run_tests.<ext>


RUNNERS = {
    "python": Runner("python", "py", HERE / "run_tests.py"),
    "javascript": Runner("javascript", "js", HERE / "run_tests.js"),
}
LANGUAGES = frozenset(RUNNERS)
# V8 reserves several GB of address space at start-up (it fails under 1 GB), so node's address
# space limit is the run's memory plus this reservation, and its heap is bounded by V8's own flag.
_NODE_RESERVED_MB = 1024
_UID_BASE = 231_072  # an unused range (above the usual subordinate ids' start)
_MAX_SLOTS = 64  # uids per process: _UID_BASE + (pid % 65536) * 64 + slot
_SIGKILL, _SIGXCPU = 9, 24


class SandboxUnavailable(RuntimeError):
    """bubblewrap (or setpriv/prlimit) is missing or cannot create namespaces: nothing is run."""


@dataclass(frozen=True)
class ExecLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 512  # address space of each process
    max_processes: int = 32  # processes and threads of the run's uid
    max_output_bytes: int = 1024 * 1024  # stdout and stderr together; more is killed
    tmp_bytes: int = 16 * 1024 * 1024  # the private /tmp
    max_file_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ExecItem:
    id: str
    language: str  # a key of RUNNERS: "python", "javascript"
    code: str  # the solution
    tests: str  # run after it, in the same namespace (assert statements, or any code)


@dataclass(frozen=True)
class ExecResult:
    id: str
    verdict: str  # one of VERDICTS
    detail: str  # the failing assertion, the exception, or what limit was hit
    seconds: float


def sandbox_status() -> str:
    """The bubblewrap version; raises :class:`SandboxUnavailable` when the sandbox cannot work."""
    missing = [tool for tool in ("bwrap", "setpriv", "prlimit") if shutil.which(tool) is None]
    if missing:
        raise SandboxUnavailable(
            f"{', '.join(missing)} not installed: dynamic verification runs code only inside bubblewrap "
            "(`sudo apt-get install bubblewrap util-linux`); it never runs code unsandboxed"
        )
    done = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip().removeprefix("bubblewrap ") or "unknown"


class Sandbox:
    """Runs :class:`ExecItem` s, ``slots`` at a time, each in its own bubblewrap sandbox."""

    def __init__(self, limits: ExecLimits = ExecLimits(), *, slots: int = 2, python: str = "/usr/bin/python3", node: str = "/usr/bin/node"):
        self.version = sandbox_status()
        self.limits = limits
        self.slots = max(1, min(slots, _MAX_SLOTS // 2))
        # Each process its own uids (a process limit counts every process of a uid, host-wide),
        # and each concurrent run one of them. Twice as many uids as slots: a finished run's uid
        # waits for its processes to be gone (a second or so, see _drained) while the slot
        # already runs the next sample as another uid.
        self.uids = tuple(_UID_BASE + (os.getpid() % 65536) * _MAX_SLOTS + n for n in range(2 * self.slots))
        # As root, each run switches to its own uid. A service that is not root runs the sandbox
        # as itself (its limits then count the service's own processes too; untested here).
        self.switch_user = os.geteuid() == 0
        self.python = python
        self.node = node
        self._uids_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[asyncio.Semaphore, asyncio.Queue[int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._probe()

    def _probe(self) -> None:
        """One empty run: namespaces, the unprivileged user and the interpreter must all work."""
        with sandbox.batch_dir() as folder:
            folder.chmod(0o755)
            argv = self._argv(self.uids[0], folder, "python")
            argv[-3:] = ["-I", "-S", "-c", "pass"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=sandbox.base_env(folder))
        if done.returncode != 0:
            raise SandboxUnavailable(f"bubblewrap cannot start a sandbox here (exit {done.returncode}): {done.stderr.strip()[-300:]}")

    def _uids(self) -> tuple[asyncio.Semaphore, asyncio.Queue[int]]:
        """This event loop's run slots and free uids."""
        loop = asyncio.get_running_loop()
        pool = self._uids_by_loop.get(loop)
        if pool is None:
            pool = self._uids_by_loop[loop] = (asyncio.Semaphore(self.slots), asyncio.Queue())
            for uid in self.uids:
                pool[1].put_nowait(uid)
        return pool

    async def run(self, items: Sequence[ExecItem]) -> list[ExecResult]:
        languages = self.languages()
        for item in items:
            if item.language not in languages:
                raise ValueError(f"item {item.id!r}: no sandboxed runner for language {item.language!r} (only {sorted(languages)})")
        return list(await asyncio.gather(*(self._one(item) for item in items)))

    async def _one(self, item: ExecItem) -> ExecResult:
        slots, uids = self._uids()
        uid = await uids.get()
        try:
            async with slots:
                if self.switch_user:
                    await _drained(uid)  # a run of an earlier process with this pid may still be ending
                return await self._run(item, uid)
        finally:
            # The kernel ends a PID namespace's processes with its first one, but not at once; the
            # next run as this user must not find them counted against its process limit.
            if self.switch_user:
                await _drained(uid)
            uids.put_nowait(uid)

    def node_available(self) -> bool:
        """Whether JavaScript can run (node installed under /usr); without it JS rows stay unverified."""
        return Path(self.node).is_file()

    def languages(self) -> frozenset[str]:
        return LANGUAGES if self.node_available() else LANGUAGES - {"javascript"}

    def _argv(self, uid: int, folder: Path, language: str) -> list[str]:
        limits = self.limits
        memory_mb = limits.memory_mb + (_NODE_RESERVED_MB if language == "javascript" else 0)
        if language == "javascript":
            # The heap bound makes a memory bomb end as V8's "heap out of memory" abort.
            # One V8 worker thread: node hangs at start when it cannot create its threads, and
            # the process limit counts threads (node needs 3 with this, about 10 without).
            interpreter = [self.node, f"--max-old-space-size={limits.memory_mb}", "--v8-pool-size=1", "/sandbox/run_tests.js"]
        else:
            interpreter = [self.python, "-I", "-S", "/sandbox/run_tests.py"]
        user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if self.switch_user else []
        return [
            *user,
            "prlimit",
            f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",  # SIGXCPU first, SIGKILL a second later
            f"--as={memory_mb * 1024 * 1024}",
            f"--nproc={limits.max_processes}",
            f"--fsize={limits.max_file_bytes}",
            "--core=0",
            "--",
            "bwrap",
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--disable-userns",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/bin",
            "/bin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(limits.tmp_bytes),
            "--tmpfs",
            "/tmp",
            "--ro-bind",
            str(folder),
            "/sandbox",
            "--chdir",
            "/tmp",
            "--",
            *interpreter,
        ]

    async def _run(self, item: ExecItem, uid: int) -> ExecResult:
        limits = self.limits
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        started = loop.time()
        runner = RUNNERS[item.language]
        with sandbox.batch_dir() as folder:
            folder.chmod(0o755)  # the sandbox's user reads it (read-only inside)
            ext = runner.extension
            for name, text in ((f"solution.{ext}", item.code), (f"tests.{ext}", item.tests), ("token", token)):
                (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
            shutil.copyfile(runner.harness, folder / f"run_tests.{ext}")
            for path in folder.iterdir():
                path.chmod(0o444)
            bounds = sandbox.Limits(
                timeout=limits.wall_seconds,
                memory_bytes=limits.memory_mb * 1024 * 1024,
                max_output=limits.max_output_bytes,
                max_file_bytes=limits.max_file_bytes,
            )
            done = await sandbox.run_bounded(
                self._argv(uid, folder, item.language), cwd=folder, env=sandbox.base_env(folder), limits=bounds, prlimit=False
            )
        seconds = round(loop.time() - started, 3)
        verdict, detail = _verdict(done, token, limits)
        return ExecResult(item.id, verdict, detail[:1000], seconds)


async def _drained(uid: int, wait: float = 10.0) -> None:
    """Wait until no live process runs as ``uid`` and at most a few zombies do, for up to ``wait``
    seconds. Zombies count against the process limit until they are reaped, and node hangs at
    start-up when it cannot create its threads: after a fork bomb the next run waits for the
    bomb's zombies. Each run leaves one (bubblewrap's init, reaped by the host's init within a
    second or two), which is not worth waiting for."""
    deadline = asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        live, zombies = _processes_of(uid)
        if not live and zombies <= _ZOMBIES_TOLERATED:
            return
        await asyncio.sleep(0.05)


_ZOMBIES_TOLERATED = 4


def _processes_of(uid: int) -> tuple[int, int]:
    """(live processes, zombies) running as ``uid``."""
    wanted = f"Uid:\t{uid}\t"
    live = zombies = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as handle:
                status = handle.read()
        except OSError:
            continue
        if wanted in status:
            if "State:\tZ" in status:
                zombies += 1
            else:
                live += 1
    return live, zombies


_MARK = re.compile(rb"^@@infinisynth-tests (?P<token>[0-9a-f]{32}) (?P<json>\{.*\})$", re.MULTILINE)


def _verdict(done: sandbox.Completed, token: str, limits: ExecLimits) -> tuple[str, str]:
    if done.failure == sandbox.TIMEOUT:
        return TIMEOUT, f"no result within {limits.wall_seconds:g} s (wall clock)"
    if done.failure == sandbox.OUTPUT_LIMIT:
        return KILLED, f"more than {limits.max_output_bytes} bytes of output"
    marks = [m for m in _MARK.finditer(done.stdout) if m.group("token").decode() == token]
    if marks:
        try:
            report = json.loads(marks[-1].group("json"))
            status, detail = str(report["status"]), str(report["detail"])
        except (ValueError, KeyError):
            return ERROR, "the test harness's report is unreadable"
        if status == ERROR and (detail.startswith("MemoryError") or "Array buffer allocation failed" in detail):
            return KILLED, f"memory exhausted (limit {limits.memory_mb} MB): {detail}"
        if status in (PASSED, FAILED, ERROR):
            return status, detail
    code = done.returncode
    signal = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else None
    if signal == _SIGXCPU:
        return TIMEOUT, f"CPU time over {limits.cpu_seconds} s"
    if b"heap out of memory" in done.stdout[-4096:] + done.stderr[-4096:]:  # V8's heap limit (node aborts)
        return KILLED, f"memory exhausted (limit {limits.memory_mb} MB): JavaScript heap out of memory"
    if signal is not None:
        return KILLED, f"killed by signal {signal}: {done.stderr_tail(300)}"
    return ERROR, f"the program ended (exit status {code}) before the tests did: {done.stderr_tail(300)}"
