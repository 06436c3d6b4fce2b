"""A real headless Chromium for the HTML report: the distribution's browser and driver (Debian's
chromium and chromium-driver), driven by Selenium, offline. Shared by the report's browser tests and
benchmarks/report_page.py. Nothing here downloads a browser.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Where Debian puts them; $PATH is searched first.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER_NAMES = ("chromedriver",)
# Chromium as this machine's probe starts it: headless, no sandbox (tests run as root in CI), and none
# of the background connections a closed network refuses at every start (env/machines/python.md).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
# How long a page may take to draw its charts before a test gives up: generous, because the test waits
# for a state (the page's data-charts-drawn attribute), and a busy 2-core machine is slow.
DRAW_TIMEOUT_S = 120.0
POLL_S = 0.05


def _find(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


def missing() -> str | None:
    """Why no browser test can run here, in one sentence; None when Chromium and its driver are present."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make test installs it)"
    if _find(CHROMIUM_NAMES) is None:
        return "no Chromium on this machine (Debian: apt-get install chromium chromium-driver)"
    if _find(CHROMEDRIVER_NAMES) is None:
        return "no chromedriver on this machine (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def chromium(user_data: Path) -> Iterator[Any]:
    """A headless Chromium with networking switched off, recording the console; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_find(CHROMIUM_NAMES))
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(_find(CHROMEDRIVER_NAMES))), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
        yield driver
    finally:
        driver.quit()


def open_report(driver: Any, page: Path) -> float:
    """Load ``page`` from disk and wait until every chart is drawn; the seconds from navigation until then
    (``first_screen`` has when the charts of the first screen were)."""
    started = time.perf_counter()
    driver.get(page.resolve().as_uri())
    deadline = started + DRAW_TIMEOUT_S
    while True:
        state = driver.execute_script(
            "return [document.body && document.body.dataset.chartsDrawn, document.body && document.body.dataset."
            "chartsFailed]")
        if state[1]:
            raise AssertionError(f"a chart of {page} failed to draw: {state[1]}")
        if state[0] is not None:
            break
        if time.perf_counter() > deadline:
            raise AssertionError(f"{page}'s charts were not drawn within {DRAW_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    # The browser's own clock, which the page reads when its last chart is drawn (report.js).
    return float(driver.execute_script("return document.body.dataset.drawnMs")) / 1000.0


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def fetched_urls(driver: Any) -> list[str]:
    """Every resource the page asked for beyond itself (an inlined page asks for none)."""
    urls: list[str] = driver.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)")
    return urls


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """The whole page, not only the window (Chromium's DevTools capture beyond the viewport)."""
    import base64

    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def first_screen(driver: Any) -> float:
    """Seconds from navigation until the charts on the first screen were drawn (report.js)."""
    return float(driver.execute_script("return document.body.dataset.firstScreenMs")) / 1000.0


def cell_marks(driver: Any, element_id: str) -> int:
    """The marks Vega drew in the chart's layer of cells (report/charts.CELLS_LAYER)."""
    # Vega names the layer's group `cells_marks`, or `cells_0_marks` inside a concatenation.
    count: int = driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).querySelectorAll('g.role-mark'))"
        ".filter(g => Array.from(g.classList).some(name => /^cells(_[0-9]+)?_marks$/.test(name)))"
        ".reduce((n, g) => n + g.children.length, 0)", element_id)
    return count
