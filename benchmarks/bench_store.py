"""Vector store at scale (issue 9), through the public ``scenegrep.storage.Store`` API.

    python benchmarks/bench_store.py --sizes 10000,100000,1000000 --dim 768 --json benchmarks/results/bench_store.json

Per size N, in a fresh home:

1. fill it to N instances in 200-instance scans (``add_scans`` batches of ``--fill-batch`` scans), then
   ``optimize()`` (one IVF segment above 20k, as ``scenegrep optimize`` would leave it);
2. ``commit_s`` / ``commit_bytes``: add one more 200-instance scan, ``--repeats`` times (bytes = what the
   process handed to write(), /proc/self/io wchar: segment file, catalog WAL, point file);
   ``remove_s``: remove those scans again;
3. in a separate reader process: ``open_s`` (read-only ``Store.open``), ``--queries`` single-vector
   searches (k = 10), the same filtered to 100 scans, each timed in :data:`PASSES` passes over the queries
   (``search_p50_ms`` / ``p99``, ``filtered_p50_ms``: the median over passes of each pass's percentile;
   ``*_passes`` lists every pass's p50: this shared machine's noise moves whole passes), and its peak RSS
   (``reader_rss_mb``);
4. ``recall_at_10`` of those searches against exact numpy search over the stored (float16) vectors, and
   ``filtered_recall_at_10`` of the filtered ones against exact search over the 100 scans' vectors.

``--vectors-uri URI`` puts each home's vectors there instead of FAISS segments (``milvus-lite:vectors.db``:
an embedded milvus-lite file in each home; ``http://HOST:19530``: a Milvus server), recorded when the home
is created (storage/backends.py); ``fill_s`` is then the Milvus insert time.

``--workdir DIR --keep`` keeps each filled home (``DIR/home-N``, with the stored vectors in
``DIR/stored-N.npz``); a later run with the same ``--workdir`` and sizes reuses it instead of filling
again (steps 2-4 are measured afresh; ``fill_s`` / ``optimize_s`` are those of the original fill).

Vectors are as hard as CLIP's (issue 9): v = normalize(0.5 m + 0.67 c_k + 0.55 e), one shared direction m,
1,024 concept directions c_k drawn Zipf-like (p ~ k^-1.1), Gaussian noise e (std 1/sqrt(D)); queries come
from the same model. Times are medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scenegrep.storage import EncoderIdentity, InstanceEntry, ScanEntry, Store

PER_SCAN = 200
PASSES = 3  # the reader times every query this many times (passes over all queries)
SCAN_POINTS = 2000
MASK_POINTS = 24


class Model:
    """The issue's synthetic embedding model."""

    def __init__(self, dim: int, concepts: int, seed: int):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.m = _unit(rng.standard_normal(dim))
        self.c = _unit(rng.standard_normal((concepts, dim)))
        p = np.arange(1, concepts + 1, dtype=np.float64) ** -1.1
        self.p = p / p.sum()

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        k = rng.choice(len(self.c), n, p=self.p)
        e = rng.standard_normal((n, self.dim)) / np.sqrt(self.dim)
        return _unit(0.5 * self.m + 0.67 * self.c[k] + 0.55 * e).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_scan(name: str, model: Model, rng: np.random.Generator) -> tuple[ScanEntry, list[InstanceEntry]]:
    scan = ScanEntry(
        name=name,
        source_path=f"/bench/{name}",
        content_hash=name,
        layout="synthetic",
        points=rng.uniform(-3, 3, (SCAN_POINTS, 3)).astype(np.float32),
        colors=rng.integers(0, 256, (SCAN_POINTS, 3), dtype=np.uint8),
        frame_count=1,
        info={"proposer": "bench"},
    )
    vecs = model.draw(rng, PER_SCAN)
    insts = [
        InstanceEntry(np.sort(rng.choice(SCAN_POINTS, MASK_POINTS, replace=False)), 1.0, vecs[i])
        for i in range(PER_SCAN)
    ]
    return scan, insts


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def reader(home: str, queries_file: str, filter_scans: list[str], nprobe: int | None) -> dict:
    """The reader process: open, search, filtered search, peak RSS."""
    queries = np.load(queries_file)
    t0 = time.perf_counter()
    store = Store.open(home, read_only=True)
    open_s = time.perf_counter() - t0
    plain: list[list[float]] = []  # per pass over the queries: this shared machine's noise moves whole passes
    filtered: list[list[float]] = []
    ids, fids = [], []
    store.search(queries[0], 10, nprobe=nprobe)  # first touch: maps and checks the segment files once
    for p in range(PASSES):
        plain.append([])
        for q in queries:
            t0 = time.perf_counter()
            hits = store.search(q, 10, nprobe=nprobe)[0]
            plain[-1].append(time.perf_counter() - t0)
            if p == 0:
                ids.append([i for i, _ in hits])
        filtered.append([])
        for q in queries:
            t0 = time.perf_counter()
            hits = store.search(q, 10, scans=filter_scans, nprobe=nprobe)[0]
            filtered[-1].append(time.perf_counter() - t0)
            assert len(hits) == 10
            if p == 0:
                fids.append([i for i, _ in hits])
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) // 1024
    store.close()
    return {"open_s": open_s, "plain_s": plain, "filtered_s": filtered, "ids": ids, "filtered_ids": fids, "rss_mb": rss}


