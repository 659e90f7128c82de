"""Readers search in a loop while a writer process adds, replaces, removes and merges as fast as it can:
no error, no unknown id, every hit resolvable (or removed by a commit that landed between the search and
the lookup).

The writer merges after almost every commit (optimize, and the automatic policy at a merge factor of 2),
so nearly every segment a reader's snapshot names is retired and its file deleted within milliseconds.
The reader opens segments slowly on purpose (a delay before each first open, like a descheduled process
on a loaded machine), which made a reader that opened files lazily by name fail with the file gone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from scenegrep.storage import EncoderIdentity, InstanceEntry, InstanceFilter, ScanEntry, Store, StoreError
from scenegrep.storage import segments as segments_module
from scenegrep.storage.catalog import Catalog
from scenegrep.storage.home import CATALOG_FILE
from scenegrep.storage.segments import RetiredSegmentError, Segments, commit_number

DIM = 32
ENC = EncoderIdentity("conc", None, None, DIM, True)
WRITER_SECONDS = 6.0
OPEN_DELAY_S = 0.03  # before each first open of a segment file by the reader


def _scan(name: str, seed: int):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((40, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    entry = ScanEntry(name, "/x", f"{name}-{seed}", "synthetic", rng.uniform(-1, 1, (800, 3)).astype(np.float32),
                      rng.integers(0, 256, (800, 3), dtype=np.uint8), 1, tags=["t"])
    return entry, [InstanceEntry(np.sort(rng.choice(800, 30, replace=False)), 1.0, vecs[i]) for i in range(40)]


WRITER = textwrap.dedent(
    f"""
    import sys, time
    sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
    from test_storage_concurrency import ENC, _scan
    from scenegrep.storage import Store, merge

    merge.MERGE_FACTOR = 2  # the automatic policy merges after almost every commit
    deadline = time.monotonic() + float(sys.argv[2])
    step = 0
    with Store.open(sys.argv[1]) as store:
        while time.monotonic() < deadline or step < 30:
            name = f"s{{step % 6}}"
            if step % 3 == 1:
                store.optimize()
            elif step % 4 == 2 and store.find_scan(name) is not None:
                store.remove_scan(name)
            else:
                store.add_scans([_scan(name, step)], ENC, replace=store.find_scan(name) is not None)
            step += 1
    print(step)
    """
)


@pytest.fixture
def slow_first_open(monkeypatch):
    """Delay every first open of a segment file by this process (the race window of a loaded machine)."""
    real = segments_module.open_segment

    def slow(*args, **kwargs):
        time.sleep(OPEN_DELAY_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(segments_module, "open_segment", slow)


def test_readers_during_writes(tmp_path, storage_home, slow_first_open):
    home = storage_home
    with Store.open(home) as store:
        store.add_scans([_scan("base", 0)], ENC)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), str(home), str(WRITER_SECONDS)], stdout=subprocess.PIPE,
                              text=True)
    queries = np.random.default_rng(1).standard_normal((2, DIM)).astype(np.float32)
    searches = commits_seen = 0
    deadline = time.monotonic() + 60  # bounded even on a very loaded machine
    try:
        with Store.open(home, read_only=True) as reader:
            while (writer.poll() is None or searches < 20) and time.monotonic() < deadline:
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
        out, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0
    assert searches >= 20 and commits_seen >= 10, (searches, commits_seen, out)
    with Store.open(home) as store:
        assert store.verify() == []


def test_missing_segment_without_a_newer_commit_is_a_one_line_store_error(tmp_path):
    """A file gone while the catalog still names it at the latest commit is damage, not a writer's merge."""
    home = tmp_path / "home"
    with Store.open(home) as store:
        store.add_scans([_scan("a", 0)], ENC)
    (seg,) = (home / "vectors").iterdir()
    seg.unlink()
    with Store.open(home, read_only=True) as reader:
        for _ in range(2):  # the same answer every time, not a retry loop's
            with pytest.raises(StoreError) as err:
                reader.search(np.ones(DIM, np.float32), 5)
            msg = str(err.value)
            assert str(seg) in msg and "missing" in msg and "\n" not in msg
            assert not isinstance(err.value, OSError)


def test_a_pinned_snapshot_outlives_the_merge_that_deletes_its_files(tmp_path):
    """Files of a snapshot taken before a merge stay searchable after the writer deleted them."""
    home = tmp_path / "home"
    with Store.open(home) as store:
        store.add_scans([_scan("a", 0)], ENC)
        store.add_scans([_scan("b", 1)], ENC)
    q = np.random.default_rng(2).standard_normal((1, DIM)).astype(np.float32)
    catalog = Catalog.open(home / CATALOG_FILE, migrate=False)
    segs = Segments(home / "vectors", catalog)
    try:
        segs.refresh()  # pins the two segment files, opens no index
        old = list(segs.snapshot.segments.values())
        assert len(old) == 2
        with Store.open(home) as writer:
            writer.optimize()
        assert not {m.filename for m in old} & {p.name for p in (home / "vectors").iterdir()}  # deleted
        found = sorted(int(i) for m in old for i in segs.index(m).search(q, 40)[1][0] if i >= 0)
        with Store.open(home, read_only=True) as reader:
            assert found == sorted(i for i, _ in reader.search(q, 80)[0])  # the same 80 vectors
    finally:
        segs.clear()
        catalog.close()


def test_os_errors_come_out_as_one_line_store_errors(tmp_path):
    """A home the OS refuses (here: a file where the vectors folder should be) is a StoreError naming it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "vectors").write_text("not a folder")
    with pytest.raises(StoreError) as err:
        Store.open(home)
    assert str(home / "vectors") in str(err.value) and "\n" not in str(err.value)
    assert not isinstance(err.value, OSError)


def test_files_deleted_before_a_snapshot_pins_them_mean_search_the_newer_commit(tmp_path):
    """The one window left: a read transaction still sees commit N while a merge already deleted N's files.
    Loading that snapshot tells it apart from damage by the newer commit and asks for a retry."""
    home = tmp_path / "home"
    with Store.open(home) as store:
        store.add_scans([_scan("a", 0)], ENC)
        store.add_scans([_scan("b", 1)], ENC)
    catalog = Catalog.open(home / CATALOG_FILE, migrate=False)
    segs = Segments(home / "vectors", catalog)
    try:
        with catalog.transaction() as s:
            old = commit_number(s)  # the read transaction's snapshot starts here
            with Store.open(home) as writer:
                writer.optimize()  # commit old + 1, then the two files are deleted
            assert segs.sync(s) and segs.snapshot.commit == old and len(segs.snapshot.segments) == 2
            for meta in segs.snapshot.segments.values():
                with pytest.raises(RetiredSegmentError):
                    segs.index(meta)
            assert segs.damaged() == []  # not damage
        assert segs.refresh() and len(segs.snapshot.segments) == 1  # the newer commit searches fine
        (meta,) = segs.snapshot.segments.values()
        assert segs.index(meta).ntotal == 80
    finally:
        segs.clear()
        catalog.close()
