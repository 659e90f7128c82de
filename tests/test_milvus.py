"""Vectors in Milvus (milvus-lite): the same answers as the FAISS segments, the commit protocol's crash
reconciliation, migration both ways, the filter translator and the CLI's errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install scenegrep[milvus])")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install scenegrep[milvus])")

from click.testing import CliRunner  # noqa: E402

from scenegrep.storage import EncoderIdentity, InstanceFilter, NotFoundError, Store  # noqa: E402
from scenegrep.storage.backends import VectorsUriError, VectorsUriMismatchError, parse_vectors_uri  # noqa: E402
from scenegrep.storage.milvus_filters import NOTHING, milvus_expression, quote  # noqa: E402
from test_storage_segments import make_scan as segments_scan  # noqa: E402

DIM = 16
ENC = EncoderIdentity("tiny", None, None, DIM, True)
LITE = "milvus-lite:vectors.db"
SCANS = [  # name, seed, tags, proposer: 5 scans x 60 instances = about 250 vectors
    ("kitchen", 1, ("room", "kitchen"), "geometric"),
    ('odd "name" \\ x', 2, ("room",), "mask3d"),
    ("office", 3, ("room", "work"), "mask3d"),
    ("hall", 4, (), "geometric"),
    ("garage", 5, ("work",), "geometric"),
]


def make_scan(name: str, seed: int, tags=(), proposer="geometric", n_inst: int = 60):
    """The storage tests' synthetic scan (tests/test_storage_segments.py), with this file's defaults."""
    return segments_scan(name, seed, n_inst=n_inst, tags=tags, proposer=proposer)


def fill(store: Store) -> None:
    store.add_scans([make_scan(n, s, t, p) for n, s, t, p in SCANS[:3]], ENC)
    store.add_scans([make_scan(n, s, t, p) for n, s, t, p in SCANS[3:]], ENC)


QUERIES = np.random.default_rng(7).standard_normal((4, DIM)).astype(np.float32)

FILTERS = [
    InstanceFilter(),
    InstanceFilter(scans=("kitchen", 'odd "name" \\ x')),
    InstanceFilter(scans=()),
    InstanceFilter(tags=("room",)),
    InstanceFilter(tags=("room", "work")),
    InstanceFilter(min_points=30, max_points=80),
    InstanceFilter(min_extent=0.5),
    InstanceFilter(max_extent=1.2),
    InstanceFilter(proposer="mask3d"),
    InstanceFilter(proposer="none-such"),
    InstanceFilter(scans=("office", "garage"), tags=("work",), min_points=10, max_extent=5.0, proposer="mask3d"),
]


def same_hits(a, b) -> None:
    assert [[i for i, _ in row] for row in a] == [[i for i, _ in row] for row in b]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], atol=1e-5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same scans in an embedded home and in a milvus-lite home (writers, kept open)."""
    root = tmp_path_factory.mktemp("pair")
    faiss_store = Store.open(root / "faiss")
    milvus_store = Store.open(root / "milvus", vectors_uri=LITE)
    for store in (faiss_store, milvus_store):
        fill(store)
    yield faiss_store, milvus_store
    faiss_store.close()
    milvus_store.close()


def test_same_top_k_and_every_filter_as_faiss(pair):
    faiss_store, milvus_store = pair
    assert milvus_store.vectors_uri == LITE and faiss_store.vectors_uri == "embedded"
    assert milvus_store.vector_count() == faiss_store.vector_count() > 200
    for k in (1, 10, 1000):
        same_hits(milvus_store.search(QUERIES, k), faiss_store.search(QUERIES, k))
    for f in FILTERS:
        same_hits(milvus_store.search(QUERIES, 15, filter=f), faiss_store.search(QUERIES, 15, filter=f))
    with pytest.raises(NotFoundError, match="nowhere"):
        milvus_store.search(QUERIES, 5, scans=["nowhere"])
    assert milvus_store.verify() == []
    st = milvus_store.stats()
    assert st["vectors"] == st["searchable"] == st["milvus_entities"] and st["segments"] == 0


