"""The integration harness: a real engine process on the tiny model, driven from the test
process as the master, over real pipes and shared memory; FlagEmbedding on the same folder
as the reference. One engine, one reference and one tokenizer serve the whole session; so does
one engine that also holds the tiny cross-encoder (``rerank_pool``, ``rerank_client``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from embsvc.core.tokenizer import TextTokenizer
from gpu_pool.client import EngineClient
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.pool import EnginePool
from testkit.engines import engine_spec, wait_ready

if TYPE_CHECKING:
    from FlagEmbedding import BGEM3FlagModel


# The session's two engines, started side by side: each takes some 4-5 s to start (a fresh
# process imports torch and transformers), nearly all of it on one core. Collection says which
# of them the run needs; the first of them asked for starts them all, then waits for its own.
SESSION_POOLS = ("pool", "rerank_pool")
_wanted: set[str] = set()
_started: dict[str, EnginePool] = {}


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _wanted.update(name for item in items for name in SESSION_POOLS if name in getattr(item, "fixturenames", ()))


def pytest_sessionfinish() -> None:
    for started in _started.values():  # each fixture stops its own; this stops one never asked for
        started.stop()


def _spec(name: str, request: pytest.FixtureRequest) -> EngineSpec:
    model = request.getfixturevalue("tiny_model")
    if name == "rerank_pool":
        return engine_spec(model, reranker_path=str(request.getfixturevalue("tiny_reranker")))
    return engine_spec(model)


def session_pool(name: str, request: pytest.FixtureRequest) -> Iterator[EnginePool]:
    """The session engine ``name``, ready, stopped after the session (each pool names its segments apart)."""
    for other in sorted((_wanted | {name}) - _started.keys()):
        _started[other] = EnginePool([_spec(other, request)], n_slots=2)
        _started[other].start()
    pool = _started[name]
    wait_ready(pool)
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def pool(request: pytest.FixtureRequest) -> Iterator[EnginePool]:
    yield from session_pool("pool", request)


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
def rerank_pool(request: pytest.FixtureRequest) -> Iterator[EnginePool]:
    yield from session_pool("rerank_pool", request)


@pytest.fixture(scope="session")
def rerank_client(rerank_pool) -> EngineClient:
    return EngineClient(rerank_pool, rerank_pool.take_slot(), max_queue_size=50, timeout_s=60,
                        interactive_max_tokens=64)
