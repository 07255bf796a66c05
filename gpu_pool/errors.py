"""What can go wrong on the way to the engine, as typed exceptions for the web side."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class; the web app maps each subclass to one HTTP status."""


class EngineOverloaded(EngineError):
    """MAX_QUEUE_SIZE requests are already waiting."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SharedMemoryFull(EngineError):
    """/dev/shm has no room for this request's arrays (it was too small, or full for a second)."""

    def __init__(self, message: str, retry_after_s: float, never_fits: bool) -> None:
        super().__init__(message)
        self.retry_after_s, self.never_fits = retry_after_s, never_fits


class ModelNotServed(EngineError):
    """The request needs a model that the engines do not hold (a rerank without RERANKER_PATH)."""


class EngineUnavailable(EngineError):
    """No engine is ready: loading, restarting, or it died with the request."""


class EngineTimeout(EngineError):
    """No answer within REQUEST_TIMEOUT_S."""


class EngineFailed(EngineError):
    """The engine could not compute this request (for example, out of memory)."""

    def __init__(self, message: str, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


class ClientGone(EngineError):
    """The client closed its connection while the request waited: nobody can read an answer."""
