"""Final, valid model answers by request, content-addressed, on the project's object storage.

A re-run of a finished date pays for no model call it already paid for: :class:`LLMClient` looks
every request up here first and stores each answer it accepted.

- **Key**: the SHA-256 of the whole request: what kind of call (chat, structured, completion), the
  endpoint, the model, the messages or prompt, every generation parameter sent (temperature,
  max_tokens, seed, response_format and its schema, ...), and which of ``n`` samples it is. The
  same request on any run or date is a hit; a changed prompt, model or parameter is another key.
- **Value**: only answers the client accepted: a chat completion, a structured answer that
  validated (stored as its text; validated again on a hit), a completion. Failures (transport
  errors, answers that never validated) are never stored. A sample drawn at temperature > 0 is
  stored as drawn: a re-run reuses that sample instead of drawing a new one (switch the cache off,
  ``response_cache=False``, for fresh draws). The model under diagnosis (the ``target`` role)
  is never served from the cache (:data:`infinisynth.llm.roles.UNCACHED_ROLES`).
- **Layout**: ``{root}/_cache/llm/v1/{key[:2]}/{key}.json``, one small JSON object per answer, on
  the same fsspec filesystem as the data (``file://`` locally, ``s3://`` in production).
- **Bound**: a hit does not touch its entry (that would be a write per hit on S3), so an entry's
  age is the time it was written; :func:`prune` deletes the oldest until the cache fits its size
  bound, and :func:`prune_if_due` runs it at most once a day (the stage commits call it).

Object-store calls run in a small thread pool, off the client's event loop (s3fs's calls block);
writes go in batches. A local lookup is done in place (microseconds: cheaper than a thread hop).
A storage error never fails a model call: a failed lookup is a miss, a failed write is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import posixpath
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

if TYPE_CHECKING:
    from infinisynth.storage import Store

log = logging.getLogger(__name__)

CACHE_DIR = "_cache/llm"
FORMAT = "v1"  # part of every key and path: a new format starts a fresh namespace
PRUNE_MARKER = "_pruned.json"
PRUNE_EVERY_S = 24 * 3600
WORKERS = 16  # threads for storage calls (an object store's are latency-bound)
WRITE_BATCH = 64  # answers written together ...
WRITE_DELAY_S = 0.5  # ... or after this long, whichever comes first


def request_key(kind: str, base_url: str, request: Mapping[str, Any], draw: tuple[int, int] = (0, 1)) -> str:
    """The cache key of one request: ``draw`` is (which sample, of how many)."""
    blob = json.dumps([FORMAT, kind, base_url, request, draw], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """The response cache under ``{store root}/_cache/llm``: :meth:`get` and :meth:`put` from the
    client's event loop, :meth:`load` and :meth:`save` from anywhere; :meth:`close` when done.

    Writes are queued and written in batches off the event loop (one PUT each on an object store,
    sent concurrently); :meth:`flush` waits for them. A local entry is written in place: a reader
    that catches it half-written reads a prefix of a JSON object, which is never valid JSON, so it
    is a miss, never a wrong answer.
    """

    def __init__(self, store: Store, *, workers: int = WORKERS):
        self.fs = store.fs
        self.root = posixpath.join(store.root, CACHE_DIR)
        self.url = store.url(self.root)
        self._entries = posixpath.join(self.root, FORMAT)
        self._local = isinstance(self.fs, LocalFileSystem)
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._queued: dict[str, bytes] = {}  # path -> entry, not yet handed to a writer
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Future[None]] = set()
        self._made_dirs: set[str] = set()
        self._write_failures = 0

    def __repr__(self) -> str:
        return f"ResponseCache({self.url!r})"

    def path(self, key: str) -> str:
        return posixpath.join(self._entries, key[:2], f"{key}.json")

    # -- blocking calls --------------------------------------------------------------------------

    def load(self, key: str) -> dict[str, Any] | None:
        """The stored answer, or None (never stored, unreadable, or the storage failed)."""
        path = self.path(key)
        try:
            if self._local:
                with open(path, "rb") as fh:  # a tenth of fsspec's cost per call, on the hot path
                    raw = fh.read()
            else:
                raw = self.fs.cat_file(path)
            value = json.loads(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("response cache: ignoring %s (%s)", self._url(path), exc)
            return None
        return value if isinstance(value, dict) else None

    def save(self, key: str, value: Mapping[str, Any]) -> None:
        """Store one answer now."""
        self._write({self.path(key): _encode(value)})

    def _write(self, entries: Mapping[str, bytes]) -> None:
        if not self._local:
            self.fs.pipe(dict(entries))  # one PUT per object; s3fs sends them concurrently
            return
        for path, data in entries.items():
            directory = posixpath.dirname(path)
            if directory not in self._made_dirs:
                os.makedirs(directory, exist_ok=True)
                self._made_dirs.add(directory)
            # Three system calls, where open() makes six: creating files is most of a miss's cost.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    # -- from the event loop -----------------------------------------------------------------------

    async def get(self, key: str) -> dict[str, Any] | None:
        if self._local:
            return self.load(key)  # a few microseconds: cheaper than a hop to a thread
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.load, key)

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Queue an answer for writing; :meth:`flush` waits until every queued one is stored."""
        self._queued[self.path(key)] = _encode(value)
        if len(self._queued) >= WRITE_BATCH:
            self._write_queued()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WRITE_DELAY_S, self._write_queued)

    async def flush(self) -> None:
        self._write_queued()
        while self._writes:
            await asyncio.gather(*list(self._writes))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _write_queued(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queued:
            return
        batch, self._queued = self._queued, {}
        future = asyncio.get_running_loop().run_in_executor(self._pool(), self._write_logged, batch)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    def _write_logged(self, entries: dict[str, bytes]) -> None:
        try:
            self._write(entries)
        except Exception as exc:  # the answers are still good; only their reuse is lost
            self._write_failures += 1
            if self._write_failures <= 3:
                log.warning("response cache: could not store %d answers under %s (%s: %s)", len(entries), self.url, type(exc).__name__, exc)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="llm-cache")
        return self._executor

    def _url(self, path: str) -> str:
        return self.url + path[len(self.root) :]


