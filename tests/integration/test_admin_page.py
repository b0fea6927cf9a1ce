"""The admin status page in a real headless chromium: loads, shows a transfer, then its end."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import Daemon, Fluxctl

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("Debian's chromium and chromium-driver are needed (make sysdeps)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def test_status_page_shows_a_transfer_live_then_finished(
    make_daemon: Callable[..., Daemon],
    fluxctl: Fluxctl,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    config = tmp_path / "fluxd.toml"
    # 1 MiB at 128 KiB/s: about 8 s in progress, whatever the machine.
    config.write_text('[limits]\nrate = "128K"\n')
    daemon = make_daemon("--config", str(config))
    browser.get(f"http://127.0.0.1:{daemon.admin_port}/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    wait.until(lambda b: "storage" in b.find_element(By.ID, "storage").text)

    src = tmp_path / "slow.bin"
    src.write_bytes(b"s" * (1 << 20))
    proc = fluxctl.spawn("send", str(src), daemon.url("/slow.bin"), "--chunk-size", "64K")
    row = wait.until(lambda b: _row(b, "live", "/slow.bin"))
    assert "upload" in row and "anonymous" in row and "%" in row
    assert proc.wait(timeout=120) == 0
    done = wait.until(lambda b: _row(b, "recent", "/slow.bin"))
    assert "ok" in done and "1.0 MiB" in done
    wait.until(lambda b: _row(b, "live", "/slow.bin") is None)


def _row(browser: webdriver.Chrome, table: str, path: str) -> str | None:
    for tr in browser.find_element(By.ID, table).find_elements(By.TAG_NAME, "tr"):
        if path.lstrip("/") in tr.text:
            return str(tr.text)
    return None
