"""scenegrep.storage.Store: the commit protocol, recovery, and exact oracles (brute-force cosine, numpy bboxes)."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import inspect

from scenegrep.errors import ScenegrepError
from scenegrep.storage import (
    CatalogError,
    CatalogVersionError,
    EncoderIdentity,
    EncoderMismatchError,
    InstanceEntry,
    NotFoundError,
    ScanEntry,
    ScanExistsError,
    Store,
    StoreError,
    StoreLockedError,
    VectorIndex,
)
from scenegrep.storage import errors as storage_errors
from scenegrep.storage.catalog import Base, Catalog
from scenegrep.storage import catalog as catalog_module
from scenegrep.storage import commit as commit_module
from scenegrep.storage.commit import Writer
from scenegrep.storage.segments import Segments

from pgserver import catalog_sql, on_postgresql

DIM = 8
ENC = EncoderIdentity("tiny-clip", "test-weights", "ab" * 32, DIM, False, {"mean": [0.5]})


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_scan(name: str, seed: int, n_points: int = 3000, n_inst: int = 12, unsearchable: tuple[int, ...] = (3,)):
    """A random scan; instances ``unsearchable`` get no vector."""
    rng = np.random.default_rng(seed)
    scan = ScanEntry(
        name=name,
        source_path=f"/data/{name}",
        content_hash=f"hash-{name}-{seed}",
        layout="synthetic",
        points=rng.uniform(-3, 3, (n_points, 3)).astype(np.float32),
        colors=rng.integers(0, 256, (n_points, 3), dtype=np.uint8),
        frame_count=5,
        tags=["test"],
        info={"seed": seed},
    )
    vecs = _unit(rng, n_inst)
    instances = [
        InstanceEntry(
            point_indices=np.sort(rng.choice(n_points, size=int(rng.integers(1, 400)), replace=False)),
            score=float(rng.uniform()),
            vector=None if i in unsearchable else vecs[i],
            thumbnail=None if i % 2 else b"\xff\xd8jpeg" + bytes([i]),
            best_frame=None if i % 3 == 0 else i % 5,
        )
        for i in range(n_inst)
    ]
    return scan, instances


def brute_force(store: Store, queries: np.ndarray, k: int, scans: list[str] | None = None):
    """Top-k (id, score) by cosine over the stored vectors of the given (default: all) scans."""
    names = scans if scans is not None else [s.name for s in store.scans()]
    ids, vecs = [], []
    for name in names:
        for info in store.instances(name):
            v = store.instance_vector(info.id)
            if v is not None:
                ids.append(info.id)
                vecs.append(v)
    ids_arr, vecs_arr = np.array(ids), np.stack(vecs)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ vecs_arr.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[(int(ids_arr[j]), float(sims[r, j])) for j in row] for r, row in enumerate(order)]


def assert_same_hits(got, want):
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-5)


def pending_rows(home: Path) -> int:
    return catalog_sql(home, "SELECT COUNT(*) FROM scans WHERE status = 'pending'")[0][0]


def sqlite_only(home: Path, why: str) -> None:
    if on_postgresql(home):
        pytest.skip(f"SQLite catalog only: {why}")


def files(home: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (home / sub).iterdir())


@pytest.fixture
def home(storage_home) -> Path:
    """A new home, on each catalog database (conftest.py's storage_home)."""
    return storage_home


@pytest.fixture
def two_scans(home):
    """A writer store holding scans "a" and "b"; yields (store, {name: (scan, instances)})."""
    data = {"a": make_scan("a", 1), "b": make_scan("b", 2, unsearchable=(0, 5))}
    store = Store.open(home)
    store.add_scans(list(data.values()), ENC)
    yield store, data
    store.close()


QUERIES = _unit(np.random.default_rng(99), 5) * 3.0  # not unit: the store normalises


def test_search_equals_brute_force(two_scans):
    store, _ = two_scans
    for k in (1, 4, 19, 100):  # 21 searchable in all; k=100 gets all of them
        got = store.search(QUERIES, k)
        assert_same_hits(got, brute_force(store, QUERIES, k))
    assert len(store.search(QUERIES, 100)[0]) == 21
    assert_same_hits(store.search(QUERIES, 5, scans=["b"]), brute_force(store, QUERIES, 5, ["b"]))
    assert_same_hits(store.search(QUERIES[0], 3), brute_force(store, QUERIES[:1], 3))
    with pytest.raises(NotFoundError, match="nope"):
        store.search(QUERIES, 3, scans=["a", "nope"])
    with pytest.raises(ValueError):
        store.search(np.zeros(DIM, np.float32), 3)


def test_points_bbox_and_metadata_exact(two_scans):
    store, data = two_scans
    for name, (scan, instances) in data.items():
        xyz, rgb = store.scan_points(name)
        np.testing.assert_array_equal(xyz, scan.points)
        np.testing.assert_array_equal(rgb, scan.colors)
        infos = store.instances(name)
        assert [i.mask_index for i in infos] == list(range(len(instances)))
        for info, inst in zip(infos, instances):
            idx, pxyz, prgb = store.instance_points(info.id)
            assert idx.dtype == np.uint32
            np.testing.assert_array_equal(idx, inst.point_indices)
            np.testing.assert_array_equal(pxyz, scan.points[idx])
            np.testing.assert_array_equal(prgb, scan.colors[idx])
            pts = scan.points[inst.point_indices]
            want_bbox = np.concatenate([pts.min(0), pts.max(0)])
            assert info.bbox.dtype == np.float32 and info.bbox.shape == (6,)
            np.testing.assert_array_equal(info.bbox, want_bbox)
            assert info.point_count == len(inst.point_indices) and info.scan_name == name
            assert info.score == pytest.approx(inst.score)
            assert info.best_frame == inst.best_frame
            assert info.has_thumbnail == (inst.thumbnail is not None)
            assert store.thumbnail(info.id) == inst.thumbnail
            one = store.instance(info.id)
            assert one.id == info.id and np.array_equal(one.bbox, info.bbox)
    scan_a = store.find_scan("a")
    assert scan_a is not None and (scan_a.instances, scan_a.searchable) == (12, 11)
    assert scan_a.tags == ["test"] and scan_a.info == {"seed": 1} and scan_a.status == "indexed"
    assert [s.name for s in store.scans()] == ["a", "b"]
    assert store.find_scan("zzz") is None
    with pytest.raises(NotFoundError):
        store.instance(10**9)


def test_unsearchable_instances_listed_but_never_returned(two_scans):
    store, _ = two_scans
    hidden = [i.id for name in ("a", "b") for i in store.instances(name) if not i.searchable]
    assert len(hidden) == 3
    for iid in hidden:
        assert store.instance_vector(iid) is None
    returned = {i for row in store.search(QUERIES, 1000) for i, _ in row}
    assert returned.isdisjoint(hidden) and len(returned) == 21


def test_vectors_stored_as_float16(two_scans):
    store, data = two_scans
    scan, instances = data["a"]
    info = store.instances("a")[0]
    v = store.instance_vector(info.id)
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v, instances[0].vector.astype(np.float16).astype(np.float32))


