from __future__ import annotations

import pytest

from testkit.server import Server

TOKEN = "e2e-secret-token"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    server = Server(tiny_model, tmp_path_factory.mktemp("server") / "server.log", API_TOKEN=TOKEN).start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
