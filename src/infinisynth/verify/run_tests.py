"""The test harness inside the sandbox: run /sandbox/solution.py, then /sandbox/tests.py, in one namespace.

Prints one line at the end, ``@@infinisynth-tests TOKEN {"status", "detail"}``, with the token the
runner wrote to /sandbox/token: ``passed``; ``failed`` with the first failing assertion (its line
in the tests and the message); ``error`` with any other exception. A program that ends before the
tests did prints no such line, so it cannot pass. (The token keeps printed look-alikes from
counting; code that reads the harness's own state could forge a line: the sandbox contains such
code, and the verdict is a data-quality signal, not a security boundary.)

Run by :mod:`infinisynth.verify.execute` as ``python3 -I -S /sandbox/run_tests.py`` inside bubblewrap.
"""

import json
import linecache
import os
import sys
import traceback


def _report(token: str, status: str, detail: str) -> None:
    sys.stdout.flush()
    sys.stdout.write(f"\n@@infinisynth-tests {token} {json.dumps({'status': status, 'detail': detail[:2000]})}\n")
    sys.stdout.flush()


def _source(name: str) -> str:
    with open(f"/sandbox/{name}", encoding="utf-8") as handle:
        text = handle.read()
    linecache.cache[name] = (len(text), None, text.splitlines(keepends=True), name)
    return text


def main() -> None:
    # One stream: the runner bounds stdout, so a flood on stderr is caught the same way.
    sys.stderr.flush()
    os.dup2(1, 2)
    with open("/sandbox/token", encoding="utf-8") as handle:
        token = handle.read().strip()
    solution, tests = _source("solution.py"), _source("tests.py")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
        exec(compile(tests, "tests.py", "exec"), namespace)
    except AssertionError as exc:
        namespace.clear()  # whatever the code holds (memory, too) goes before the report is written
        frames = traceback.extract_tb(exc.__traceback__)
        frame = next((f for f in reversed(frames) if f.filename == "tests.py"), frames[-1])
        message = f": {exc}" if str(exc) else ""
        _report(token, "failed", f"{frame.filename} line {frame.lineno}: {(frame.line or '').strip()}{message}")
        return
    except BaseException as exc:  # noqa: BLE001 - every other way out is an error verdict
        namespace.clear()
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"{f.filename} line {f.lineno}" for f in reversed(frames) if f.filename in ("solution.py", "tests.py")), "")
        _report(token, "error", f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else ""))
        return
    _report(token, "passed", "every test ran")


if __name__ == "__main__":
    main()
