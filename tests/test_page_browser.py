"""The search page in a real browser: Playwright driving Debian's chromium (``/usr/bin/chromium``, installed
by ``make test``; Playwright's own browser download is never used) against a live server on loopback.

Open ``/?q=...``: the hit cards; click one: the 3D view renders (non-blank pixels, the highlight colour
among them) and reports the highlighted point count; the URL reloads to the same view; "find similar"
searches by example. A screenshot is saved in the test's temp folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scenegrep
from scenegrep.server import create_app
from server_home import LiveServer, indexed_home

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
HIGHLIGHT = (0x00, 0xE5, 0xFF)  # viewer.js HIGHLIGHT
BACKGROUND = (0x16, 0x18, 0x1D)  # viewer.js clear colour

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (/usr/bin/chromium): `make test` "
                                       "installs it with apt-get install chromium")


@pytest.fixture(scope="module")
def served(tmp_path_factory, synth_scans, tiny_clip_model) -> Path:
    return indexed_home(tmp_path_factory, synth_scans, tiny_clip_model)


@pytest.fixture(scope="module")
def base_url(served):
    with LiveServer(create_app(served)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


def _canvas_pixels(page) -> np.ndarray:
    png = page.locator("#view3d").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)


def test_search_click_and_view_in_3d(page, base_url, served, tmp_path):
    with scenegrep.open(served) as col:
        expected = col.search("a red chair", k=8)
    page.goto(f"{base_url}/?q=a+red+chair&k=8")
    page.wait_for_selector(".card[data-instance-id]")
    cards = page.locator(".card[data-instance-id]")
    assert [int(cards.nth(i).get_attribute("data-instance-id")) for i in range(cards.count())] == \
        [h.id for h in expected]
    assert page.input_value("#q") == "a red chair" and page.input_value("#k") == "8"
    assert expected[0].scan in cards.first.inner_text()

    cards.first.click()
    page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
    count = page.locator("#highlight-count")
    assert int(count.get_attribute("data-count")) == expected[0].n_points
    assert f"{expected[0].n_points:,} points highlighted" in count.inner_text()
    assert page.url.endswith(f"show={expected[0].id}")
    assert page.get_attribute("#download-ply", "href") == f"/api/instances/{expected[0].id}/points?format=ply"

    pixels = _canvas_pixels(page)
    drawn = np.abs(pixels - BACKGROUND).sum(axis=1) > 30
    assert drawn.mean() > 0.05, f"only {drawn.mean():.1%} of the canvas is drawn"
    assert (np.abs(pixels - HIGHLIGHT).sum(axis=1) < 40).sum() > 50, "no highlighted points visible"
    page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0

    # point size control re-renders
    page.eval_on_selector("#point-size", "el => { el.value = '3'; el.dispatchEvent(new Event('input')); }")
    assert not np.array_equal(_canvas_pixels(page), pixels)

    # the URL is the state: reloading shows the same hits and the same instance
    page.reload()
    page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
    assert int(page.get_attribute("#highlight-count", "data-count")) == expected[0].n_points
    assert page.locator(".card.selected").get_attribute("data-instance-id") == str(expected[0].id)
    assert not page.errors, page.errors


def test_find_similar_searches_by_example(page, base_url, served):
    with scenegrep.open(served) as col:
        first = col.search("a wooden table", k=1)[0]
        similar = col.like(first.id, k=6)
    page.goto(f"{base_url}/?q=a+wooden+table&k=6&show={first.id}")
    page.wait_for_selector("#viewer[data-state=ready]", timeout=30_000)
    page.click("#find-similar")
    page.wait_for_function("document.querySelector('#status').textContent.includes('hits for instance')")
    page.wait_for_selector(".card[data-instance-id]")
    ids = [int(x) for x in page.locator(".card").evaluate_all("els => els.map(e => e.dataset.instanceId)")]
    assert ids == [h.id for h in similar] and first.id not in ids
    assert f"like={first.id}" in page.url
    assert not page.errors, page.errors


def test_errors_are_shown_not_thrown(page, base_url):
    page.goto(f"{base_url}/?q=x&k=5000")
    page.wait_for_selector("#status.error")
    assert "1000" in page.inner_text("#status")
    page.goto(f"{base_url}/?q=a+chair&show=99999999")
    page.wait_for_selector("#viewer[data-state=error]")
    assert "99999999" in page.inner_text("#viewer-message")
    assert not page.errors, page.errors
