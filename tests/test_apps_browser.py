"""Both apps in a real browser: Debian's chromium (/usr/bin/chromium, no browser download)
driven by Playwright, each app served on loopback. Click a product, check the related
pictures really loaded (naturalWidth > 0), save a screenshot under runs/screenshots/."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.core.paths import RUNS_DIR

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SHOTS = RUNS_DIR / "screenshots"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian chromium not installed (scripts/install_system.sh)")
sync_api = pytest.importorskip("playwright.sync_api")

ALL_LOADED = """sel => { const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{proc.stdout.read().decode()[-2000:] if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def flask_url(app_artifacts):
    from werkzeug.serving import make_server

    from apps.flask_app import create_app

    server = make_server("127.0.0.1", free_port(), create_app(app_artifacts), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def streamlit_url(app_artifacts):
    port = free_port()
    env = {**os.environ, "VPS_ARTIFACTS": str(app_artifacts)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "apps" / "streamlit_app.py"),
           "--server.headless", "true", "--server.address", "127.0.0.1",
           "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_flask_in_browser(browser, flask_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(flask_url + "/")
    page.locator("a.example").first.click()
    page.wait_for_selector("#related img")
    page.wait_for_function(ALL_LOADED, arg="#related img", timeout=30_000)
    # Click a related product: its own page, with its own related pictures.
    first = page.locator("#related a.card").first
    target = first.get_attribute("href")
    first.click()
    page.wait_for_url(f"**{target}")
    page.wait_for_function(ALL_LOADED, arg="#related img", timeout=30_000)
    page.wait_for_function(ALL_LOADED, arg="#recent img", timeout=30_000)
    widths = page.eval_on_selector_all("#related img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 10 and min(widths) == 180
    assert page.locator("#product img").first.evaluate("e => e.naturalWidth") > 0
    assert "Related to what you recently viewed" in page.content()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "flask.png"), full_page=True)
    page.close()


def streamlit_product_page(browser, url: str):
    """The Streamlit app in a new page, with the first product of its start page viewed."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_text("Pick a product in the sidebar").wait_for(timeout=90_000)
    page.get_by_role("button", name="View").first.click()
    page.get_by_text("Looks like it (FAISS)").wait_for(timeout=60_000)
    return page


def test_streamlit_in_browser(browser, streamlit_url):
    page = streamlit_product_page(browser, streamlit_url)
    sel = '[data-testid="stMain"] [data-testid="stImage"] img'
    page.wait_for_function(f"""() => document.querySelectorAll('{sel}').length >= 11""",
                           timeout=60_000)
    page.wait_for_function(ALL_LOADED, arg=sel, timeout=30_000)
    widths = page.eval_on_selector_all(sel, "els => els.map(e => e.naturalWidth)")
    assert len(widths) >= 11 and min(widths) > 0  # the product + 10 related
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "streamlit.png"), full_page=True)
    page.close()


def test_flask_recommend_controls_in_browser(browser, flask_url):
    """Two products viewed, then a "Not this" on the recently-viewed row: the product
    leaves the row and joins "Not for you"; the strategy select is kept."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(flask_url + "/")
    page.locator("a.example").first.click()
    page.wait_for_selector("#related a.card")
    page.locator("#related a.card").first.click()
    page.wait_for_selector("#recent-related a.card")
    page.select_option('select[name="strategy"]', "best")
    page.get_by_role("button", name="Show").click()
    page.wait_for_selector("#recent-related a.card")
    assert page.locator('select[name="strategy"]').input_value() == "best"
    tile = page.locator("#recent-related .tile").first
    marked = tile.locator("a.card").get_attribute("href").split("product_id=")[1].split("&")[0]
    tile.get_by_role("button", name="Not this").click()
    page.wait_for_selector("#negative a.card")
    page.wait_for_function(ALL_LOADED, arg="#recent-related img", timeout=30_000)
    shown = page.eval_on_selector_all("#recent-related a.card", "els => els.map(e => e.href)")
    assert shown and not any(f"product_id={marked}&" in h for h in shown)
    assert page.locator("#negative .score").all_inner_texts() == [marked]
    assert page.locator('select[name="strategy"]').input_value() == "best"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "flask_recommend.png"), full_page=True)
    page.close()


def test_streamlit_recommend_controls_in_browser(browser, streamlit_url):
    page = streamlit_product_page(browser, streamlit_url)
    page.get_by_role("button", name="View").first.click()  # a related product
    page.get_by_text("Related to what you recently viewed").wait_for(timeout=60_000)
    page.get_by_text("by round robin").wait_for(timeout=30_000)
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(
        has_text="Related to recently viewed, by")
    box.click()
    page.get_by_role("option", name="best score").click()
    page.get_by_text("by best score").wait_for(timeout=60_000)
    page.get_by_role("button", name="Not this").last.click()  # on the recently-viewed row
    page.get_by_text("Not for you").wait_for(timeout=60_000)
    page.get_by_role("button", name="Forget these").wait_for(timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "streamlit_recommend.png"), full_page=True)
    page.close()
