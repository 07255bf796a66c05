"""The end-to-end harness: real gunicorn and a real engine on the tiny model, over real HTTP.

- ``server``: one server for the whole session, shared by the modules that only send it
  requests; no test stops, breaks or reconfigures it.
- ``start_server(**env)``: a server of the test's own (other settings, or one the test breaks),
  stopped when the test ends; ``serving(...)`` gives a module its own server the same way.
- ``post``, ``ok``, ``embed``, ``dense``, ``dense_vectors``, ``assert_error``: one of each, for every module
  (``assert_error`` checks the error shape with tests/conftest.py's ``check_error``, as the unit harness does).
- ``browser``: headless Chromium for the /docs page (tests/e2e/swagger_page.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.server import AUTH, TOKEN, Server
from tests.conftest import ANY, check_error

# TOKEN and AUTH: the servers' token (testkit's, which Server starts them with) and its header.
__all__ = ["AUTH", "TOKEN", "assert_error", "dense", "dense_vectors", "embed", "ok", "post", "serving"]


@contextlib.contextmanager
def serving(model: Path, folder: Path, *, clean_exit: bool = True, **env: str) -> Iterator[Server]:
    """A started server with ``env`` over the defaults (``API_TOKEN=TOKEN``); stopped on the way out,
    and with ``clean_exit`` its exit code must be 0."""
    server = Server(model, folder / "server.log", **env).start()
    try:
        yield server
    finally:
        code = server.stop()
        if clean_exit:
            assert code == 0, server.log()


@pytest.fixture(scope="session")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # DEBUG: the hostile-input tests check that no token reaches the log even at this level.
    with serving(tiny_model, tmp_path_factory.mktemp("shared-server"), LOG_LEVEL="DEBUG") as shared:
        yield shared


@pytest.fixture
def start_server(tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(model=None, clean_exit=True, **env)``: a server for this test alone."""
    with contextlib.ExitStack() as stack:
        count = iter(range(1_000))

        def start(model: Path | None = None, clean_exit: bool = True, **env: str) -> Server:
            folder = tmp_path / f"server-{next(count)}"
            folder.mkdir()
            return stack.enter_context(serving(model or tiny_model, folder, clean_exit=clean_exit, **env))

        yield start


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium for the /docs page (tests/e2e/swagger_page.py), closed when the test ends."""
    from tests.e2e.swagger_page import chromium  # selenium: only for the tests that ask for a browser

    with chromium(tmp_path) as driver:
        yield driver


@pytest.fixture
def auth() -> dict[str, str]:
    return dict(AUTH)


def post(server: Server, path: str, body: object, *, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> requests.Response:
    """``body``: JSON (a dict or list) or raw bytes; the token is sent unless ``headers`` says otherwise."""
    headers = AUTH if headers is None else headers
    if isinstance(body, bytes):
        return requests.post(f"{server.url}{path}", data=body, headers=headers, timeout=timeout)
    return requests.post(f"{server.url}{path}", json=body, headers=headers, timeout=timeout)


def ok(response: requests.Response) -> Any:
    """The JSON of a successful answer."""
    assert response.status_code == 200, response.text
    return response.json()


def embed(server: Server, body: dict[str, object] | str | bytes, timeout: float = 60.0) -> dict:
    """A successful ``/v1/embeddings`` answer; ``body`` may be just the input text, or raw bytes."""
    return ok(post(server, "/v1/embeddings", {"input": body} if isinstance(body, str) else body, timeout=timeout))


def dense(response: requests.Response) -> list[float]:
    """The first input's dense vector of a successful answer."""
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["dense_embedding"]


def dense_vectors(server: Server, texts: list[str], **body: object) -> dict[str, list[float]]:
    """Each text's dense vector, asked alone: what answers under stress are compared with."""
    return {text: dense(post(server, "/v1/embeddings", {"input": text, **body})) for text in texts}


def assert_error(response: requests.Response, status: int, error_type: str | None = None,
                 param: object = ANY) -> dict:
    """The error body of ``status``, in the API's shape; returns it."""
    return check_error(response.status_code, response.text, response.json, status, error_type, param)
