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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.deploy.helpers import tool
from tests.e2e.conftest import TOKEN, embed

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "images" / "swagger.png"
TEXT = "Hello from the API page"
METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = tool("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,2600",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    # The driver's path is given, so selenium never looks for (or downloads) one of its own.
    driver = webdriver.Chrome(service=Service(executable_path=tool("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str, timeout: float = 30) -> WebElement:
    return WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css)))


def documented_operations(url: str) -> set[tuple[str, str]]:
    paths = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def listed_operations(driver: WebDriver) -> set[tuple[str, str]]:
    listed = set()
    for block in driver.find_elements(By.CSS_SELECTOR, ".opblock"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.lower()
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
        listed.add((method, path))
    return listed


def authorize(driver: WebDriver, token: str) -> None:
    wait_for(driver, "button.btn.authorize").click()
    wait_for(driver, ".modal-ux input[type=text], .modal-ux input[type=password]").send_keys(token)
    wait_for(driver, ".modal-ux button.modal-btn.auth.authorize").click()
    wait_for(driver, ".modal-ux button.btn-done, .modal-ux button.close-modal").click()


def try_embeddings(driver: WebDriver, body: dict[str, object]) -> tuple[str, str]:
    """Expands POST /v1/embeddings, sends ``body`` with "Try it out", returns the status and body shown."""
    operation = driver.find_element(By.CSS_SELECTOR, ".opblock-post:has([data-path='/v1/embeddings'])")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait_for(driver, ".opblock-post.is-open .try-out__btn").click()
    editor = wait_for(driver, ".opblock-post.is-open textarea.body-param__text")
    editor.clear()
    editor.send_keys(json.dumps(body))
    wait_for(driver, ".opblock-post.is-open button.execute").click()
    status = wait_for(driver, ".opblock-post.is-open .live-responses-table tr.response .response-col_status",
                      timeout=60)
    shown = driver.find_element(By.CSS_SELECTOR, ".opblock-post.is-open .live-responses-table .microlight")
    return status.text.strip(), shown.text


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
