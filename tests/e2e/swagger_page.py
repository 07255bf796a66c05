"""The API page at /docs driven in a real browser: Debian's headless Chromium through selenium
and Debian's chromium-driver (deploy/install-tools.sh installs both). The ``browser`` fixture
of tests/e2e/conftest.py opens one; the test modules of the page use these steps."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.deploy.helpers import tool

METHODS = ("get", "post", "put", "delete", "patch")


@contextlib.contextmanager
def chromium(tmp_path: Path) -> Iterator[WebDriver]:
    """Debian's headless Chromium through its chromium-driver, its profile under ``tmp_path``."""
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