def _encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- the bound -------------------------------------------------------------------------------------


def prune(store: Store, max_bytes: int) -> tuple[int, int]:
    """Delete the oldest entries until the cache holds at most ``max_bytes``; returns (entries
    deleted, bytes kept)."""
    fs = store.fs
    entries_dir = posixpath.join(store.root, CACHE_DIR, FORMAT)
    try:
        found = fs.find(entries_dir, detail=True)
    except FileNotFoundError:
        return 0, 0
    files = sorted((_written_at(info), int(info.get("size") or 0), path) for path, info in found.items())
    total = sum(size for _, size, _ in files)
    doomed = []
    for _, size, path in files:
        if total <= max_bytes:
            break
        doomed.append(path)
        total -= size
    for start in range(0, len(doomed), 1000):
        fs.rm(doomed[start : start + 1000])
    return len(doomed), total


def prune_if_due(store: Store, max_gb: float, every_s: float = PRUNE_EVERY_S) -> None:
    """:func:`prune` to ``max_gb`` unless it ran less than ``every_s`` ago (one small read)."""
    marker = posixpath.join(store.root, CACHE_DIR, PRUNE_MARKER)
    try:
        last = float(json.loads(store.fs.cat_file(marker)).get("at", 0))
    except FileNotFoundError:
        last = 0.0
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("response cache: unreadable prune marker %s (%s)", store.url(marker), exc)
        last = 0.0
    now = time.time()
    if now - last < every_s:
        return
    try:
        store.fs.makedirs(posixpath.dirname(marker), exist_ok=True)
        store.fs.pipe_file(marker, json.dumps({"at": now}).encode())  # claims this day's prune first
        deleted, kept = prune(store, int(max_gb * 1024**3))
    except OSError as exc:
        log.warning("response cache: pruning %s failed (%s)", store.url(posixpath.dirname(marker)), exc)
        return
    where = store.url(posixpath.dirname(marker))
    log.info("response cache %s: %.2f GB kept (bound %.2f GB), %d files deleted", where, kept / 1024**3, max_gb, deleted)


def _written_at(info: Mapping[str, Any]) -> float:
    """An object's write time in seconds since the epoch, whatever the filesystem calls it."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0
