"""Batch mode: a role's requests answered through the provider's batch API (``/v1/files`` +
``/v1/batches``, OpenAI-compatible), at the batch price, for work that can wait.

A model stage whose role has ``mode: batch`` (:class:`~infinisynth.llm.roles.RoleConfig`) runs its
shard in *passes* (:func:`infinisynth.shards.run_stage_shard`):

1. a pass runs the stage as usual, with a :class:`BatchCollector` on the client: a request the
   collector has an answer for is answered (validated, re-asked, cached exactly as online); any
   other is written down as one batch line and its row ends the pass *awaiting_batch* (transient:
   never checkpointed, never rejected);
2. the written-down lines go up as one JSONL file, one batch is created, and its id is saved in the
   shard's work folder (``_work/{stage}/ds=.../shard-N/batch/{key}/state.json``, next to its
   checkpoints, keyed by the stage's fingerprint and endpoint); the task defers
   (:class:`BatchPending`) and a trigger (:mod:`infinisynth.llm.batch_trigger`) polls the batch;
3. once the batch has ended, its output and error files are read into the work folder and the
   next pass runs: answered requests are served, rows finish and are checkpointed. What that pass
   still needs (re-asks of invalid answers, follow-up calls of multi-call stages) goes into the
   next round, up to ``batch_max_rounds`` batches per shard; after that the rest is sent online.

A batch item that did not complete (the batch failed, expired or was cancelled, or its line is in
the error file) is *batch_failed* for the pass right after: a transient outcome, so its row is
pending, never rejected, and the next attempt asks again in a new batch. A task that restarts
(killed, retried, cleared) finds the saved batch id and resumes that batch instead of paying for
another; a crash between creating a batch and saving its id is covered too: the uploaded file's id
is saved first, and a batch made from it is adopted.

Why batch answers live in the work folder rather than the response cache: they are raw answers,
not yet validated (the cache keeps only accepted ones), they are needed even with the response
cache switched off, and they go with the checkpoints when the stage commits. An answer the pass
accepts is then stored in the response cache by the client, exactly as online.

A line's ``custom_id`` is the hash of the exact request (endpoint and body) and its occurrence in
the pass: ``n`` samples of one prompt without a seed are identical requests and still get ``n``
independent answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from infinisynth.llm.reasons import AWAITING_BATCH, BATCH_FAILED, BROKEN_RESPONSE

if TYPE_CHECKING:
    import openai

    from infinisynth.llm.client import LLMClient
    from infinisynth.llm.roles import RoleConfig
    from infinisynth.storage import Store

log = logging.getLogger(__name__)

R = TypeVar("R")
A = TypeVar("A")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_FILE = "state.json"
MAX_DETAIL_CHARS = 300


class BatchPending(Exception):  # noqa: N818 - not an error: the shard waits for its batch
    """A shard's requests are in a provider batch that has not ended: wait (defer) for it.

    :meth:`trigger_kwargs` is what a trigger needs to poll it: no secret (the API key is looked up
    from the role's connections where the trigger runs)."""

    def __init__(self, batch_id: str, role: RoleConfig, where: str, requests: int):
        super().__init__(f"{where}: waiting for provider batch {batch_id} ({requests} requests)")
        self.batch_id = batch_id
        self.role = role.role
        self.base_url = role.base_url
        self.poll_seconds = role.batch_poll_seconds
        self.completion_window = role.batch_completion_window
        self.where = where
        self.requests = requests

    def trigger_kwargs(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "base_url": self.base_url, "role": self.role, "poll_seconds": self.poll_seconds}

    def timeout_seconds(self) -> float:
        """How long to wait at most: the completion window plus an hour (the provider then expires it)."""
        return window_seconds(self.completion_window) + 3600.0


def window_seconds(window: str) -> float:
    """``"24h"`` -> 86400.0 (also ``m``, ``s``, ``d``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    window = window.strip()
    try:
        return float(window[:-1]) * units[window[-1]] if window[-1] in units else float(window)
    except (ValueError, IndexError):
        return 86400.0


def request_id(path: str, request: Mapping[str, Any]) -> str:
    blob = json.dumps([path, request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class BatchCollector:
    """Consulted by :meth:`LLMClient._post` before any request: serves the answers of earlier
    batches, and writes down the requests it has none for (they end *awaiting_batch*), or, with
    ``online``, lets them through to the model."""

    def __init__(self, answers: Mapping[str, dict[str, Any]], *, fresh: frozenset[str] = frozenset(), online: bool = False):
        self.answers = answers  # custom_id -> {"body": response} or {"error": detail}
        self.fresh = fresh  # answers of the round just read in; the others were served (and counted) before
        self.online = online
        self.wanted: dict[str, dict[str, Any]] = {}  # custom_id -> batch line
        self.served = 0
        self.failed = 0
        self._seen: Counter[str] = Counter()

    def answer(self, client: LLMClient, path: str, request: dict[str, Any], stage: str) -> dict[str, Any] | None:
        """The batch's response body for this request, or None (send it online), or raise
        :class:`LLMRejection` (``awaiting_batch``: it goes into the next batch; ``batch_failed``)."""
        from infinisynth.llm.client import LLMRejection

        digest = request_id(path, request)
        custom_id = f"{digest}-{self._seen[digest]}"
        self._seen[digest] += 1
        entry = self.answers.get(custom_id)
        if entry is not None and "body" in entry:
            self.served += 1
            body: dict[str, Any] = entry["body"]
            if custom_id not in self.fresh:  # an earlier call of a row (before its re-ask or follow-up)
                _Replays.of(client).skip += 1  # paid and counted in its own round: not again
                return body
            tokens = body.get("usage") if isinstance(body, dict) else None
            tokens = tokens if isinstance(tokens, dict) else {}
            client.usage.record_batch(  # the request and its tokens are recorded by the client as usual
                client.role,
                stage,
                prompt_tokens=int(tokens.get("prompt_tokens") or 0),
                completion_tokens=int(tokens.get("completion_tokens") or 0),
            )
            return body
        if entry is not None:  # the batch item did not complete: this pass reports it, the next asks again
            self.failed += 1
            raise LLMRejection(BATCH_FAILED, str(entry.get("error", "the batch item did not complete"))[:MAX_DETAIL_CHARS])
        if self.online:
            return None
        self.wanted[custom_id] = {"custom_id": custom_id, "method": "POST", "url": "/v1" + path, "body": request}
        raise LLMRejection(AWAITING_BATCH, "the request waits in the next provider batch")

    def read(self, client: LLMClient, body: Any, cast_to: type[R], read: Callable[[R], A], what: str) -> A:
        """A batch line's response body as ``cast_to`` (what ``_post`` would have parsed)."""
        from infinisynth.llm.client import LLMRejection

        try:
            if not isinstance(body, dict):
                raise TypeError("not a JSON object")
            return read(cast_to.construct(**body))  # type: ignore[attr-defined]
        except Exception as exc:  # any body of another shape: as _post treats a broken HTTP 200
            raw = body if isinstance(body, str) else json.dumps(body, default=str)
            raise LLMRejection(
                BROKEN_RESPONSE, f"a batch answer that is not {what} ({type(exc).__name__})", raw_answer=raw[:2000]
            ) from None


class _Replays:
    """A client's usage meter that leaves out the next ``skip`` requests it is told to record: the
    client records every answer ``_post`` returns, right after it returns (no await in between), and
    an answer served again in a later pass was counted in the pass of its own round."""

    def __init__(self, meter: Any):
        self._meter = meter
        self.skip = 0

    @classmethod
    def of(cls, client: LLMClient) -> _Replays:
        if not isinstance(client.usage, _Replays):
            client.usage = cls(client.usage)  # type: ignore[assignment]
        return client.usage  # type: ignore[return-value]

    def record(self, *args: Any, **kwargs: Any) -> None:
        if self.skip:
            self.skip -= 1
            return
        self._meter.record(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


# -- the provider's batch API ------------------------------------------------------------------------


class BatchAPI:
    """``/v1/files`` and ``/v1/batches`` of one role's endpoint (through the OpenAI client)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 120.0, max_retries: int = 5):
        self.base_url = base_url
        self._api_key = api_key
        self._timeout = timeout_s
        self._max_retries = max_retries
        self._client: openai.AsyncOpenAI | None = None

    @classmethod
    def for_role(cls, role: RoleConfig) -> BatchAPI:
        return cls(role.base_url, role.api_key.get_secret_value(), timeout_s=role.timeout_s, max_retries=role.max_retries)

    async def __aenter__(self) -> BatchAPI:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, timeout=self._timeout, max_retries=self._max_retries
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise RuntimeError("BatchAPI must be used inside 'async with'")
        return self._client

    async def upload(self, lines: Iterable[Mapping[str, Any]], name: str) -> str:
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
        uploaded = await self.client.files.create(file=(name, io.BytesIO(data), "application/jsonl"), purpose="batch")
        return uploaded.id

    async def create(self, input_file_id: str, endpoint: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        batch = await self.client.batches.create(
            input_file_id=input_file_id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window=window,  # type: ignore[arg-type]
            metadata=metadata,
        )
        return batch.to_dict()

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return (await self.client.batches.retrieve(batch_id)).to_dict()

    async def find(self, input_file_id: str, limit: int = 100) -> dict[str, Any] | None:
        """A batch made from ``input_file_id`` among the newest ``limit`` (a create whose answer was lost)."""
        page = await self.client.batches.list(limit=limit)
        for batch in page.data:
            if batch.input_file_id == input_file_id:
                return batch.to_dict()
        return None

    async def content(self, file_id: str) -> str:
        return (await self.client.files.content(file_id)).text


def parse_results(text: str | None) -> dict[str, dict[str, Any]]:
    """A batch output or error file: custom_id -> ``{"body": response}`` (HTTP 200) or ``{"error": detail}``."""
    results: dict[str, dict[str, Any]] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            custom_id = item["custom_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("batch results: skipping an unreadable line (%s)", line[:200])
            continue
        response = item.get("response") or {}
        error = item.get("error")
        body = response.get("body")
        if not error and response.get("status_code") == 200 and isinstance(body, dict) and "choices" in body:
            results[custom_id] = {"body": body}
        else:
            status = response.get("status_code")
            detail = error or (body.get("error") if isinstance(body, dict) and "error" in body else body)
            http = f" (HTTP {status})" if status else ""
            results[custom_id] = {"error": f"batch item failed{http}: {json.dumps(detail, default=str)[:MAX_DETAIL_CHARS]}"}
    return results


# -- one shard's batches -----------------------------------------------------------------------------


@dataclass
class ShardBatches:
    """The batches of one shard of one stage (by fingerprint): saved state, rounds, answers."""

    store: Store
    directory: str  # {work_dir}/batch/{key}
    role: RoleConfig
    where: str  # for messages: "pipeline.stage shard N"

    @property
    def state_path(self) -> str:
        return posixpath.join(self.directory, STATE_FILE)

    def load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = self.store.read_json(self.state_path)
        except FileNotFoundError:
            return {"rounds": []}
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.store.write_json(self.state_path, state)

    def rounds(self) -> int:
        return len(self.load()["rounds"])

    async def settle(self) -> None:
        """Bring the last round up to date: adopt or create its batch if the task died while
        submitting it; read its results if it has ended; else raise :class:`BatchPending`."""
        state = self.load()
        if not state["rounds"] or state["rounds"][-1].get("ingested"):
            return
        current = state["rounds"][-1]
        async with BatchAPI.for_role(self.role) as api:
            if not current.get("batch_id"):
                try:
                    found = await api.find(current["input_file_id"])
                except Exception as exc:  # an endpoint that cannot list batches: create it (the one case that may pay twice)
                    log.warning("%s: could not list batches to find one made from %s (%s)", self.where, current["input_file_id"], exc)
                    found = None
                if found is None:
                    found = await self._create(api, current)
                else:
                    log.info("%s: adopting provider batch %s (created before the task stopped)", self.where, found["id"])
                current["batch_id"] = found["id"]
                current["status"] = found.get("status")
                self.save(state)
            batch = await api.retrieve(current["batch_id"])
            current["status"] = status = batch.get("status")
            if status not in TERMINAL:
                self.save(state)
                counts = batch.get("request_counts") or {}
                log.info("%s: provider batch %s is %s (%s)", self.where, current["batch_id"], status, counts)
                raise BatchPending(current["batch_id"], self.role, self.where, len(current["custom_ids"]))
            results: dict[str, dict[str, Any]] = {}
            for key in ("output_file_id", "error_file_id"):
                if batch.get(key):
                    results.update(parse_results(await api.content(batch[key])))
        why = f"the batch {status}" + (f": {_batch_errors(batch)}" if batch.get("errors") else "")
        for custom_id in current["custom_ids"]:  # no line at all (a failed, expired or cancelled batch)
            results.setdefault(custom_id, {"error": why})
        answers = posixpath.join(self.directory, f"round-{current['round']}.answers.jsonl")
        self.store._atomic_write(answers, "".join(json.dumps({"custom_id": k, **v}) + "\n" for k, v in results.items()).encode())
        current.update(ingested=True, answers=posixpath.basename(answers), served=False)
        current["answered"] = sum("body" in v for v in results.values())
        self.save(state)
        log.info(
            "%s: provider batch %s %s: %d of %d requests answered",
            self.where,
            current["batch_id"],
            status,
            current["answered"],
            len(current["custom_ids"]),
        )

    def collector(self, *, online: bool = False) -> BatchCollector:
        """A collector with every answer of the rounds read in; the failures of a round only until
        one pass has reported them (then they are asked again)."""
        answers: dict[str, dict[str, Any]] = {}
        fresh: set[str] = set()
        rounds = self.load()["rounds"]
        for current in rounds:
            if not current.get("ingested"):
                continue
            fresh = set()
            with self.store.fs.open(posixpath.join(self.directory, current["answers"]), "rb") as fh:
                for line in fh.read().decode().splitlines():
                    entry = json.loads(line)
                    custom_id = entry.pop("custom_id")
                    if "body" in entry:
                        answers[custom_id] = entry
                        fresh.add(custom_id)
                    elif not current.get("served") and "body" not in answers.get(custom_id, {}):
                        answers[custom_id] = entry
        # The last round's answers are new to the first pass that serves them, not to a later one.
        if online or any(r.get("served") for r in rounds[-1:]):
            fresh = set()
        return BatchCollector(answers, fresh=frozenset(fresh), online=online)

    def served(self) -> None:
        """A pass has used the answers read in so far: their failures were reported (the next
        attempt asks again) and their requests counted (a later pass does not count them again)."""
        state = self.load()
        if any(not r.get("served") for r in state["rounds"] if r.get("ingested")):
            for current in state["rounds"]:
                if current.get("ingested"):
                    current["served"] = True
            self.save(state)

    async def submit(self, wanted: Mapping[str, dict[str, Any]]) -> BatchPending:
        """Upload the wanted lines of one endpoint (the rest wait a round) and create the batch;
        returns what to wait for."""
        by_url: dict[str, list[dict[str, Any]]] = {}
        for line in wanted.values():
            by_url.setdefault(line["url"], []).append(line)
        url, lines = max(by_url.items(), key=lambda item: len(item[1]))
        state = self.load()
        current = {"round": len(state["rounds"]) + 1, "endpoint": url, "custom_ids": [line["custom_id"] for line in lines]}
        async with BatchAPI.for_role(self.role) as api:
            current["input_file_id"] = await api.upload(lines, f"{self.where.replace(' ', '-')}-round-{current['round']}.jsonl")
            state["rounds"].append(current)
            self.save(state)  # before the batch exists: a task that dies now adopts it, never pays twice
            batch = await self._create(api, current)
            current.update(batch_id=batch["id"], status=batch.get("status"), submitted_at=time.time())
            self.save(state)
        log.info("%s: %d requests sent as provider batch %s (round %d)", self.where, len(lines), batch["id"], current["round"])
        return BatchPending(batch["id"], self.role, self.where, len(lines))

    async def _create(self, api: BatchAPI, current: dict[str, Any]) -> dict[str, Any]:
        metadata = {"infinisynth": self.where[:500], "round": str(current["round"])}
        return await api.create(current["input_file_id"], current["endpoint"], self.role.batch_completion_window, metadata)


def _batch_errors(batch: Mapping[str, Any]) -> str:
    errors = batch.get("errors") or {}
    data = errors.get("data") if isinstance(errors, dict) else None
    return "; ".join(str(e.get("message") or e.get("code")) for e in (data or []) if isinstance(e, dict))[:MAX_DETAIL_CHARS]


async def batch_status(base_url: str, api_key: str, batch_id: str) -> dict[str, Any]:
    """One poll of a batch (what the trigger calls)."""
    async with BatchAPI(base_url, api_key, max_retries=2) as api:
        return await api.retrieve(batch_id)
