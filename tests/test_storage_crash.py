"""Crash safety: a writer killed with SIGKILL at random moments of add, replace, remove and optimize leaves a
healthy home, and running the job again converges to the state of a clean run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from scenegrep.storage import Store

# The job: every step states the wanted result, so running the job again after a kill converges.
WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from scenegrep.storage import EncoderIdentity, InstanceEntry, ScanEntry, Store
    from scenegrep.storage import merge

    merge.MERGE_FACTOR = 3  # merge often: a kill then also lands inside automatic merges
    DIM = 32
    ENC = EncoderIdentity("crash", None, None, DIM, True)

    def scan(name, version):
        rng = np.random.default_rng(sum(map(ord, name)) * 100 + version)
        pts = rng.uniform(-2, 2, (3000, 3)).astype(np.float32)
        vecs = rng.standard_normal((60, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        insts = [InstanceEntry(np.sort(rng.choice(3000, 50, replace=False)), 1.0, vecs[i]) for i in range(60)]
        return ScanEntry(name, "/x/" + name, f"{name}-v{version}", "synthetic", pts,
                         rng.integers(0, 256, (3000, 3), dtype=np.uint8), 1), insts

    JOB = [("add", "a", 0), ("add", "b", 0), ("add", "c", 0), ("add", "d", 0), ("replace", "b", 1),
           ("remove", "c", None), ("optimize", None, None), ("add", "e", 0), ("replace", "a", 1),
           ("remove", "d", None), ("add", "f", 0), ("replace", "e", 1), ("optimize", None, None),
           ("add", "g", 0), ("remove", "a", None)]

    with Store.open(sys.argv[1]) as store:
        for kind, name, version in JOB:
            print(kind, flush=True)
            if kind in ("add", "replace"):
                entry, insts = scan(name, version)
                if not store.is_unchanged(name, entry.content_hash):
                    store.add_scans([(entry, insts)], ENC, replace=store.find_scan(name) is not None)
            elif kind == "remove":
                if store.find_scan(name) is not None:
                    store.remove_scan(name)
            else:
                store.optimize()
        print("done", flush=True)
    """
)

KINDS = ("add", "replace", "remove", "optimize")


def _run(script: Path, home: Path, kill_at: str | None = None, skip: int = 0, delay: float = 0.0) -> bool:
    """Run the job; with ``kill_at``, SIGKILL it ``delay`` s after its ``skip``-th start of that step kind.
    Returns True when the job ran to its end."""
    proc = subprocess.Popen([sys.executable, str(script), str(home)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        if line.strip() == kill_at:
            if seen == skip:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return False
            seen += 1
    assert proc.wait() == 0
    return True


def _state(home: Path) -> tuple:
    """What a clean run and a recovered run must agree on (ids differ: compare by scan and mask index)."""
    with Store.open(home, read_only=True) as store:
        scans = sorted((s.name, s.content_hash, s.instances, s.searchable) for s in store.scans())
        queries = np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)
        hits = store.search(queries, 25)
        infos = store.instances_by_ids({i for row in hits for i, _ in row})
        ranked = [[(infos[i].scan_name, infos[i].mask_index, round(s, 4)) for i, s in row] for row in hits]
    return scans, ranked


def _check_healthy(home: Path) -> None:
    with Store.open(home) as store:  # a writer: recovery runs
        assert store.verify() == []
        st = store.stats()
        assert st["vectors"] == st["searchable"] == store.vector_count()
        for scan in store.scans():  # no partial scan: all or nothing
            assert (scan.instances, scan.searchable) == (60, 60)
        assert len(store.search(np.ones(32, np.float32), 10**6)[0]) == st["searchable"]


def test_kill_nine_at_random_moments(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    clean = tmp_path / "clean"
    assert _run(script, clean)
    want = _state(clean)

    home = tmp_path / "home"
    rng = random.Random(0)
    kills = 0
    for round_ in range(24):
        kind = KINDS[round_ % len(KINDS)]
        occurrences = {"add": 2, "replace": 3, "remove": 3, "optimize": 2}[kind]
        finished = _run(script, home, kill_at=kind, skip=rng.randrange(occurrences), delay=rng.uniform(0, 0.08))
        kills += not finished
        _check_healthy(home)
    assert kills >= 20
    assert _run(script, home)
    _check_healthy(home)
    assert _state(home) == want
