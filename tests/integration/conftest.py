"""The integration harness: a real engine process on the tiny model, driven from the test
process as the master, over real pipes and shared memory; FlagEmbedding on the same folder
as the reference. One engine, one reference and one tokenizer serve the whole session; so does
one engine that also holds the tiny cross-encoder (``rerank_pool``, ``rerank_client``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from embsvc.core.tokenizer import TextTokenizer
from gpu_pool.client import EngineClient
from gpu_pool.pool import EnginePool
from testkit.engines import engine_spec, wait_ready
from tests.conftest import build_tiny_model, build_tiny_reranker

if TYPE_CHECKING:
    from FlagEmbedding import BGEM3FlagModel


# The session's two engines take some 4-5 s each to start (a fresh process imports torch and
# transformers), nearly all of it on one core. As soon as collection knows which of them the run
# needs, they start in the background at the lowest CPU priority, so that they load on what the
# tests that run first leave idle and take nothing from their timings; the first test that asks
# for one gives it back its normal priority and waits for it. Without root (which may raise a
# priority again) they start side by side when the first of them is asked for.
SESSION_POOLS = ("pool", "rerank_pool")
_wanted: set[str] = set()
_started: dict[str, EnginePool] = {}
_BACKGROUND = os.geteuid() == 0


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _wanted.update(name for item in items for name in SESSION_POOLS if name in getattr(item, "fixturenames", ()))
    if _BACKGROUND and not config.option.collectonly:
        for name in sorted(_wanted):
            _start(name, niceness=19)


def pytest_sessionfinish() -> None:
    for started in _started.values():  # each fixture stops its own; this stops one never asked for
        started.stop()


def _start(name: str, niceness: int = 0) -> None:
    model = build_tiny_model()
    spec = engine_spec(model, reranker_path=str(build_tiny_reranker())) if name == "rerank_pool" else engine_spec(model)
    _started[name] = started = EnginePool([spec], n_slots=2)
    started.start()
    if niceness:
        _renice(started, niceness)


def _renice(pool: EnginePool, niceness: int) -> None:
    """Every thread of the pool's engines (the threads an engine made at the lowest priority keep it)."""
    for handle in pool.engines:
        assert handle.process is not None
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            for thread in os.listdir(f"/proc/{handle.process.pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.setpriority(os.PRIO_PROCESS, int(thread), niceness)


def session_pool(name: str) -> Iterator[EnginePool]:
    """The session engine ``name``, ready, stopped after the session (each pool names its segments apart)."""
    for other in sorted((_wanted | {name}) - _started.keys()):
        _start(other)
    pool = _started[name]
    _renice(pool, 0)
    wait_ready(pool)
    _renice(pool, 0)  # and the threads it made meanwhile
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def pool() -> Iterator[EnginePool]:
    yield from session_pool("pool")


@pytest.fixture(scope="session")
def client(pool) -> EngineClient:
    return EngineClient(pool, pool.take_slot(), max_queue_size=50, timeout_s=60)


@pytest.fixture(scope="session")
def reference(tiny_model) -> BGEM3FlagModel:
    # Imported here, not at the top: FlagEmbedding takes seconds to import, and a run of tests
    # that never ask for the reference (test_simulated_device_coverage.py's) need not pay them.
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(tiny_model), use_fp16=False, devices="cpu")


@pytest.fixture(scope="session")
def encoded(reference) -> Callable[..., dict]:
    """``encoded(texts, max_length, **options)``: ``reference.encode(texts, max_length=..., **options)``,
    computed once a session for each question asked: FlagEmbedding's passes at 8192 tokens take
    seconds, and several tests compare with the same answer (which they only read)."""
    answers: dict[tuple, dict] = {}

    def encode(texts: Sequence[str], max_length: int, **options: object) -> dict:
        key = (tuple(texts), max_length, tuple(sorted(options.items())))
        if key not in answers:
            answers[key] = reference.encode(list(texts), max_length=max_length, **options)
        return answers[key]

    return encode


@pytest.fixture(scope="session")
def tokenizer(tiny_model) -> TextTokenizer:
    return TextTokenizer(tiny_model)


@pytest.fixture(scope="session")
def rerank_pool() -> Iterator[EnginePool]:
    yield from session_pool("rerank_pool")


@pytest.fixture(scope="session")
def rerank_client(rerank_pool) -> EngineClient:
    return EngineClient(rerank_pool, rerank_pool.take_slot(), max_queue_size=50, timeout_s=60,
                        interactive_max_tokens=64)
