"""The API page at /docs in a real browser: Debian's headless Chromium, driven by selenium
through Debian's chromium-driver (deploy/install-tools.sh installs both). The page lists every
operation of /openapi.json, and "Try it out" on POST /v1/embeddings, after "Authorize" with a
token, gets the vectors that /v1/embeddings gives.

``SWAGGER_SCREENSHOT=docs/images/swagger.png`` writes the page as it is then to that file (the
picture in docs/clients.md); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import requests
from selenium.webdriver.common.by import By

from tests.e2e.conftest import TOKEN, embed
from tests.e2e.swagger_page import (
    authorize,
    documented_operations,
    listed_operations,
    try_embeddings,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "swagger.png"
TEXT = "Hello from the API page"


def test_the_page_lists_every_operation_and_try_it_out_returns_vectors(server, browser, tmp_path):
    assert requests.get(f"{server.url}/docs", timeout=10).status_code == 200  # no token needed
    browser.get(f"{server.url}/docs")
    wait_for(browser, ".opblock")
    assert listed_operations(browser) == documented_operations(server.url)
    assert "BGE-M3 embedding server" in browser.find_element(By.CSS_SELECTOR, ".info .title").text

    authorize(browser, TOKEN)
    status, shown = try_embeddings(browser, {"input": TEXT, "return_sparse": False, "return_colbert": False})
    assert status.startswith("200"), shown
    answer = json.loads(shown)
    expected = embed(server, {"input": TEXT, "return_sparse": False, "return_colbert": False})
    np.testing.assert_allclose(answer["data"][0]["dense_embedding"], expected["data"][0]["dense_embedding"],
                               atol=1e-6)
    assert answer["embedding_types"] == ["dense"]

    target = Path(os.environ.get("SWAGGER_SCREENSHOT") or tmp_path / "swagger.png")
    # For the picture only: the documented answers are folded away, so that the live answer and the
    # list of operations below it fit in one window.
    browser.execute_script("""
        const open = document.querySelector('.opblock.is-open');
        for (const table of open.querySelectorAll('table.responses-table:not(.live-responses-table)')) {
            table.style.display = 'none';
        }
        const editor = open.querySelector('textarea');
        editor.style.minHeight = '0';
        editor.style.height = '3em';
        window.scrollTo(0, 0);""")
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 20_000


def test_without_authorize_the_page_shows_the_401(server, browser):
    browser.get(f"{server.url}/docs")
    wait_for(browser, ".opblock")
    status, shown = try_embeddings(browser, {"input": TEXT})
    assert status.startswith("401") and json.loads(shown)["detail"] == "Missing API token"


def test_the_screenshot_in_the_docs_is_a_picture_of_the_page():
    data = SCREENSHOT.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    assert "images/swagger.png" in (ROOT / "docs" / "clients.md").read_text()