def test_is_unchanged_replace_and_exists(two_scans, home):
    store, data = two_scans
    scan_a, _ = data["a"]
    assert store.is_unchanged("a", scan_a.content_hash)
    assert not store.is_unchanged("a", "other")
    assert not store.is_unchanged("zzz", scan_a.content_hash)
    old_id = store.find_scan("a").id
    old_ids = {i.id for i in store.instances("a")}
    new = make_scan("a", 7, n_inst=4, unsearchable=())
    with pytest.raises(ScanExistsError):
        store.add_scans([new], ENC)
    (new_id,) = store.add_scans([new], ENC, replace=True)
    assert new_id != old_id and store.find_scan("a").id == new_id
    assert store.is_unchanged("a", new[0].content_hash)
    new_ids = {i.id for i in store.instances("a")}
    assert len(new_ids) == 4 and new_ids.isdisjoint(old_ids)
    returned = {i for row in store.search(QUERIES, 1000) for i, _ in row}
    assert returned.isdisjoint(old_ids) and new_ids <= returned
    assert_same_hits(store.search(QUERIES, 6), brute_force(store, QUERIES, 6))
    assert f"{old_id}.npz" not in files(home, "points")
    # segments: the replacement added one segment; its 11 tombstones were over 30 % of the first segment,
    # so the automatic policy rewrote that one without them (storage/merge.py)
    st = store.stats()
    assert len(files(home, "vectors")) == 2 and (st["segments"], st["tombstones"], st["vectors"]) == (2, 0, 14)
    assert store.verify() == []


