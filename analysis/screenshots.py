"""Screenshots of every tab of the app, taken in a real headless browser (Debian's chromium driven
by Playwright; nothing is downloaded).

    python -m analysis screenshots --out assets/screenshots

The app (``python app.py``) is served by a child process on a free local port, so nothing here
imports it; each tab is opened and captured with the precomputed case it opens on
(``python -m analysis examples``), the Benchmark tab after Show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium keeps trying to reach Google on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 240_000  # a first comparison calibrates; slow machines need the margin


@contextlib.contextmanager
def served_app(timeout_s: float = 300.0) -> Iterator[str]:
    """``python app.py`` served by a child process on a free local port; yields its address once
    the page answers.

    Raises:
        RuntimeError: if the app exits or does not answer within ``timeout_s`` (with its log's end).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with tempfile.TemporaryFile() as logfile:
        child = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if child.poll() is not None or time.monotonic() > deadline:
                    logfile.seek(0)
                    tail = logfile.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the app {'exited' if child.returncode is not None else 'did not answer'} "
                                       f"at {url}:\n{tail}")
                try:
                    with urllib.request.urlopen(url, timeout=5):
                        break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


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


def wait_for_grid(page, source: str, timeout_ms: float = RESULT_TIMEOUT_MS) -> None:
    """Wait until the Compare grid's header names ``source`` (``precomputed`` or ``computed now``)
    and every column's facts are drawn."""
    page.locator(".grid-header").get_by_text(source).first.wait_for(timeout=timeout_ms)
    page.locator(".grid-fp").get_by_text("detector").wait_for(timeout=timeout_ms)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the dropdown labelled ``label``.

    The option is looked up in this dropdown's own list (the box's ``aria-controls``): the list of
    the dropdown chosen just before may still be closing, and it can hold an option of the same
    name."""
    box = page.get_by_label(label, exact=True)
    box.click()
    options = box.get_attribute("aria-controls")
    page.locator(f'[id^="{options}-option-"][aria-label="{option}"]').click()
    page.wait_for_function("id => !document.getElementById(id)", arg=options)


def run_comparison(page, slots: list[tuple[str, str]] | None = None) -> None:
    """Press Compare on the Compare tab (after setting the slots' methods and bits, if given) and
    wait until the grid is computed."""
    open_tab(page, "Compare")
    for k, (method, bits) in enumerate(slots or [], start=1):
        choose(page, f"Slot {k} method", method)
        choose(page, f"Slot {k} bits", bits)
    page.get_by_role("button", name="Compare", exact=True).click()
    wait_for_grid(page, "computed now")


def take(out: Path) -> list[Path]:
    """Screenshot every tab into ``out`` as the page opens (each tab shows its shipped case; the
    Benchmark tab after pressing Show); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    shots = []

    def shoot(name: str) -> None:
        page.wait_for_timeout(1500)  # plotly draws after the data arrives
        shots.append(out / f"{name}.png")
        page.screenshot(path=shots[-1], full_page=True)

    with served_app() as url, browser_page() as page:
        page.goto(url)
        wait_for_grid(page, "precomputed")
        shoot("compare")
        open_tab(page, "Quantize")
        shoot("quantize")
        open_tab(page, "Distributions")
        page.locator(".js-plotly-plot").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        shoot("distributions")
        open_tab(page, "Trajectory")
        page.get_by_text("noise-prediction SQNR vs FP per step").wait_for(timeout=RESULT_TIMEOUT_MS)
        shoot("trajectory")
        open_tab(page, "Benchmark")
        page.get_by_role("button", name="Show", exact=True).last.click()
        page.get_by_text("step vs fp32").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        shoot("benchmark")
    for path in shots:
        log.info("wrote %s", path)
    return shots
