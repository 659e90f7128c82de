"""Start-up time of the CLI: median wall time of ``scenegrep --help`` and ``scenegrep --version``.

    python benchmarks/bench_startup.py --runs 21 --json benchmarks/results/bench_startup.json

Each run is a fresh process (what a user's shell does). The machine is shared and noisy, so the median
of many runs is reported, with the min and max beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def time_command(args: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "scenegrep"]
    results = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "help": time_command(exe + ["--help"], args.runs),
        "version": time_command(exe + ["--version"], args.runs),
        "python_bare": time_command([sys.executable, "-c", "pass"], args.runs),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
