"""When a failed request is sent again, and after how long: a pure policy, shared by both clients."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from embsvc_client.errors import APIError

# The only statuses that say "the same request may work later": a full queue or a loading
# engine (503) and a proxy's rate limit (429). Every other 4xx would fail the same way again,
# and a 500 or 504 has already cost the server a forward pass.
RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Retry:
    """Retries of one request: on 503 and 429 after the server's ``Retry-After`` (or a doubling
    back-off when it sends none), and on a connection that could not be made (nothing was sent).

    ``attempts`` counts every send, the first included (1 turns retries off); no wait may end
    later than ``total_s`` after the first send: a longer ``Retry-After`` raises the error at once.
    """

    attempts: int = 5
    total_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.total_s, self.backoff_s, self.max_backoff_s) < 0:
            raise ValueError("total_s, backoff_s and max_backoff_s must not be negative")

    def wait(self, error: Exception, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before sending again after ``error`` ended send number ``attempt``
        (from 1), ``elapsed`` seconds after the first send; ``None``: give up and raise it."""
        if attempt >= self.attempts or not retried(error):
            return None
        hinted = error.retry_after if isinstance(error, APIError) else None
        delay = hinted if hinted is not None else min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return delay if elapsed + delay <= self.total_s else None


def retried(error: Exception) -> bool:
    """Whether ``error`` may go away by itself: a 503 or 429, or a connection not made (refused or
    timed out: the request was never sent). A read timeout is not: the server may be computing it."""
    if isinstance(error, APIError):
        return error.status in RETRIED_STATUSES
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