def fill(
    home: Path, n: int, args: argparse.Namespace, model: Model, rng: np.random.Generator, enc: EncoderIdentity
) -> tuple[np.ndarray, np.ndarray, list[str], float, float, str]:
    """Fill a fresh home to ``n`` instances (``--fill-batch`` scans per commit), then optimize() it.
    Returns the stored (float16) vectors, their ids, the scan names, fill and optimize seconds, the factory."""
    stored = np.empty((n, args.dim), np.float16)
    ids = np.empty(n, np.int64)
    names: list[str] = []
    t_fill = time.perf_counter()
    with Store.open(home, vectors_uri=args.vectors_uri) as store:
        done = 0
        while done < n:
            batch = [make_scan(f"s{(done // PER_SCAN) + j:06d}", model, rng) for j in range(args.fill_batch)]
            batch = batch[: (n - done) // PER_SCAN]
            store.add_scans(batch, enc)
            for scan, insts in batch:
                infos = store.instances(scan.name)
                ids[done : done + PER_SCAN] = [i.id for i in infos]
                stored[done : done + PER_SCAN] = np.stack([x.vector for x in insts]).astype(np.float16)
                names.append(scan.name)
                done += PER_SCAN
            if done % 100_000 < PER_SCAN * args.fill_batch:
                print(f"filled {done} in {time.perf_counter() - t_fill:.0f} s", file=sys.stderr, flush=True)
        fill_s = time.perf_counter() - t_fill
        t0 = time.perf_counter()
        opt = store.optimize()
        optimize_s = time.perf_counter() - t0
    return stored, ids, names, fill_s, optimize_s, str(opt.factory)


def _per_pass(passes: list[list[float]], q: float) -> float:
    """The median over passes of each pass's ``q``-th percentile, in milliseconds."""
    return 1000 * statistics.median(float(np.percentile(p, q)) for p in passes)


def run_size(n: int, args: argparse.Namespace, model: Model, workdir: Path) -> dict:
    rng = np.random.default_rng(args.seed + n)
    home = workdir / f"home-{n}"
    enc = EncoderIdentity("bench", None, None, args.dim, True)
    saved = workdir / f"stored-{n}.npz"
    if saved.exists() and home.exists():  # a kept home (--keep): measure it again without refilling
        with np.load(saved) as z:
            stored, ids, names = z["stored"], z["ids"], [str(x) for x in z["names"]]
            fill_s, optimize_s, factory = float(z["fill_s"]), float(z["optimize_s"]), str(z["factory"])
        print(f"reusing {home} ({n} instances)", file=sys.stderr, flush=True)
    else:
        stored, ids, names, fill_s, optimize_s, factory = fill(home, n, args, model, rng, enc)
        np.savez(saved, stored=stored, ids=ids, names=np.array(names), fill_s=fill_s, optimize_s=optimize_s,
                 factory=np.array(factory))
    with Store.open(home) as store:
        commit_s, commit_bytes, remove_s = [], [], []
        extra = [make_scan(f"x{r:03d}", model, rng) for r in range(args.repeats)]
        for scan in extra:
            w0, t0 = wchar(), time.perf_counter()
            store.add_scans([scan], enc)
            commit_s.append(time.perf_counter() - t0)
            commit_bytes.append(wchar() - w0)
        for scan, _ in extra:
            t0 = time.perf_counter()
            store.remove_scan(scan.name)
            remove_s.append(time.perf_counter() - t0)
        st = store.stats()
    queries = model.draw(np.random.default_rng(args.seed + 7), args.queries)
    qfile = workdir / f"queries-{n}.npy"
    np.save(qfile, queries)
    pick = np.random.default_rng(args.seed + 8).choice(len(names), min(100, len(names)), replace=False)
    out = subprocess.run(
        [sys.executable, __file__, "--reader", str(home), "--queries-file", str(qfile),
         "--filter-scans", ",".join(names[i] for i in pick)] + (["--nprobe", str(args.nprobe)] if args.nprobe else []),
        capture_output=True, text=True, check=True,
    )
    r = json.loads(out.stdout)
    # exact top-10 over the stored float16 vectors, in chunks (bounded memory)
    best = np.full((len(queries), 10), -np.inf, np.float32)
    best_ids = np.full((len(queries), 10), -1, np.int64)
    for start in range(0, n, 100_000):
        sims = queries @ stored[start : start + 100_000].astype(np.float32).T
        cand = np.concatenate([best, sims], axis=1)
        cid = np.concatenate([best_ids, np.broadcast_to(ids[start : start + 100_000], sims.shape)], axis=1)
        top = np.argsort(-cand, axis=1)[:, :10]
        best, best_ids = np.take_along_axis(cand, top, 1), np.take_along_axis(cid, top, 1)
    recall = float(np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(r["ids"], best_ids)]))
    # the filtered search against the exact top-10 of the filtered set (the instances of the picked scans)
    scan_of = np.repeat(np.arange(len(names)), PER_SCAN)[: len(ids)]  # fill order: PER_SCAN ids per scan
    allowed = np.isin(scan_of, pick)
    sims = queries @ stored[allowed].astype(np.float32).T
    exact_f = ids[allowed][np.argsort(-sims, axis=1)[:, :10]]
    filtered_recall = float(np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(r["filtered_ids"], exact_f)]))
    disk = st["bytes_catalog"] + st["bytes_vectors"] + st["bytes_points"] + st.get("bytes_milvus_lite", 0)
    return {
        "n": n,
        "vectors_uri": args.vectors_uri or "embedded",
        "commit_s": statistics.median(commit_s),
        "commit_bytes": int(statistics.median(commit_bytes)),
        "remove_s": statistics.median(remove_s),
        # the median over the reader's passes of each pass's percentile (the first pass runs on a cold process)
        "search_p50_ms": _per_pass(r["plain_s"], 50),
        "search_p99_ms": _per_pass(r["plain_s"], 99),
        "filtered_p50_ms": _per_pass(r["filtered_s"], 50),
        "search_p50_ms_passes": [round(1000 * float(np.percentile(p, 50)), 2) for p in r["plain_s"]],
        "filtered_p50_ms_passes": [round(1000 * float(np.percentile(p, 50)), 2) for p in r["filtered_s"]],
        "recall_at_10": recall,
        "filtered_recall_at_10": filtered_recall,
        "open_s": r["open_s"],
        "reader_rss_mb": r["rss_mb"],
        "disk_bytes_per_instance": disk / n,
        "fill_s": fill_s,
        "optimize_s": optimize_s,
        "index_types": st["index_types"],
        "commit_s_max": max(commit_s),
        "optimize_factory": factory,
        "bench_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concepts", type=int, default=1024)
    ap.add_argument("--fill-batch", type=int, default=50, help="scans per add_scans call while filling")
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vectors-uri", default=None,
                    help="keep the vectors in Milvus: milvus-lite:vectors.db (per home) or http://HOST:19530")
    ap.add_argument("--workdir", type=Path, default=None, help="where the homes go (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the filled homes in --workdir (reused next time)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--reader", help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", help=argparse.SUPPRESS)
    ap.add_argument("--filter-scans", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:
        print(json.dumps(reader(args.reader, args.queries_file, args.filter_scans.split(","), args.nprobe)))
        return
    model = Model(args.dim, args.concepts, args.seed)
    results = []
    if args.keep and args.workdir is None:
        ap.error("--keep needs --workdir")
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.workdir.mkdir(parents=True, exist_ok=True)
            tmp = str(args.workdir)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.workdir))
        for n in (int(x) for x in args.sizes.split(",")):
            results.append(run_size(n, args, model, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
            if args.json:  # after every size: a long run keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({
                    "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs".strip(),
                    "python": platform.python_version(),
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                 if k not in ("reader", "queries_file", "filter_scans")},
                    "sizes": results,
                }, indent=2) + "\n")


if __name__ == "__main__":
    main()