def test_remove_scan(two_scans, home):
    store, _ = two_scans
    ids = [i.id for i in store.instances("a")]
    scan_id = store.find_scan("a").id
    assert store.remove_scan("a") == 12
    assert store.find_scan("a") is None and [s.name for s in store.scans()] == ["b"]
    returned = {i for row in store.search(QUERIES, 1000) for i, _ in row}
    assert returned.isdisjoint(ids)
    with pytest.raises(NotFoundError):
        store.instance(ids[0])
    with pytest.raises(NotFoundError):
        store.remove_scan("a")
    assert catalog_sql(home, "SELECT COUNT(*) FROM instances WHERE scan_id = :s", {"s": scan_id}) == [(0,)]
    assert files(home, "points") == [f"{store.find_scan('b').id}.npz"]
    assert store.stats()["vectors"] == 10
    assert store.verify() == []


def test_reopen_persists(two_scans, home):
    store, _ = two_scans
    before = store.search(QUERIES, 7)
    stats = store.stats()
    store.close()
    with Store.open(home) as again:
        assert again.search(QUERIES, 7) == before
        assert again.stats()["generation"] == stats["generation"]
        assert again.encoder().matches(ENC) and again.encoder().details == ENC.details
        assert again.verify() == []


def test_stats(two_scans):
    store, _ = two_scans
    st = store.stats()
    assert (st["scans"], st["instances"], st["searchable"], st["vectors"], st["dim"]) == (2, 24, 21, 21, DIM)
    assert st["encoder"] == ENC.describe() and st["generation"] == 1
    assert st["bytes_catalog"] > 0 and st["bytes_vectors"] > 0 and st["bytes_points"] > 0


def _boom(*args, **kwargs):
    raise OSError("injected failure")


@pytest.mark.parametrize("where", ["save", "commit"])
def test_failure_before_commit_point_keeps_old_state(two_scans, home, monkeypatch, where):
    store, _ = two_scans
    before = store.search(QUERIES, 10)
    points_before, vectors_before = files(home, "points"), files(home, "vectors")
    if where == "save":
        monkeypatch.setattr(commit_module, "write_segment", _boom)
    else:
        monkeypatch.setattr(Segments, "_bump", _boom)  # inside the committing transaction
    with pytest.raises(StoreError, match="injected") as err:  # an OS error comes out as a StoreError
        store.add_scans([make_scan("c", 3), make_scan("a", 4)], ENC, replace=True)
    assert isinstance(err.value.__cause__, OSError) and str(home) in str(err.value)
    monkeypatch.undo()
    assert store.search(QUERIES, 10) == before
    assert [s.name for s in store.scans()] == ["a", "b"]
    assert pending_rows(home) == 0
    assert files(home, "points") == points_before and files(home, "vectors") == vectors_before
    assert store.verify() == []
    store.add_scans([make_scan("c", 3)], ENC)  # still writable
    assert store.find_scan("c") is not None


def test_failed_first_write_records_no_encoder(home, monkeypatch):
    with Store.open(home) as store:
        monkeypatch.setattr(commit_module, "write_segment", _boom)
        with pytest.raises(StoreError):
            store.add_scans([make_scan("a", 1)], ENC)
        monkeypatch.undo()
        assert store.encoder() is None and store.scans() == []
        other = EncoderIdentity("other", None, None, DIM, True, {})
        store.add_scans([make_scan("a", 1)], other)  # a different model is still allowed
        assert store.encoder().matches(other)


def test_recovery_after_crash(two_scans, home, monkeypatch, caplog):
    store, _ = two_scans
    before = store.search(QUERIES, 10)
    # a crash between steps: the undo never runs
    monkeypatch.setattr(Writer, "_undo_pending", lambda *a, **k: None)
    monkeypatch.setattr(Segments, "_bump", _boom)
    with pytest.raises(StoreError):
        store.add_scans([make_scan("c", 3)], ENC)
    monkeypatch.undo()
    store.close()
    assert pending_rows(home) == 1 and len(files(home, "points")) == 3
    (home / "vectors" / "gen-99.faiss").write_bytes(b"orphan")
    (home / "vectors" / ".gen-2.faiss.abc.tmp").write_bytes(b"temp")
    (home / "points" / "12345.npz").write_bytes(b"orphan")
    with caplog.at_level(logging.WARNING, logger="scenegrep.storage"), Store.open(home) as again:
        assert pending_rows(home) == 0
        assert len(files(home, "points")) == 2 and len(files(home, "vectors")) == 1
        assert again.search(QUERIES, 10) == before
        assert again.verify() == []
    assert "pending" in caplog.text and "gen-99.faiss" in caplog.text and "12345.npz" in caplog.text


