"""Shared fixtures: the tiny random model in the bge-m3 layout, built once and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.model_builder import build_model

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_model(MODELS / "bge-m3-tiny", "tiny")
