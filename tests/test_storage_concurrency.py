"""Readers search in a loop while a writer process adds, replaces, removes and optimizes: no error, no
unknown id, every hit resolvable (or removed by a commit that landed between the search and the lookup)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np

from scenegrep.storage import EncoderIdentity, InstanceEntry, InstanceFilter, ScanEntry, Store

DIM = 32
ENC = EncoderIdentity("conc", None, None, DIM, True)


def _scan(name: str, seed: int):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((40, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    entry = ScanEntry(name, "/x", f"{name}-{seed}", "synthetic", rng.uniform(-1, 1, (800, 3)).astype(np.float32),
                      rng.integers(0, 256, (800, 3), dtype=np.uint8), 1, tags=["t"])
    return entry, [InstanceEntry(np.sort(rng.choice(800, 30, replace=False)), 1.0, vecs[i]) for i in range(40)]


WRITER = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
    from test_storage_concurrency import ENC, _scan
    from scenegrep.storage import Store, merge

    merge.MERGE_FACTOR = 3
    with Store.open(sys.argv[1]) as store:
        for step in range(int(sys.argv[2])):
            name = f"s{{step % 6}}"
            if step % 5 == 4:
                store.optimize()
            elif step % 3 == 2 and store.find_scan(name) is not None:
                store.remove_scan(name)
            else:
                store.add_scans([_scan(name, step)], ENC, replace=store.find_scan(name) is not None)
    """
)


def test_readers_during_writes(tmp_path):
    home = tmp_path / "home"
    with Store.open(home) as store:
        store.add_scans([_scan("base", 0)], ENC)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(home), "40"])
    queries = np.random.default_rng(1).standard_normal((2, DIM)).astype(np.float32)
    searches = commits_seen = 0
    deadline = time.monotonic() + 30
    try:
        with Store.open(home, read_only=True) as reader:
            while (writer.poll() is None or searches < 20) and time.monotonic() < deadline and searches < 3000:
                before = reader.refresh() or False
                filt = InstanceFilter(tags=("t",)) if searches % 2 else None
                hits = reader.search(queries, 15, filter=filt)
                ids = {i for row in hits for i, _ in row}
                infos = reader.instances_by_ids(ids)
                moved = reader.refresh()  # a commit between the search and the lookup
                commits_seen += before or moved
                missing = ids - set(infos)
                assert not missing or moved, f"unknown ids {missing} with no commit in between"
                for row in hits:
                    assert len(row) == min(15, reader.vector_count()) or moved
                    assert all(i >= 0 and np.isfinite(s) for i, s in row)
                searches += 1
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert searches >= 20 and commits_seen >= 3
    with Store.open(home) as store:
        assert store.verify() == []