def test_remove_and_replace_agree(pair):
    faiss_store, milvus_store = pair
    for store in (faiss_store, milvus_store):
        store.remove_scan("hall")
        store.add_scans([make_scan("kitchen", 11, ("room",), "mask3d")], ENC, replace=True)
    same_hits(milvus_store.search(QUERIES, 20), faiss_store.search(QUERIES, 20))
    for f in FILTERS[1:5] + FILTERS[8:9]:
        same_hits(milvus_store.search(QUERIES, 15, filter=f), faiss_store.search(QUERIES, 15, filter=f))
    backend = milvus_store._vectors
    assert backend.entity_count() == milvus_store.vector_count() == faiss_store.vector_count()  # deletes applied
    assert milvus_store.verify() == []


def test_verify_finds_vectors_the_catalog_does_not_know(pair):
    """A vector written to the collection behind the catalog's back (never searched: hits are intersected
    with the live ids): the quick verify sees the count is off, the full one names the id; once deleted,
    verify is clean."""
    from scenegrep.storage.backends import VectorBatch

    _, milvus_store = pair
    backend = milvus_store._vectors
    stray = 10**12
    vec = np.zeros((1, ENC.dim), np.float32)
    vec[0, 0] = 1.0
    backend.insert(VectorBatch(np.array([stray], np.int64), vec, ["ghost"], [()], np.array([5]), np.array([0.1]),
                               ["geometric"]))
    try:
        (count,) = milvus_store.verify(full=False)
        assert "holds" in count and "live" in count
        count_again, problem = milvus_store.verify()
        assert count_again == count
        assert "holds 1 vectors the catalog does not know" in problem and str(stray) in problem
        assert all(i != stray for hits in milvus_store.search(vec, 50) for i, _ in hits)
    finally:
        backend.delete_ids([stray])
    assert milvus_store.verify() == []


def test_filter_translation_quotes_and_ranges():
    assert milvus_expression(None) == "" and milvus_expression(InstanceFilter()) == ""
    assert milvus_expression(InstanceFilter(scans=())) == NOTHING
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    expr = milvus_expression(InstanceFilter(scans=['x" or id > 0 or "'], tags=("t",), min_points=2, max_extent=1e-7))
    head, number = expr.rsplit(" ", 1)
    assert head == 'scan in ["x\\" or id > 0 or \\""] and array_contains_all(tags, ["t"]) and points >= 2 and extent <='
    assert float(number) == 1e-7 and "e" not in number  # the exact double, in plain digits


def test_uri_parsing_and_mismatch(tmp_path):
    assert parse_vectors_uri("milvus://db.example:19531", tmp_path).text == "http://db.example:19531"
    assert parse_vectors_uri("http://h", tmp_path).text == "http://h:19530"
    assert parse_vectors_uri("milvus-lite:v.db", tmp_path).path == tmp_path / "v.db"
    for bad in ("ftp://x", "milvus-lite:", "milvus-lite:v", "http://h:99999", "nonsense"):
        with pytest.raises(VectorsUriError):
            parse_vectors_uri(bad, tmp_path)
    home = tmp_path / "h"
    with Store.open(home) as store:
        store.add_scans([make_scan("a", 1)], ENC)
    with pytest.raises(VectorsUriMismatchError, match="migrate"):
        Store.open(home, vectors_uri=LITE)
    with Store.open(home, vectors_uri="embedded") as store:  # the recorded one: fine
        assert store.vector_count() > 0


_CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_milvus import ENC, make_scan
    from scenegrep.storage import Store
    store = Store.open({home!r})
    store.add_scans([make_scan("late", 9)], ENC)
    raise SystemExit("the fault did not fire")
    """
)


def test_writer_killed_between_insert_and_commit(tmp_path):
    home = tmp_path / "home"
    with Store.open(home, vectors_uri=LITE) as store:
        store.add_scans([make_scan("early", 8)], ENC)
        before = store.search(QUERIES, 10)
        live = store.vector_count()
    env = {**os.environ, "SCENEGREP_FAULT": "after-vector-insert"}
    code = _CRASHING_WRITER.format(tests=str(Path(__file__).parent), home=str(home))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stderr[-2000:]
    with Store.open(home, read_only=True) as reader:  # nothing of the killed write is visible
        assert reader.search(QUERIES, 10) == before and reader.find_scan("late") is None
        assert reader._vectors.entity_count() > live  # its vectors did reach Milvus
    with Store.open(home) as writer:  # the writer's open deletes them
        assert writer._vectors.entity_count() == writer.vector_count() == live
        assert writer.verify() == [] and writer.search(QUERIES, 10) == before


def test_migrate_both_ways_resumed(tmp_path):
    home = tmp_path / "home"
    with Store.open(home) as store:
        fill(store)
        expected = store.search(QUERIES, 10)
        filtered = store.search(QUERIES, 10, filter=FILTERS[-1])
        first = store.migrate("milvus-lite:moved.db", batch=50, max_batches=2)
        assert not first.done and first.copied == 100 and store.vectors_uri == "embedded"
        assert store.search(QUERIES, 10) == expected  # still served by FAISS meanwhile
    with Store.open(home) as store:  # resumed by a new process's writer
        rest = store.migrate("milvus-lite:moved.db", batch=50)
        assert rest.done and first.copied + rest.copied == rest.total == store.vector_count()
        assert store.vectors_uri == "milvus-lite:moved.db" and store.stats()["segments"] == 0
        same_hits(store.search(QUERIES, 10), expected)
        same_hits(store.search(QUERIES, 10, filter=FILTERS[-1]), filtered)
        assert not list((home / "vectors").iterdir()) and store.verify() == []
    with Store.open(home, read_only=True) as reader:
        same_hits(reader.search(QUERIES, 10), expected)
    with Store.open(home) as store:
        back = store.migrate("embedded")
        assert back.done and store.vectors_uri == "embedded" and store.stats()["segments"] == 1
        same_hits(store.search(QUERIES, 10), expected)
        assert store.verify() == []


def test_cli_vectors_uri_and_migrate(tmp_path, monkeypatch):
    from scenegrep.cli import cli

    runner = CliRunner()
    home = tmp_path / "h"
    res = runner.invoke(cli, ["--home", str(home), "migrate", "--to", "ftp://nowhere"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ftp://nowhere" in lines[0] and "Traceback" not in res.output
    with Store.open(home) as store:
        store.add_scans([make_scan("a", 1)], ENC)
    res = runner.invoke(cli, ["--home", str(home), "migrate", "--to", "milvus-lite:m.db"])
    assert res.exit_code == 0, res.output
    with Store.open(home, read_only=True) as reader:
        assert reader.vectors_uri == "milvus-lite:m.db" and reader.vector_count() > 0
    import scenegrep

    with scenegrep.open(tmp_path / "new", write=True, vectors_uri="milvus-lite:v.db") as col:  # index's path
        assert col.vectors_uri == "milvus-lite:v.db"
    with pytest.raises(VectorsUriMismatchError):
        scenegrep.open(home, write=True, vectors_uri="embedded")


def test_pymilvus_is_imported_only_for_milvus_homes(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from click.testing import CliRunner
        from scenegrep.cli import cli
        from scenegrep.storage import Store
        assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
        Store.open({str(tmp_path / "embedded")!r}).close()
        assert "pymilvus" not in sys.modules and "milvus_lite" not in sys.modules
        with Store.open({str(tmp_path / "m")!r}, vectors_uri="milvus-lite:v.db"):
            assert "pymilvus" in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_empty_home_may_change_its_choice_and_a_bad_lite_path_is_refused(tmp_path):
    home = tmp_path / "h"
    Store.open(home, vectors_uri="milvus-lite:a.db").close()
    with Store.open(home, vectors_uri="embedded") as store:  # nothing committed yet: still free
        assert store.vectors_uri == "embedded"
    with pytest.raises(VectorsUriError, match="ending in .db"):
        Store.open(tmp_path / "other", vectors_uri="milvus-lite:nodb")
    with Store.open(tmp_path / "other") as store:  # the refused URI was not recorded
        assert store.vectors_uri == "embedded"


def test_a_failed_commit_deletes_its_staged_vectors_at_once(tmp_path, monkeypatch):
    from scenegrep.storage.segments import Segments

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    with Store.open(tmp_path / "h", vectors_uri=LITE) as store:
        store.add_scans([make_scan("a", 1)], ENC)
        live = store.vector_count()
        monkeypatch.setattr(Segments, "_bump", boom)  # inside the committing transaction
        with pytest.raises(RuntimeError, match="injected"):
            store.add_scans([make_scan("b", 2)], ENC)
        monkeypatch.undo()
        assert store._vectors.entity_count() == store.vector_count() == live and store.find_scan("b") is None
        assert store.verify() == []
