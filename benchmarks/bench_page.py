"""How fast the search page shows a ScanNet-size scan in 3D, measured in Debian's chromium.

    python benchmarks/bench_page.py --json benchmarks/results/bench_page.json

One synthetic ScanNet-size scan (``scenegrep synth --preset scannet``: ~240k points) is indexed with the
tiny random-weight CLIP of the tests and served by ``scenegrep serve`` (its own process). Playwright drives
``/usr/bin/chromium`` headless with software rendering (``--disable-gpu``: SwiftShader). Each run opens a
fresh browser context (nothing cached), searches, clicks the top hit and waits until the page reports the
view ready; measured:

* ``click_to_ready_ms``: wall time at the test driver from the click to ``data-state=ready``: fetching the
  scan's cloud (binary, ~19 bytes a point) and the hit's points, decoding, building the geometry and the
  first rendered frame;
* ``page_load_ms``: the page's own measure of the same (``data-load-ms``);
* ``frame_ms``: one re-render of the whole cloud (the point-size control) including reading the canvas back.

The first run pays for the server's encoding of the cloud (cached per scan afterwards); it is reported
separately (``cold``) from the median of the others (``warm``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scenegrep
from scenegrep.testing import write_local_dir_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import free_port, start_server  # noqa: E402  (benchmarks/bench_server.py)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def one_run(browser, url: str, shot: Path | None) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector(".card[data-instance-id]")
    t0 = time.perf_counter()
    page.locator(".card").first.click()
    page.wait_for_selector("#viewer[data-state=ready]", timeout=60_000)
    click_ms = 1000 * (time.perf_counter() - t0)
    frame_ms = page.evaluate("""() => {
        const t0 = performance.now();
        const size = document.getElementById('point-size');
        size.value = String(Number(size.value) + 0.25);
        size.dispatchEvent(new Event('input'));
        document.getElementById('view3d').toDataURL();
        return performance.now() - t0;
    }""")
    out = {"click_to_ready_ms": round(click_ms, 1),
           "page_load_ms": int(page.get_attribute("#viewer", "data-load-ms")),
           "frame_ms": round(frame_ms, 1),
           "highlighted": int(page.get_attribute("#highlight-count", "data-count")),
           "shown": page.inner_text("#highlight-count")}
    if shot is not None:
        page.screenshot(path=str(shot))
    context.close()
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--screenshot", type=Path, default=None, help="save the first run's page here (PNG)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        tmp = Path(tmp)
        model = f"local-dir:{write_local_dir_model(tmp / 'clip')}"
        (scan,) = scenegrep.generate_scans(tmp / "scans", 1, seed=0, preset="scannet")
        t0 = time.perf_counter()
        with scenegrep.open(tmp / "home", write=True) as col:
            (outcome,) = col.index([scan], clip_model=model)
            points = col.scans()[0].point_count
        index_s = time.perf_counter() - t0
        port = free_port()
        server = start_server(tmp / "home", port)
        try:
            chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                url = f"http://127.0.0.1:{port}/?q=a+table&k=10"
                runs = [one_run(browser, url, args.screenshot if i == 0 else None) for i in range(args.runs)]
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    warm = runs[1:] or runs
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU; chromium headless, software "
                   f"rendering (SwiftShader); {chromium}",
        "scan_points": points, "instances": outcome.instances, "index_s": round(index_s, 1),
        "bytes_per_point": 19,
        "cold": runs[0],
        "warm": {k: round(statistics.median(r[k] for r in warm), 1)
                 for k in ("click_to_ready_ms", "page_load_ms", "frame_ms")},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
