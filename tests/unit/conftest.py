"""The unit harness: the Falcon app over a fake engine (tests/unit/fake_engine.py), through
falcon's TestClient; no process, no model beyond the tiny model's tokenizer files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from falcon import testing

from embsvc.app import create_app
from embsvc.config import Settings, load_settings
from testkit.server import AUTH, TOKEN
from tests.conftest import ANY, check_error
from tests.unit.fake_engine import FakeEngine

__all__ = ["AUTH", "LIMITS", "TOKEN", "assert_error", "post"]
# Small limits, so that the tests reach them with small bodies.
LIMITS = {"MAX_INPUTS": "4", "MAX_REQUEST_BYTES": "4096", "MAX_TOKENS": "64"}


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
