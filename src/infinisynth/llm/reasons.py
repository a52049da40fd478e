"""Why a model call ended without a usable answer: the reason codes, final or transient.

- **Final**: the call completed and its answer was judged: ``invalid_output`` (no valid answer
  after the bounded re-asks) and ``request_rejected`` (the endpoint refused this request itself:
  HTTP 400, 413, 422, ...). Stages add their own final reasons (``low_quality``, ``lint_error``, ...).
  A final rejection is checkpointed and written to the rejected table.
- **Transient**: the call did not complete, after the client's own bounded retries: 429s,
  5xx, timeouts, dropped connections, an HTTP 200 whose body is not a usable response, an
  endpoint that refuses everyone (401, 403, 404: a key or model that is wrong, not the row).
  Nothing was learned about the row: it is never checkpointed nor rejected, so a task retry or a
  re-run redoes exactly these rows, and a shard with too many of them fails its task.

This module imports nothing, so the stage contract can classify outcomes without loading the
OpenAI client.
"""

from __future__ import annotations

RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
BROKEN_RESPONSE = "broken_response"  # HTTP 200, but not JSON or not the response asked for
ENDPOINT_REFUSED = "endpoint_refused"  # 401/403/404: the endpoint, key or model, not the row
API_ERROR = "api_error"  # any other failure of the call the OpenAI client reports
REQUEST_REJECTED = "request_rejected"
INVALID_OUTPUT = "invalid_output"
# Batch mode (llm/batch.py): the request waits in a provider batch, or its batch item did not
# complete (the batch failed, expired or was cancelled, or the line is in its error file).
AWAITING_BATCH = "awaiting_batch"
BATCH_FAILED = "batch_failed"

TRANSIENT_REASONS = frozenset(
    {RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION_ERROR, BROKEN_RESPONSE, ENDPOINT_REFUSED, API_ERROR, AWAITING_BATCH, BATCH_FAILED}
)


def is_transient(reason: str) -> bool:
    """Whether ``reason`` means the call did not complete (redo the row) rather than a verdict."""
    return reason in TRANSIENT_REASONS
