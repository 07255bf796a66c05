"""The token check: constant-time comparison with every configured token, no early exit."""

from __future__ import annotations

import hmac

import pytest
from falcon import testing

from embsvc.api import auth
from embsvc.app import create_app

TOKENS = ("first-secret-token", "second-secret-token", "third-secret-token")


@pytest.fixture
def compared(monkeypatch) -> list[tuple[bytes, bytes]]:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    return calls


@pytest.fixture
def client(make_settings, engine) -> testing.TestClient:
    return testing.TestClient(create_app(make_settings(API_TOKEN=",".join(TOKENS)), engine))


@pytest.mark.parametrize("presented, status", [
    ("first-secret-token", 200),  # a match on the first token must not stop the loop
    ("third-secret-token", 200),
    ("first-secret-tokex", 401),  # one byte off
    ("f", 401),
])
def test_every_token_is_compared_in_constant_time(client, compared, presented, status):
    result = client.simulate_get("/v1/models", headers={"Authorization": f"Bearer {presented}"})
    assert result.status_code == status
    assert compared == [(presented.encode(), t.encode()) for t in TOKENS]
    assert not any(t in result.text for t in TOKENS)
