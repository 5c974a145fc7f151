"""End to end in a real headless browser: the page loads, a comparison runs, both outputs and the
latency appear. Debian's chromium driven by Playwright; `.ci/run` installs chromium."""

import os
import shutil

import pytest

from analysis.screenshots import CHROMIUM, browser_page, run_comparison, served_app

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):  # CI installs it: there, missing is a failure
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)


def test_a_comparison_in_the_browser_shows_both_outputs_and_their_latency():
    with served_app() as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Compare").wait_for()
        assert page.title().startswith("trdq")
        run_comparison(page)
        text = page.inner_text("body")
        assert "full precision (fp32)" in text and "PSNR vs FP" in text
        assert " s · peak RSS" in text  # latency and memory of each output
        images = page.locator("img[src*='/file=']")
        images.first.wait_for()
        assert images.count() >= 2