def _only_segment(home: Path) -> Path:
    (path,) = sorted((home / "vectors").glob("seg-*.faiss"))
    return path


def test_ntotal_mismatch_triggers_rebuild(two_scans, home, caplog):
    store, _ = two_scans
    gen = store.stats()["generation"]
    victim = store.search(QUERIES[:1], 1)[0][0][0]
    store.close()
    path = _only_segment(home)
    damaged = faiss.read_index(str(path))
    damaged.remove_ids(faiss.IDSelectorBatch(np.array([victim], np.int64)))
    faiss.write_index(damaged, str(path))
    with caplog.at_level(logging.WARNING, logger="scenegrep.storage"), Store.open(home) as again:
        assert "rebuilding" in caplog.text
        st = again.stats()
        assert st["generation"] == gen + 1 and st["vectors"] == 21
        assert files(home, "vectors") == [_only_segment(home).name] != [path.name]
        assert_same_hits(again.search(QUERIES, 5), brute_force(again, QUERIES, 5))
        assert again.verify() == []


def test_unreadable_generation_triggers_rebuild(two_scans, home):
    store, _ = two_scans
    store.close()
    _only_segment(home).write_bytes(b"garbage")
    with Store.open(home) as again:
        assert again.stats()["vectors"] == 21
        assert again.verify() == []


def test_verify_reports_problems(two_scans, home):
    store, _ = two_scans
    (home / "points" / f"{store.find_scan('a').id}.npz").unlink()
    (home / "vectors" / "stray.faiss").write_bytes(b"x")
    problems = store.verify()
    assert any("point file" in p for p in problems) and any("stray" in p for p in problems)


def test_encoder_mismatch(two_scans):
    store, _ = two_scans
    other = EncoderIdentity("ViT-B-32", "openai", None, DIM, False, {})
    store.check_encoder(EncoderIdentity(ENC.name, ENC.pretrained, ENC.checkpoint_sha256, DIM, False, {"x": 1}))
    with pytest.raises(EncoderMismatchError) as err:
        store.check_encoder(other)
    msg = str(err.value)
    assert "tiny-clip" in msg and "ViT-B-32" in msg and "--home" in msg and "\n" not in msg
    with pytest.raises(EncoderMismatchError):
        store.add_scans([make_scan("c", 3)], other)
    assert store.find_scan("c") is None


def test_bad_instances_rejected(home):
    scan, instances = make_scan("a", 1)
    with Store.open(home) as store:
        wrong_dim = EncoderIdentity("m", None, None, DIM + 1, False, {})
        with pytest.raises(ValueError, match="dim"):
            store.add_scans([(scan, instances)], wrong_dim)
        out_of_range = InstanceEntry(np.array([0, len(scan.points)]), 1.0, None)
        with pytest.raises(ValueError, match="point index"):
            store.add_scans([(scan, [out_of_range])], ENC)
        with pytest.raises(ValueError):
            store.add_scans([(scan, instances), (scan, instances)], ENC)
        assert store.scans() == [] and store.encoder() is None
    with pytest.raises(ValueError):
        InstanceEntry(np.array([3, 1]), 1.0)
    with pytest.raises(ValueError):
        InstanceEntry(np.array([1, 3]), 1.0, np.ones(DIM, np.float32))  # not unit-norm
    with pytest.raises(ValueError):
        ScanEntry("x", "/x", "h", "l", np.zeros((4, 3)), np.zeros((4, 3), np.float32), 0)


def test_ids_never_reused(home):
    with Store.open(home) as store:
        store.add_scans([make_scan("a", 1)], ENC)
        old = [i.id for i in store.instances("a")]
        old_scan = store.find_scan("a").id
        store.remove_scan("a")
        store.add_scans([make_scan("b", 2)], ENC)
        assert min(i.id for i in store.instances("b")) > max(old)
        assert store.find_scan("b").id > old_scan


