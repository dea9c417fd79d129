"""The review page in a real headless Chromium: log in, then label by keyboard alone.

Needs Debian's chromium and chromedriver (`make browser` installs them; `make test` does it first).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from captcha_mlops.kept import CaptchaType, KeptImages
from captcha_mlops.synth import CaptchaFactory
from captcha_mlops.tracking_server import free_port

KEY = "browser-key"
ALNUM4 = CaptchaType("alnum4", "0123456789abcdefghijklmnopqrstuvwxyz", 4, 4)


@dataclass(frozen=True)
class Kept:
    truth: str
    read: str
    confidence: float
    agreement: float = 1.0


# In the order the page must show them: a reading of the wrong length first, then one the views disagree on,
# then the least sure.
KEPT = [Kept("k7m2", "k7m", 0.9), Kept("ab12", "ab12", 0.95, 0.5), Kept("zz99", "zz98", 0.3)]
KEPT += [Kept("q1w2", "q1w2", 0.5), Kept("x3y4", "x3y5", 0.6)]


@pytest.fixture
def review_page(tmp_path: Path) -> Iterator[tuple[str, KeptImages, Path, list[str]]]:
    kept, new = KeptImages(tmp_path / "kept"), tmp_path / "project/data/new"
    kept.declare(ALNUM4)
    factory = CaptchaFactory(ALNUM4.charset, 4, 4, 100, 60)
    ids = [kept.keep(factory.render(k.truth), "alnum4", "v1", k.read, [k.confidence] * len(k.read), len(k.read) == 4,
                     k.agreement).id for k in KEPT]  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "captcha_mlops.review", "--kept", str(kept.root), "--to", f"alnum4={new}"]
    env = {**os.environ, "CAPTCHA_API_KEY": KEY}
    process = subprocess.Popen([*command, "--port", str(port)], env=env, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                httpx.get(f"{url}/api/types", headers={"X-API-Key": KEY}).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, kept, new, ids
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("no chromedriver: `make browser` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def test_three_images_labelled_by_keyboard_become_three_own_images(
    review_page: tuple[str, KeptImages, Path, list[str]], browser: WebDriver
) -> None:
    url, kept, new, ids = review_page
    wait = WebDriverWait(browser, 20)
    browser.get(url)
    browser.find_element(By.ID, "key").send_keys(KEY, Keys.ENTER)  # the login form

    def shown(index: int) -> None:
        wait.until(lambda b: b.find_element(By.ID, "image").get_attribute("data-id") == ids[index])
        assert browser.find_element(By.ID, "label").get_attribute("value") == KEPT[index].read, "pre-filled"

    shown(0)
    browser.switch_to.active_element.send_keys("k7m2", Keys.ENTER)  # the reading is selected: typing replaces it
    shown(1)
    assert "50% of the views agree" in browser.find_element(By.ID, "confidence").text
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # right: accepted as read
    shown(2)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # skipped: stays pending
    shown(3)
    browser.switch_to.active_element.send_keys(Keys.ALT, "u")  # unreadable: set aside
    shown(4)
    browser.switch_to.active_element.send_keys("x3y4", Keys.ENTER)

    wait.until(lambda b: "Nothing left" in b.find_element(By.ID, "message").text)
    assert browser.find_element(By.ID, "counts").text == "1 pending · 3 labelled · 1 unreadable"
    expected = {f"{KEPT[i].truth}_{ids[i]}.png" for i in (0, 1, 4)}
    assert {path.name for path in new.iterdir()} == expected
    assert [record.id for record in kept.pending("alnum4", 10)] == [ids[2]]
    assert (kept.root / f"alnum4/unreadable/{ids[3]}.png").is_file()
