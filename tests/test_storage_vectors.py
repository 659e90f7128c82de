"""scenegrep.storage.vectors.VectorIndex against a brute-force numpy oracle."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scenegrep.storage.errors import NotFoundError, VectorIndexError
from scenegrep.storage.errors import StoreError
from scenegrep.storage.vectors import VectorIndex

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(ids: np.ndarray, vecs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by cosine with numpy, padded with (-1, -inf) like VectorIndex."""
    sims = queries @ vecs.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out_ids = np.full((len(queries), k), -1, np.int64)
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    m = order.shape[1]
    out_ids[:, :m] = ids[order]
    out_scores[:, :m] = np.take_along_axis(sims, order, axis=1)
    return out_scores, out_ids


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    ids = rng.choice(10_000, size=200, replace=False).astype(np.int64)
    return ids, _unit(rng, 200), _unit(rng, 7)


@pytest.mark.parametrize("k", [1, 5, 200, 250])
def test_search_equals_brute_force(data, k):
    ids, vecs, queries = data
    index = VectorIndex.from_arrays(ids, vecs)
    assert (index.dim, index.ntotal) == (DIM, 200)
    scores, got = index.search(queries, k)
    want_scores, want_ids = _brute(ids, vecs, queries, k)
    assert scores.dtype == np.float32 and got.dtype == np.int64 and got.shape == (7, k)
    np.testing.assert_array_equal(got, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
    if k > 200:
        assert (got[:, 200:] == -1).all() and np.isneginf(scores[:, 200:]).all()


def test_single_query_vector_and_empty_index(data):
    ids, vecs, queries = data
    scores, got = VectorIndex.from_arrays(ids, vecs).search(queries[0], 3)
    assert got.shape == (1, 3)
    empty = VectorIndex(DIM)
    scores, got = empty.search(queries, 4)
    assert (got == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("subset_size", [0, 1, 10, 150])
def test_allowed_ids_gives_top_k_within_subset(data, subset_size):
    ids, vecs, queries = data
    rng = np.random.default_rng(subset_size)
    pick = rng.choice(len(ids), size=subset_size, replace=False)
    allowed = ids[pick]
    index = VectorIndex.from_arrays(ids, vecs)
    k = 20
    scores, got = index.search(queries, k, allowed_ids=allowed)
    want_scores, want_ids = _brute(ids[pick], vecs[pick], queries, k)
    np.testing.assert_array_equal(got, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)


def test_add_validation(data):
    ids, vecs, _ = data
    index = VectorIndex(DIM)
    index.add(ids[:10].astype(np.int32), vecs[:10].astype(np.float64))  # dtypes are cast
    with pytest.raises(ValueError):
        index.add(ids[5:15], vecs[5:15])  # overlaps present ids
    with pytest.raises(ValueError):
        index.add(np.array([1, 1]), vecs[:2])  # duplicate within batch
    with pytest.raises(ValueError):
        index.add(np.array([-1]), vecs[:1])  # -1 is "no result"
    with pytest.raises(ValueError):
        index.add(ids[20:22], vecs[20:22, :5])  # wrong dim
    with pytest.raises(ValueError):
        index.add(ids[20:23], vecs[20:22])  # count mismatch
    with pytest.raises(ValueError):
        index.search(vecs[:1, :5], 1)
    with pytest.raises(ValueError):
        index.search(vecs[:1], 0)
    assert index.ntotal == 10


def test_remove_and_reconstruct(data):
    ids, vecs, queries = data
    index = VectorIndex.from_arrays(ids, vecs)
    assert index.remove(np.concatenate([ids[:50], [999_999]])) == 50
    assert index.remove([]) == 0
    assert index.ntotal == 150
    np.testing.assert_array_equal(np.sort(index.ids()), np.sort(ids[50:]))
    _, got = index.search(queries, 150)
    assert not np.isin(got, ids[:50]).any()
    np.testing.assert_array_equal(index.reconstruct(int(ids[120])), vecs[120])
    with pytest.raises(NotFoundError):
        index.reconstruct(int(ids[0]))


def test_copy_is_independent(data):
    ids, vecs, _ = data
    index = VectorIndex.from_arrays(ids, vecs)
    twin = index.copy()
    twin.remove(ids[:10])
    assert (index.ntotal, twin.ntotal) == (200, 190)


def test_save_load_roundtrip(tmp_path, data):
    ids, vecs, queries = data
    index = VectorIndex.from_arrays(ids, vecs)
    path = tmp_path / "gen-1.faiss"
    index.save(path)
    assert os.listdir(tmp_path) == ["gen-1.faiss"]  # no temp file left behind
    loaded = VectorIndex.load(path, DIM)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    for a, b in zip(loaded.search(queries, 9), index.search(queries, 9)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(VectorIndexError, match="expected 8"):
        VectorIndex.load(path, 8)
    bad = tmp_path / "broken.faiss"
    bad.write_bytes(b"not a faiss file")
    with pytest.raises(VectorIndexError, match="broken.faiss"):
        VectorIndex.load(bad, DIM)
    with pytest.raises(VectorIndexError, match="missing.faiss"):
        VectorIndex.load(tmp_path / "missing.faiss", DIM)


def test_failed_save_leaves_previous_file(tmp_path, data, monkeypatch):
    ids, vecs, _ = data
    path = tmp_path / "v.faiss"
    VectorIndex.from_arrays(ids[:5], vecs[:5]).save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StoreError, match="disk full") as err:
        VectorIndex.from_arrays(ids, vecs).save(path)
    assert isinstance(err.value.__cause__, OSError)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["v.faiss"]