def test_lock_prevents_second_writer(two_scans, home):
    store, _ = two_scans
    with pytest.raises(StoreLockedError, match="another scenegrep process"):
        Store.open(home)
    with Store.open(home, read_only=True) as reader:  # readers take no lock
        assert_same_hits(reader.search(QUERIES, 5), store.search(QUERIES, 5))
        store.add_scans([make_scan("c", 3)], ENC)  # reader follows the new generation
        assert_same_hits(reader.search(QUERIES, 30), store.search(QUERIES, 30))
        with pytest.raises(StoreError, match="read-only"):
            reader.remove_scan("a")
    store.close()
    with Store.open(home):
        pass


def test_future_schema_version_raises(home):
    Store.open(home).close()
    catalog_sql(home, "INSERT INTO schema_version VALUES (999, 'from the future', '2100-01-01')")
    with pytest.raises(CatalogVersionError, match="999"):
        Store.open(home)
    catalog_sql(home, "DELETE FROM schema_version WHERE version = 999")
    Store.open(home).close()  # the failed open released the lock


def test_migrations_match_models(tmp_path):
    catalog = Catalog.open(tmp_path / "c.sqlite")
    try:
        insp = inspect(catalog.engine)
        for table in Base.metadata.sorted_tables:
            assert {c["name"] for c in insp.get_columns(table.name)} == set(table.columns.keys()), table.name
            assert {i["name"] for i in insp.get_indexes(table.name)} == {i.name for i in table.indexes}
        with catalog.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert catalog.schema_version() == 4
    finally:
        catalog.close()


_V2_SCAN_COLUMNS = (
    "id, name, source_path, content_hash, layout, point_count, frame_count, tags_json, info_json, status, "
    "indexed_at, encoder_id"
)
_V2_INSTANCE_COLUMNS = (
    "id, scan_id, mask_index, point_count, min_x, min_y, min_z, max_x, max_y, max_z, score, point_indices, "
    "vector, searchable, thumbnail, best_frame"
)


def _downgrade_to_schema_2(home: Path, monkeypatch) -> None:
    """Rewrite a home as release 2 left it: schema 2 and one ``vectors/gen-1.faiss`` generation."""
    old = home / "catalog.v2.sqlite"
    with monkeypatch.context() as m:
        m.setattr(catalog_module, "MIGRATIONS", catalog_module.MIGRATIONS[:2])
        m.setattr(catalog_module, "SCHEMA_VERSION", 2)
        Catalog.open(old).close()
    con = sqlite3.connect(old)
    with con:
        con.execute("ATTACH DATABASE ? AS cur", (str(home / "catalog.sqlite"),))
        con.execute("INSERT INTO encoders SELECT * FROM cur.encoders")
        con.execute(f"INSERT INTO scans ({_V2_SCAN_COLUMNS}) SELECT {_V2_SCAN_COLUMNS} FROM cur.scans")
        con.execute(f"INSERT INTO instances ({_V2_INSTANCE_COLUMNS}) SELECT {_V2_INSTANCE_COLUMNS} FROM cur.instances")
        rows = con.execute("SELECT id, vector FROM instances WHERE searchable ORDER BY id").fetchall()
        con.execute("INSERT INTO generations VALUES (1, '2024-01-01 00:00:00', 'gen-1.faiss', ?, 1)", (len(rows),))
    con.execute("DETACH DATABASE cur")
    con.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to move into place
    con.close()
    ids = np.array([r[0] for r in rows], np.int64)
    vecs = np.stack([np.frombuffer(r[1], "<f2").astype(np.float32) for r in rows])
    for f in (home / "vectors").iterdir():
        f.unlink()
    VectorIndex.from_arrays(ids, vecs).save(home / "vectors" / "gen-1.faiss")
    for f in home.glob("catalog.sqlite*"):
        f.unlink()
    old.rename(home / "catalog.sqlite")


def test_v1_catalog_is_upgraded_by_a_writer(two_scans, home, monkeypatch):
    sqlite_only(home, "the old catalog is built with sqlite3 (tests/test_catalog_postgres.py upgrades on PostgreSQL)")
    store, _ = two_scans
    before = store.search(QUERIES, 5)
    store.close()
    _downgrade_to_schema_2(home, monkeypatch)
    with pytest.raises(CatalogVersionError, match="open it once for writing"):
        Store.open(home, read_only=True)
    with Store.open(home) as again:
        assert again.search(QUERIES, 5) == before and again.verify() == []
        assert again.is_unchanged("a", make_scan("a", 1)[0].content_hash)  # point checksums were recorded
    with sqlite3.connect(home / "catalog.sqlite") as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 4
    assert "ix_instances_scan_searchable" in names and "ix_instances_filter" in names
    assert "gen-1.faiss" not in files(home, "vectors") and len(files(home, "vectors")) == 1


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header-only":
        path.write_bytes(data[:100])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["random", "truncated", "header-only"])
