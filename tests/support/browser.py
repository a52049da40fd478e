"""Debian's chromium, headless, driven by selenium: for the tests that look at pages as a user does."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def available() -> bool:
    return Path(CHROMIUM).exists() and (Path(CHROMEDRIVER).exists() or shutil.which("chromedriver") is not None)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless chromium session (as root: --no-sandbox); quit however the block ends."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # a page still loading: elements not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def login(driver: Any, base: str, username: str, password: str, timeout: float = 60.0) -> None:
    """Sign in through the Airflow UI's own login form (simple auth manager); the UI's JWT cookie
    (``_token``) is then set for the whole origin."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "input[name=username], input#username"), timeout, "the login form")
    driver.find_element(By.CSS_SELECTOR, "input[name=username], input#username").send_keys(username)
    driver.find_element(By.CSS_SELECTOR, "input[name=password], input#password, input[type=password]").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: driver.get_cookie("_token"), timeout, "the session cookie after login")
