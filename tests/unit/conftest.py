"""The unit harness: the Falcon app over a fake engine (tests/unit/fake_engine.py), through
falcon's TestClient; no process, no model beyond the tiny model's tokenizer files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from tokenizers import Tokenizer

from embsvc.app import create_app
from embsvc.config import Settings, load_settings
from embsvc.core import rerank_pairs
from embsvc.core import tokenizer as text_tokenizer
from testkit.server import AUTH, TOKEN
from tests.conftest import ANY, check_error
from tests.unit.fake_engine import FakeEngine

__all__ = ["AUTH", "LIMITS", "TOKEN", "assert_error", "post"]
# Small limits, so that the tests reach them with small bodies.
LIMITS = {"MAX_INPUTS": "4", "MAX_REQUEST_BYTES": "4096", "MAX_TOKENS": "64"}


class _ParsedOnce:
    """``tokenizers.Tokenizer`` as embsvc sees it here: ``from_file`` parses each file once a session.
    The tiny model's tokenizer.json is 2 MB of JSON, some 60 ms to parse, and every app these tests
    build parsed it again on its first request (about 130 times a run). embsvc only reads the
    tokenizer it gets and sets no truncation and no padding on it, so one can serve them all."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[str, int, int], Tokenizer] = {}

    def from_file(self, path: str) -> Tokenizer:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)  # a test's own, changed file is parsed anew
        if key not in self._parsed:
            self._parsed[key] = Tokenizer.from_file(path)
        return self._parsed[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(Tokenizer, name)


@pytest.fixture(scope="session", autouse=True)
def _tokenizer_files_parsed_once() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        shared = _ParsedOnce()
        patch.setattr(text_tokenizer, "Tokenizer", shared)
        patch.setattr(rerank_pairs, "Tokenizer", shared)
        yield


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_settings(tiny_model: Path) -> Callable[..., Settings]:
    """``make_settings(**env)``: the settings of ``env`` over the token and the tiny model."""
    def make(**env: str) -> Settings:
        return load_settings({"API_TOKEN": f"{TOKEN},second-token", "MODEL_PATH": str(tiny_model),
                              "RERANKER_PATH": "none", **env}, env_file=None)
    return make


@pytest.fixture
def client(make_settings: Callable[..., Settings], engine: FakeEngine) -> testing.TestClient:
    """The app with ``LIMITS`` over the fake engine."""
    return testing.TestClient(create_app(make_settings(**LIMITS), engine))


def post(client: testing.TestClient, path: str, body: object, headers: dict[str, str] | None = None) -> testing.Result:
    return client.simulate_post(path, json=body, headers=AUTH if headers is None else headers)


def assert_error(result: testing.Result, status: int, error_type: str = "invalid_request_error",
                 param: object = ANY) -> dict:
    """The error body of ``status``, in the API's shape; ``param`` is checked when given."""
    return check_error(result.status_code, result.text, lambda: result.json, status, error_type, param)
