"""Catalog write and filter speed of ``scenegrep.storage.Store``, through its public API.

    python benchmarks/bench_catalog.py --instances 20000 --json benchmarks/results/bench_catalog.json

One run writes ``--instances`` instances (``--per-scan`` per scan, ``--dim``-dimensional unit vectors,
``--mask-points`` point indices per mask, no thumbnails) into a fresh home with a single ``add_scans``
call, so there is one FAISS segment and the time is dominated by preparing and inserting catalog rows.
It then runs ``--queries`` single-vector searches restricted to every scan by name (the filter fetches
the searchable ids of all of them, the cost issue 9 measured) and unfiltered ones. Medians over
``--repeats`` fresh homes; the data is seeded and generated before the clock starts. Besides wall time
the insert reports this process's CPU time (``insert_cpu_s``), steadier on a shared machine.

``--catalog-url URL`` puts each home's catalog in that database instead of the home's SQLite file (e.g.
``postgresql+psycopg://user@host/dbname``). It must name an empty database: the benchmark checks that it
holds no tables, then drops the tables it made (the ``public`` schema) after every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, inspect

from scenegrep.storage import EncoderIdentity, InstanceEntry, ScanEntry, Store
from scenegrep.storage.homeconfig import parse_catalog_url, safe_url


def make_batch(n_instances: int, per_scan: int, dim: int, mask_points: int, scan_points: int, seed: int):
    """``(scan, instances)`` pairs holding ``n_instances`` instances in all."""
    rng = np.random.default_rng(seed)
    batch = []
    for s in range(0, n_instances, per_scan):
        n = min(per_scan, n_instances - s)
        name = f"scan-{s // per_scan:05d}"
        scan = ScanEntry(
            name=name,
            source_path=f"/bench/{name}",
            content_hash=f"h{s}",
            layout="synthetic",
            points=rng.uniform(-3, 3, (scan_points, 3)).astype(np.float32),
            colors=rng.integers(0, 256, (scan_points, 3), dtype=np.uint8),
            frame_count=1,
        )
        vecs = rng.standard_normal((n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        instances = [
            InstanceEntry(
                point_indices=np.sort(rng.choice(scan_points, mask_points, replace=False)),
                score=float(rng.uniform()),
                vector=vecs[i],
                best_frame=0,
            )
            for i in range(n)
        ]
        batch.append((scan, instances))
    return batch


def check_empty(url: str) -> None:
    """Refuse a database that holds tables: the benchmark empties it after each run."""
    engine = create_engine(parse_catalog_url(url))
    try:
        with engine.connect() as con:
            tables = inspect(con).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise SystemExit(
            f"{safe_url(url)} holds tables ({', '.join(tables[:5])}): --catalog-url needs an empty database"
        )


def empty_database(url: str) -> None:
    """Drop what a run created, so the next run starts from an empty database again."""
    engine = create_engine(parse_catalog_url(url))
    try:
        with engine.begin() as con:
            con.exec_driver_sql("DROP SCHEMA public CASCADE")
            con.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


def run_once(args: argparse.Namespace, batch, queries: np.ndarray, encoder: EncoderIdentity) -> dict:
    names = [scan.name for scan, _ in batch]
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        try:
            return measure(args, Store.open(Path(tmp) / "home", catalog_url=args.catalog_url), names, batch,
                           queries, encoder)
        finally:
            if args.catalog_url is not None:
                empty_database(args.catalog_url)


def measure(args: argparse.Namespace, opened: Store, names: list[str], batch, queries: np.ndarray,
            encoder: EncoderIdentity) -> dict:
    """Insert the batch into the freshly opened store, then time the searches."""
    with opened as store:
        t0, c0 = time.perf_counter(), time.process_time()
        store.add_scans(batch, encoder)
        insert_s, insert_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        assert store.stats()["searchable"] == args.instances
        filtered, filtered_cpu, plain = [], [], []
        for q in queries:
            t0, c0 = time.perf_counter(), time.process_time()
            hits = store.search(q, 10, scans=names)
            filtered.append(time.perf_counter() - t0)
            filtered_cpu.append(time.process_time() - c0)
            assert len(hits[0]) == 10
            t0 = time.perf_counter()
            store.search(q, 10)
            plain.append(time.perf_counter() - t0)
    return {
        "insert_s": insert_s,
        "instances_per_s": args.instances / insert_s,
        "insert_cpu_s": insert_cpu_s,
        "instances_per_cpu_s": args.instances / insert_cpu_s,
        "filtered_search_p50_ms": 1000 * statistics.median(filtered),
        "filtered_search_cpu_p50_ms": 1000 * statistics.median(filtered_cpu),
        "search_p50_ms": 1000 * statistics.median(plain),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=20000)
    ap.add_argument("--per-scan", type=int, default=200)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--mask-points", type=int, default=64)
    ap.add_argument("--scan-points", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--catalog-url", default=None, metavar="URL",
                    help="an empty database for the catalog (default: the home's SQLite file)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.catalog_url is not None:
        check_empty(args.catalog_url)

    batch = make_batch(args.instances, args.per_scan, args.dim, args.mask_points, args.scan_points, args.seed)
    queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, args.dim)).astype(np.float32)
    encoder = EncoderIdentity("bench", None, None, args.dim, True)
    runs = [run_once(args, batch, queries, encoder) for _ in range(args.repeats)]
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "catalog": "sqlite" if args.catalog_url is None else parse_catalog_url(args.catalog_url).get_backend_name(),
        "settings": {k: (str(v) if isinstance(v, Path) else safe_url(v) if k == "catalog_url" and v else v)
                     for k, v in vars(args).items()},
        "median": {key: statistics.median(r[key] for r in runs) for key in runs[0]},
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
