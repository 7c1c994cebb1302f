"""Debian's chromium driven by Selenium through chromium-driver, as the browser tests use it.

No browser is downloaded: CHROMIUM / CHROMEDRIVER are None when the packages are missing
(the tests skip with the reason; `.ci/run` installs them)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").is_file() else None
)
MISSING = "Chromium がありません（Debian: apt-get install chromium chromium-driver）"
WAIT_SECONDS = 30


def chromium_driver(profile: Path, *flags: str):
    """A headless Chromium with its own profile folder, the DevTools performance log on
    (what the page asked for), never asking Selenium Manager for a download."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=ja",
                 f"--user-data-dir={profile}", *flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look for downloads
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT_SECONDS)
    return driver
