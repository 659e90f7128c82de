"""Mask3D / OpenMask3D post-processing: exact DBSCAN (sklearn as the oracle), parity with the original
code's outputs stored in ../shared/fixtures/mask3d-parity, and the project's default mode."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN

from scenegrep.indexer.proposals.mask3d import postprocess as pp
from scenegrep.indexer.proposals.mask3d.postprocess import EpsComponents, PostprocessConfig, dbscan_labels, postprocess

# -- exact DBSCAN ---------------------------------------------------------------------------------------


def _sklearn(xyz: np.ndarray, eps: float, algorithm: str = "auto") -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=1, algorithm=algorithm).fit(xyz).labels_


@pytest.mark.parametrize("seed", range(6))
def test_components_equal_sklearn_dbscan_on_random_and_clustered_clouds(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 2500))
    uniform = (rng.random((n, 3)) * rng.uniform(2, 25)).astype(np.float32)
    centres = rng.random((8, 3)) * 10
    clustered = (centres[rng.integers(0, 8, n)] + rng.normal(0, 0.3, (n, 3))).astype(np.float32)
    for xyz in (uniform, clustered):
        for eps in (0.95, 0.15):
            np.testing.assert_array_equal(EpsComponents(xyz, eps).labels(), _sklearn(xyz, eps))


def test_components_of_subsets_equal_sklearn_on_the_subset():
    rng = np.random.default_rng(3)
    xyz = (rng.random((3000, 3)) * [8, 6, 3]).astype(np.float32)
    graph = EpsComponents(xyz, 0.3)
    for _ in range(5):
        subset = np.flatnonzero(rng.random(3000) < rng.uniform(0.05, 0.6))
        np.testing.assert_array_equal(graph.labels(subset), _sklearn(xyz[subset], 0.3))


def test_points_at_exactly_eps_follow_sklearns_float64_test():
    """float32 chains whose steps are 0.95 or its float32 neighbours: whether a step is <= eps is decided
    in float64 on the widened float32 values, in both implementations."""
    rng = np.random.default_rng(11)
    eps32 = np.float32(0.95)
    steps_choices = np.array([np.nextafter(eps32, np.float32(0)), eps32, np.nextafter(eps32, np.float32(2))])
    joined = split = 0
    for trial in range(20):
        steps = steps_choices[rng.integers(0, 3, 40)]
        xyz = np.zeros((40, 3), np.float32)
        axis = int(rng.integers(0, 3))
        xyz[:, axis] = np.float32(rng.uniform(-40, 40)) + np.cumsum(steps, dtype=np.float32)
        xyz[:, (axis + 1) % 3] = np.float32(rng.uniform(-3, 3))
        ours = EpsComponents(xyz, 0.95).labels()
        np.testing.assert_array_equal(ours, _sklearn(xyz, 0.95, "kd_tree"))
        split += int(ours.max())
        joined += 39 - int(ours.max())
    assert joined > 0 and split > 0  # both outcomes occur, so the boundary is really exercised


@pytest.mark.parametrize("eps", [0.95, 0.15])
def test_isolated_pairs_around_eps_in_random_directions(eps):
    """Pairs 10 eps apart from each other, each at a distance of eps x (1 +- 10 %) or within a few float32
    ulps of eps, in random directions: every grid-cell offset class and the exact float64 test decide."""
    rng = np.random.default_rng(int(eps * 100))
    n = 3000
    centres = np.stack(np.meshgrid(*[np.arange(15)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 10 * eps
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.where(np.arange(n) % 2 == 0, 1 + rng.uniform(-0.1, 0.1, n), 1 + rng.uniform(-3e-7, 3e-7, n))
    a = (centres + rng.uniform(-eps, eps, (n, 3))).astype(np.float32)
    b = (a + direction * (eps * scale)[:, None]).astype(np.float32)
    xyz = np.concatenate([a, b])
    ours = EpsComponents(xyz, eps).labels()
    np.testing.assert_array_equal(ours, _sklearn(xyz, eps, "kd_tree"))
    d = a.astype(np.float64) - b.astype(np.float64)
    joined = ((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]) <= eps * eps
    np.testing.assert_array_equal(ours[:n] == ours[n:], joined)
    near = np.arange(n) % 2 == 1
    assert 0.2 < joined[near].mean() < 0.8 and 0.2 < joined[~near].mean() < 0.8


@pytest.mark.parametrize("gap", [0.9, 0.94999, 0.95001, 1.0])
def test_dense_patches_across_a_gap_near_eps(gap, monkeypatch):
    """Two jittered 1 cm grids facing each other: hundreds of points per cell, so cell pairs are tested
    with the KD-tree path; brute-force float64 distances are the oracle (sklearn would list 2500
    neighbours per point)."""
    calls, real_tree = [], pp.cKDTree

    def spy(points):
        calls.append(len(points))
        return real_tree(points)

    monkeypatch.setattr(pp, "cKDTree", spy)
    rng = np.random.default_rng(int(gap * 1e5))
    grid = np.stack(np.meshgrid(np.arange(50), np.arange(50), indexing="ij"), -1).reshape(-1, 2) * 0.01
    a = np.column_stack([grid + rng.uniform(0, 0.004, grid.shape), rng.uniform(0, 0.002, len(grid))])
    b = np.column_stack([grid + rng.uniform(0, 0.004, grid.shape), gap + rng.uniform(-0.002, 0, len(grid))])
    xyz = np.concatenate([a, b]).astype(np.float32)
    x64 = xyz.astype(np.float64)
    touching = False
    for s in range(0, len(a), 250):  # 250 x 2500 blocks of the exact float64 test
        d = x64[s : s + 250, None, :] - x64[None, len(a) :, :]
        touching |= bool(np.any((d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2] <= 0.95 * 0.95))
    labels = EpsComponents(xyz, 0.95).labels()
    expected = np.zeros(len(xyz), np.int64) if touching else np.repeat([0, 1], len(a))
    np.testing.assert_array_equal(labels, expected)
    assert calls  # the dense cell pairs really went through the tree


@pytest.mark.parametrize("spacing", [0.95, 0.95 / np.sqrt(2), 0.95 / np.sqrt(3), 0.475])
def test_lattices_with_neighbours_at_eps(spacing):
    rng = np.random.default_rng(int(spacing * 1000))
    idx = rng.integers(0, 8, (400, 3))
    xyz = (idx * np.float32(spacing) + np.float32(rng.uniform(-5, 5))).astype(np.float32)
    xyz = xyz[rng.random(400) < 0.4]
    np.testing.assert_array_equal(EpsComponents(xyz, 0.95).labels(), _sklearn(xyz, 0.95, "kd_tree"))


def test_dbscan_labels_with_min_samples_above_one_is_sklearn():
    rng = np.random.default_rng(0)
    xyz = rng.random((300, 3)).astype(np.float32) * 5
    expected = DBSCAN(eps=0.4, min_samples=4).fit(xyz).labels_
    np.testing.assert_array_equal(dbscan_labels(xyz, 0.4, 4), expected)
    assert (expected == -1).any()


@pytest.mark.parametrize("xyz, eps, message", [
    (np.zeros((3, 2)), 1.0, "shape"),
    (np.array([[0.0, np.nan, 0.0]]), 1.0, "NaN"),
    (np.zeros((3, 3)), 0.0, "eps"),
])
def test_components_bad_input(xyz, eps, message):
    with pytest.raises(ValueError, match=message):
        EpsComponents(xyz, eps)


# -- parity with the original code ----------------------------------------------------------------------

VARIANTS = {
    "openmask3d": PostprocessConfig("openmask3d"),
    "openmask3d_eps0.15": PostprocessConfig("openmask3d", dbscan_eps=0.15),
    "mask3d_dbscan": PostprocessConfig("mask3d", topk=100),
    "mask3d_dbscan_eps0.15": PostprocessConfig("mask3d", topk=100, dbscan_eps=0.15),
    "mask3d_nodbscan": PostprocessConfig("mask3d", topk=100, dbscan=False),
}


@pytest.fixture(scope="module")
def parity(mask3d_parity):
    expected, inputs = mask3d_parity.expected, mask3d_parity.inputs
    ptr, idx = expected["pp_masks_indptr"], expected["pp_masks_indices"]
    table = {idx[ptr[m] : ptr[m + 1]].astype(np.uint32).tobytes(): m for m in range(len(ptr) - 1)}
    return expected, inputs, table


def _run(parity, config):
    expected, inputs, _ = parity
    return postprocess(expected["pred_logits"], expected["pred_masks"], inputs["raw_coordinates"],
                       inputs["inverse_map"], config)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.float32).view(np.int32).astype(np.int64) - b.view(np.int32)).max())


@pytest.mark.parametrize("prefix", list(VARIANTS))
def test_parity_with_the_original_post_processing(parity, prefix):
    expected, _, table = parity
    result = _run(parity, VARIANTS[prefix])
    ids = np.array([table[result.masks[int(m)].tobytes()] for m in result.ranked_mask])
    np.testing.assert_array_equal(ids, expected[f"{prefix}_mask_id"])
    np.testing.assert_array_equal(result.ranked_classes, expected[f"{prefix}_classes"])
    scores = expected[f"{prefix}_scores"]
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        # Same layout of the float32 sums and sigmoids as the original on the fixture's vector width:
        # bit-identical scores.
        np.testing.assert_array_equal(result.ranked_scores, scores)
    else:
        # torch's float32 sigmoid/sum results depend on the CPU's vector width (measured: <= 3 ulp on AVX2).
        assert _ulps(result.ranked_scores, scores) <= 4
    # Stored masks: the distinct ones, in order of first appearance, each with its best score and class.
    first = np.unique(ids, return_index=True)[1]
    first.sort()
    assert len(result.masks) == first.size
    np.testing.assert_array_equal(result.masks.scores, result.ranked_scores[first])
    np.testing.assert_array_equal(result.classes, expected[f"{prefix}_classes"][first])
    assert np.all(np.diff(result.masks.scores) <= 0)


def test_openmask3d_selection_drops_and_repeats_masks(parity):
    expected, _, _ = parity
    result = _run(parity, VARIANTS["openmask3d"])
    assert result.ranked_mask.size == 16 and len(result.masks) == 9 == np.unique(expected["openmask3d_mask_id"]).size


def test_multi_block_scores_stay_within_a_few_ulp(parity, monkeypatch):
    """Large scenes score each distinct part once in bounded blocks: same masks and classes, scores equal
    up to float32 summation order."""
    reference = _run(parity, VARIANTS["mask3d_dbscan"])
    monkeypatch.setattr(pp, "SCORE_BLOCK_ELEMENTS", 8000 * 3)
    blocked = _run(parity, VARIANTS["mask3d_dbscan"])
    np.testing.assert_array_equal(blocked.ranked_classes, reference.ranked_classes)
    assert [blocked.masks[int(m)].tobytes() for m in blocked.ranked_mask] == \
        [reference.masks[int(m)].tobytes() for m in reference.ranked_mask]
    assert _ulps(blocked.ranked_scores, reference.ranked_scores) <= 4


def test_default_mode_on_the_fixture_against_an_independent_oracle(parity):
    """Every DBSCAN part of every query once, best class, score = p x mean sigmoid, identical masks once.
    eps 0.15 splits every query mask (sklearn at eps 0.95 needs seconds here: the blow-up we avoid)."""
    expected, inputs, _ = parity
    logits, masks = expected["pred_logits"].astype(np.float64), expected["pred_masks"].astype(np.float64)
    raw, inverse = inputs["raw_coordinates"], inputs["inverse_map"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True))[:, :-1]
    best: dict[bytes, tuple[float, int]] = {}
    num_parts = 0
    for q in range(masks.shape[1]):
        vox = np.flatnonzero(masks[:, q] > 0)
        labels = _sklearn(raw[vox], 0.15)
        for c in np.unique(labels):
            num_parts += 1
            part = vox[labels == c]
            score = probs[q].max() * _sigmoid(masks[part, q]).mean()
            key = np.flatnonzero(np.isin(inverse, part)).astype(np.uint32).tobytes()
            if key not in best or score > best[key][0]:
                best[key] = (score, int(probs[q].argmax()))
    result = _run(parity, PostprocessConfig(dbscan_eps=0.15))
    got = {result.masks[i].tobytes(): (float(result.masks.scores[i]), int(result.classes[i]))
           for i in range(len(result.masks))}
    assert num_parts == result.ranked_mask.size == 32
    assert got.keys() == best.keys()
    for key, (score, cls) in best.items():
        assert got[key][1] == cls
        assert got[key][0] == pytest.approx(score, rel=1e-5)


# -- default mode on hand-made cases --------------------------------------------------------------------


def _scene():
    """Two blobs 3 m apart (voxels 0-3 and 4-6, 2 points each) and voxel 7, beside the second blob, with no
    points."""
    raw = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0.1, 0.1, 0],
                    [3, 0, 0], [3.1, 0, 0], [3, 0.1, 0], [3.1, 0.1, 0]], np.float32)
    inverse = np.concatenate([np.arange(7), np.arange(7)])  # points 0-6 and 7-13 -> voxels 0-6
    return raw, inverse


def test_default_splits_a_query_into_its_separated_parts():
    raw, inverse = _scene()
    masks = np.full((8, 1), -2.0, np.float32)
    masks[[0, 1, 2, 3], 0] = [1.0, 2.0, 0.5, 3.0]
    masks[[4, 5], 0] = [0.25, 4.0]
    logits = np.array([[0.0, 2.0, 1.0, -1.0]], np.float32)  # classes 0..2, last = no-object
    result = postprocess(logits, masks, raw, inverse)
    p = np.exp(logits[0].astype(np.float64))
    p = p / p.sum()
    first = p[1] * _sigmoid([1.0, 2.0, 0.5, 3.0]).mean()
    second = p[1] * _sigmoid([0.25, 4.0]).mean()
    assert len(result.masks) == 2 and result.masks.num_points == 14
    assert result.masks.scores == pytest.approx(sorted([first, second], reverse=True), rel=1e-6)
    as_sets = {tuple(m.tolist()) for m in result.masks}
    assert as_sets == {(0, 1, 2, 3, 7, 8, 9, 10), (4, 5, 11, 12)}
    np.testing.assert_array_equal(result.classes, [1, 1])
    np.testing.assert_array_equal(result.queries, [0, 0])


def test_default_stores_identical_masks_once_with_the_higher_score():
    raw, inverse = _scene()
    masks = np.full((8, 3), -1.0, np.float32)
    masks[[4, 5, 6], 0] = 1.0  # query 0 and 1: the same voxels, query 1 more confident
    masks[[4, 5, 6], 1] = 2.0
    masks[[4, 5, 6, 7], 2] = 3.0  # adds voxel 7, which has no points: the same point set again
    logits = np.array([[3.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    result = postprocess(logits, masks, raw, inverse)
    assert len(result.masks) == 1
    np.testing.assert_array_equal(result.masks[0], [4, 5, 6, 11, 12, 13])
    p = np.exp([4.0, 0.0, 0.0]) / np.exp([4.0, 0.0, 0.0]).sum()
    assert result.masks.scores[0] == pytest.approx(p[0] * _sigmoid(2.0), rel=1e-6)  # 0.85 > 0.66 > 0.55
    assert result.queries.tolist() == [1] and result.classes.tolist() == [0]
    # The ranked list keeps all three entries, best first, all pointing at the one stored mask.
    assert result.ranked_mask.tolist() == [0, 0, 0]
    assert result.ranked_scores[0] == result.masks.scores[0] and np.all(np.diff(result.ranked_scores) <= 0)


def test_default_keeps_every_class_including_low_probability_ones():
    raw, inverse = _scene()
    masks = np.full((8, 2), -1.0, np.float32)
    masks[:2, 0] = 1.0
    masks[4:6, 1] = 1.0
    logits = np.array([[9.0, 0.0, 0.0], [-5.0, -5.0, 9.0]], np.float32)  # query 1: almost surely no-object
    result = postprocess(logits, masks, raw, inverse)
    assert len(result.masks) == 2 and sorted(result.classes.tolist()) == [0, 0]
    assert result.masks.scores.min() > 0


def test_empty_query_masks():
    raw, inverse = _scene()
    masks = np.full((8, 2), -1.0, np.float32)
    masks[:2, 1] = 1.0
    logits = np.zeros((2, 3), np.float32)
    # Without DBSCAN the empty query stays in the ranked list (score 0) but no empty mask is stored.
    result = postprocess(logits, masks, raw, inverse, PostprocessConfig("mask3d", topk=4, dbscan=False))
    assert len(result.masks) == 1 and (result.ranked_mask == -1).sum() == 2
    assert np.all(result.ranked_scores[result.ranked_mask == -1] == 0)
    # No voxel with a positive logit anywhere: nothing (the original would crash on an empty stack).
    none = postprocess(logits, np.full((8, 2), -1.0, np.float32), raw, inverse)
    assert len(none.masks) == 0 and none.ranked_mask.size == 0 and none.masks.num_points == 14


def test_mask3d_topk_larger_than_the_candidates_is_clamped_and_logged(caplog):
    raw, inverse = _scene()
    masks = np.full((8, 2), -1.0, np.float32)
    masks[:2, 0] = 1.0
    masks[4:6, 1] = 1.0
    logits = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="scenegrep.indexer.proposals.mask3d.postprocess"):
        result = postprocess(logits, masks, raw, inverse, PostprocessConfig("mask3d", topk=750))
    assert result.ranked_mask.size == 2 * 3  # parts x classes
    assert "topk 750" in caplog.text
    assert len(result.masks) == 2 and sorted(result.ranked_classes.tolist()) == [0, 0, 1, 1, 2, 2]


def test_min_samples_above_one_drops_noise_voxels():
    raw, inverse = _scene()
    masks = np.full((8, 1), -1.0, np.float32)
    masks[[0, 1, 2, 3, 4], 0] = 1.0  # voxel 4 is alone: noise for min_samples 2
    result = postprocess(np.zeros((1, 3), np.float32), masks, raw, inverse,
                         PostprocessConfig(dbscan_min_samples=2))
    assert [m.tolist() for m in result.masks] == [[0, 1, 2, 3, 7, 8, 9, 10]]


def test_accepts_torch_tensors():
    raw, inverse = _scene()
    masks = np.full((8, 1), -1.0, np.float32)
    masks[:3, 0] = 1.0
    logits = np.zeros((1, 3), np.float32)
    a = postprocess(logits, masks, raw, inverse)
    b = postprocess(torch.from_numpy(logits), torch.from_numpy(masks), torch.from_numpy(raw), torch.from_numpy(inverse))
    assert a.masks[0].tolist() == b.masks[0].tolist() and a.masks.scores[0] == b.masks.scores[0]


@pytest.mark.parametrize("change, message", [
    ({"pred_masks": np.zeros((8, 3), np.float32)}, "pred_masks"),
    ({"raw_coordinates": np.zeros((7, 3), np.float32)}, "raw_coordinates"),
    ({"inverse_map": np.array([0, 8])}, "inverse_map"),
    ({"inverse_map": np.array([0.5])}, "integer"),
    ({"pred_logits": np.zeros((2, 1), np.float32)}, "no-object"),
    ({"pred_masks": np.full((8, 2), np.nan, np.float32)}, "NaN"),
])
def test_bad_inputs_are_one_line_value_errors(change, message):
    raw, inverse = _scene()
    args = {"pred_logits": np.zeros((2, 3), np.float32), "pred_masks": np.zeros((8, 2), np.float32),
            "raw_coordinates": raw, "inverse_map": inverse}
    args.update(change)
    with pytest.raises(ValueError, match=message) as err:
        postprocess(**args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs", [{"mode": "topk"}, {"topk": 0}, {"dbscan_eps": -1.0},
                                    {"dbscan_min_samples": 0}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        PostprocessConfig(**kwargs)
