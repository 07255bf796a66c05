"""Shared by every layer: the tiny random models in the bge-m3 and bge-reranker-v2-m3 layouts, built
once and cached, and the API's error shape, which the unit and end-to-end harnesses check on their
own answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.model_builder import build_model
from testkit.reranker_builder import build_reranker

MODELS = Path(__file__).resolve().parent.parent / "models"
ANY = object()  # ``param`` of check_error: not checked


def build_tiny_model() -> Path:
    return build_model(MODELS / "bge-m3-tiny", "tiny")


def build_tiny_reranker() -> Path:
    return build_reranker(MODELS / "bge-reranker-v2-m3-tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_reranker() -> Path:
    """A tiny random cross-encoder in the bge-reranker-v2-m3 layout, with the tiny model's tokenizer."""
    return build_tiny_reranker()


def check_error(status: int, text: str, body: Callable[[], Any], want_status: int, error_type: str | None,
                param: object = ANY) -> dict[str, Any]:
    """An answer of ``status`` (``text``; ``body`` parses it) is a ``want_status`` error in the API's
    shape, of ``error_type`` where given and about ``param`` where given; returns its body."""
    assert status == want_status, text
    parsed: dict[str, Any] = body()
    assert parsed["detail"] == parsed["error"]["message"]
    if error_type is not None:
        assert parsed["error"]["type"] == error_type, parsed
    if param is not ANY:
        assert parsed["error"]["param"] == param, parsed
    return parsed
