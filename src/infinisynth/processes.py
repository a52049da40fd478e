"""Child processes on loopback: a free port to serve on, and a stop that always reaps the child.

The embedded model server (:mod:`infinisynth.model_server`) uses both; so do the test servers.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``process``, wait up to ``timeout`` seconds for it to exit, then SIGKILL it; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
