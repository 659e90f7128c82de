"""Search latency of ``scenegrep serve`` over HTTP on loopback, idle and under load while ``index`` commits.

    python benchmarks/bench_server.py --json benchmarks/results/bench_server.json [--vit-l]

A temp home with two small synthetic scans is indexed with the tiny random-weight CLIP of the tests; the
server runs as its own process (``scenegrep --home H serve``), as a user would start it. Measured:

* ``idle``: ``--searches`` text searches one after another from one client after 20 warm-up searches;
  wall time per request at the client (HTTP, text encoding, vector search, folding, JSON);
* ``load``: 8 concurrent clients, at least ``--searches`` searches in all and on until ``scenegrep index``
  (another process, started with them) has indexed and committed a third scan; errors and hit ids that ``/api/instances/{id}`` does not know
  are counted (both must be 0);
* ``text_tower``: FLOPs of one text query through the tiny model and through ViT-L-14's text tower
  (torch's FlopCounterMode), and with ``--vit-l`` the measured time of one ViT-L-14 text encoding (random
  weights: the same cost as the real ones), to estimate the server's latency with ViT-L-14.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

import scenegrep
from scenegrep.testing import write_local_dir_model

QUERIES = ["a red chair", "a wooden table", "a blue box", "a lamp", "a sofa", "a plant", "a shelf", "a cup",
           "a bed", "a monitor", "a door", "a sink"]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p90_ms": round(float(np.percentile(a, 90)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "scenegrep", "--home", str(home), "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
    raise RuntimeError("the server did not start in 120 s")


def one_search(client: httpx.Client, query: str, k: int = 10) -> tuple[float, int, list[int], float]:
    t0 = time.perf_counter()
    r = client.get("/api/search", params={"q": query, "k": k})
    ms = 1000 * (time.perf_counter() - t0)
    if r.status_code != 200:
        return ms, r.status_code, [], 0.0
    body = r.json()
    return ms, 200, [h["id"] for h in body["hits"]], body["took_ms"]


def text_tower(vit_l: bool, tiny_dir: Path) -> dict:
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def flops_and_time(model, tokenizer, runs: int) -> tuple[int, float]:
        tokens = tokenizer(["a red office chair"])
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                model.encode_text(tokens)
            model.encode_text(tokens)  # warm
            t0 = time.perf_counter()
            for _ in range(runs):
                model.encode_text(tokens)
        return counter.get_total_flops(), 1000 * (time.perf_counter() - t0) / runs

    out = {}
    tiny, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny_dir}")
    tiny.eval()
    f, ms = flops_and_time(tiny, open_clip.get_tokenizer(f"local-dir:{tiny_dir}"), 20)
    out["tiny"] = {"gflops": round(f / 1e9, 4), "ms": round(ms, 2)}
    if vit_l:
        big = open_clip.create_model("ViT-L-14", pretrained=None)
        big.eval()
        f, ms = flops_and_time(big, open_clip.get_tokenizer("ViT-L-14"), 5)
        out["vit_l_14"] = {"gflops": round(f / 1e9, 3), "ms": round(ms, 1), "weights": "random (same cost)"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--vit-l", action="store_true", help="also time one ViT-L-14 text encoding (random weights)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        model = f"local-dir:{write_local_dir_model(tmp / 'clip')}"
        scans = scenegrep.generate_scans(tmp / "scans", 3, seed=3, preset="small")
        with scenegrep.open(tmp / "home", write=True) as col:
            col.index(scans[:2], clip_model=model)
        port = free_port()
        t0 = time.perf_counter()
        server = start_server(tmp / "home", port)
        startup_s = time.perf_counter() - t0
        result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
                        "server_startup_s": round(startup_s, 2), "clip": "tiny random-weight ViT (dim 64)"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                for i in range(20):
                    one_search(client, QUERIES[i % len(QUERIES)])
                runs = [one_search(client, f"{QUERIES[i % len(QUERIES)]} {i}") for i in range(args.searches)]
                assert all(r[1] == 200 for r in runs), [r[1] for r in runs if r[1] != 200][:5]
                result["idle"] = {**percentiles([r[0] for r in runs]),
                                  "server_p50_ms": round(statistics.median(r[3] for r in runs), 2)}

            # load: concurrent clients while another process indexes and commits a third scan
            indexer = subprocess.Popen([sys.executable, "-m", "scenegrep", "--home", str(tmp / "home"), "index",
                                        str(scans[2]), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            per_client = args.searches // args.clients
            lock, seen, latencies, errors = threading.Lock(), set(), [], []

            def client_run(n: int) -> None:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                    i = 0  # at least per_client searches, and on until the index has committed (bounded)
                    while i < per_client or (indexer.poll() is None and i < 50 * per_client):
                        i += 1
                        ms, status, ids, _ = one_search(c, QUERIES[(n + i) % len(QUERIES)])
                        with lock:
                            latencies.append(ms)
                            seen.update(ids)
                            if status != 200:
                                errors.append(status)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_run, range(args.clients)))
            wall = time.perf_counter() - t0
            if indexer.wait(600) != 0:
                raise RuntimeError(indexer.stderr.read().decode())
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                unknown = [i for i in sorted(seen) if client.get(f"/api/instances/{i}").status_code != 200]
                scans_after = [s["name"] for s in client.get("/api/scans").json()]
            result["load"] = {**percentiles(latencies), "clients": args.clients,
                              "searches_per_s": round(len(latencies) / wall, 1), "errors": len(errors),
                              "unknown_ids": len(unknown), "distinct_ids": len(seen),
                              "scans_after": scans_after}
        finally:
            server.terminate()
            server.wait(30)
        result["text_tower"] = text_tower(args.vit_l, tmp / "clip")
    tt = result["text_tower"]
    if "vit_l_14" in tt:
        result["estimated_idle_p50_ms_with_vit_l_14"] = round(
            result["idle"]["p50_ms"] - tt["tiny"]["ms"] + tt["vit_l_14"]["ms"], 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