@pytest.mark.parametrize("read_only", [True, False])
def test_corrupt_catalog_is_a_one_line_store_error(two_scans, home, how, read_only):
    sqlite_only(home, "corrupts the catalog file")
    store, _ = two_scans
    store.close()
    catalog = home / "catalog.sqlite"
    for companion in ("catalog.sqlite-wal", "catalog.sqlite-shm"):  # the writer checkpointed on close
        assert not (home / companion).exists()
    _corrupt(catalog, how)
    kept = files(home, "points") + files(home, "vectors")
    for _ in range(2):  # a failed writer open released the lock: the second try fails the same way
        with pytest.raises(StoreError) as err:
            Store.open(home, read_only=read_only)
        msg = str(err.value)
        assert isinstance(err.value, CatalogError) and isinstance(err.value, ScenegrepError)
        assert msg.startswith(f"{catalog}: ") and "\n" not in msg
        assert "damaged or not a scenegrep catalog" in msg
        assert not any(word in msg for word in ("SELECT", "PRAGMA", "[SQL", "sqlalche.me"))
    assert files(home, "points") + files(home, "vectors") == kept  # no recovery ran on a bad catalog


def test_empty_catalog_never_wipes_the_home(two_scans, home):
    sqlite_only(home, "empties the catalog file (tests/test_catalog_postgres.py empties the database)")
    store, _ = two_scans
    store.close()
    kept = files(home, "points") + files(home, "vectors")
    (home / "catalog.sqlite").write_bytes(b"")
    with pytest.raises(CatalogError, match="empty file") as err:
        Store.open(home, read_only=True)
    assert str(err.value).startswith(str(home / "catalog.sqlite"))
    with pytest.raises(CatalogError, match="vector/point file") as err:
        Store.open(home)
    assert str(err.value).startswith(str(home / "catalog.sqlite")) and "\n" not in str(err.value)
    assert files(home, "points") + files(home, "vectors") == kept
    (home / "catalog.sqlite").unlink()
    with pytest.raises(CatalogError, match="missing catalog"):
        Store.open(home)
    assert files(home, "points") + files(home, "vectors") == kept


@pytest.mark.parametrize("bad_id", [99999999999999999999, 2**63, -(2**63) - 1, -5])
def test_out_of_range_instance_id_is_not_found(two_scans, bad_id):
    store, _ = two_scans
    for read in (store.instance, store.instance_points, store.instance_vector, store.thumbnail):
        with pytest.raises(NotFoundError) as err:
            read(bad_id)
        assert str(bad_id) in str(err.value) and "\n" not in str(err.value)
    real = store.instances("a")[0].id
    assert list(store.instances_by_ids([bad_id, real])) == [real]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(home, umask):
    old = os.umask(umask)
    try:
        with Store.open(home) as store:
            store.add_scans([make_scan("a", 1)], ENC)
            store.add_scans([make_scan("b", 2)], ENC)  # a second generation replaces the first file
    finally:
        os.umask(old)
    written = [home / "points" / f for f in files(home, "points")] + [home / "vectors" / f for f in files(home, "vectors")]
    assert len(written) == 4  # two point files, two segments (one per commit)
    for path in written + ([] if on_postgresql(home) else [home / "catalog.sqlite"]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    made_here = [home / "points", home / "vectors"] + ([] if on_postgresql(home) else [home])  # (else the fixture made it)
    for folder in made_here:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder


def test_every_storage_error_has_the_one_root():
    classes = [getattr(storage_errors, name) for name in storage_errors.__all__]
    assert CatalogError in classes and len(classes) >= 8
    for cls in classes:
        assert issubclass(cls, StoreError) and issubclass(cls, ScenegrepError), cls


def test_damaged_point_file_is_a_store_error(two_scans, home):
    store, _ = two_scans
    info = store.instances("a")[0]
    path = home / "points" / f"{info.scan_id}.npz"
    path.write_bytes(path.read_bytes()[:200])  # a truncated zip
    for read in (lambda: store.instance_points(info.id), lambda: store.scan_points("a")):
        with pytest.raises(StoreError, match="cannot read point file") as err:
            read()
        assert str(path) in str(err.value)
