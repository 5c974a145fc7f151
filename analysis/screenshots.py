"""Screenshots of every tab of the app, taken in a real headless browser (Debian's chromium driven
by Playwright; nothing is downloaded).

    python -m analysis screenshots --out assets/screenshots

The app is served from this process on a free local port; each tab is opened, its main button
pressed, and the page captured once the result has appeared.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium keeps trying to reach Google on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 240_000  # a first comparison calibrates; slow machines need the margin


@contextlib.contextmanager
def served_app() -> Iterator[str]:
    """The Gradio app served on a free local port; yields its address."""
    import app

    _, url, _ = app.demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        app.demo.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Playwright page in headless chromium at ``/usr/bin/chromium``.

    Raises:
        RuntimeError: if chromium or playwright is missing, with the commands that install them.
    """
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("playwright is missing: pip install -r requirements.txt") from None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def run_comparison(page) -> None:
    """Press Compare on the Compare tab and wait until the quantized output's facts are shown."""
    open_tab(page, "Compare")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("PSNR vs FP").wait_for(timeout=RESULT_TIMEOUT_MS)


def take(out: Path) -> list[Path]:
    """Screenshot every tab into ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with served_app() as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Compare").wait_for()
        run_comparison(page)
        shots.append(out / "compare.png")
        page.screenshot(path=shots[-1], full_page=True)

        open_tab(page, "Quantize")
        page.get_by_role("button", name="Quantize", exact=True).click()
        page.get_by_text("linear layers quantized").wait_for(timeout=RESULT_TIMEOUT_MS)
        shots.append(out / "quantize.png")
        page.screenshot(path=shots[-1], full_page=True)

        open_tab(page, "Distributions")
        page.get_by_role("button", name="List layers").click()
        page.wait_for_timeout(3000)
        page.get_by_role("button", name="Show", exact=True).first.click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(2000)
        shots.append(out / "distributions.png")
        page.screenshot(path=shots[-1], full_page=True)

        open_tab(page, "Trajectory")
        page.get_by_role("button", name="Measure").click()
        page.get_by_text("noise-prediction SQNR vs FP per step").wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(2000)
        shots.append(out / "trajectory.png")
        page.screenshot(path=shots[-1], full_page=True)

        open_tab(page, "Benchmark")
        page.get_by_role("button", name="Show", exact=True).last.click()
        page.get_by_text("step vs fp32").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(2000)
        shots.append(out / "benchmark.png")
        page.screenshot(path=shots[-1], full_page=True)
    for path in shots:
        log.info("wrote %s", path)
    return shots
