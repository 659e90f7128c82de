"""The 2D-lifted proposer: 2D mask records, segmenters (oracle, degraded, weight-free, SAM), lifting with the
features stage's depth test, view-consensus merging, and the oracle proof on synthetic rooms."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from scenegrep.indexer.evaluate import evaluate_many, evaluate_masks
from scenegrep.indexer.labelmaps import label_map_path, write_synthetic_label_maps
from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.proposals.lifted import (
    LiftedConfig,
    LiftedProposer,
    consensus_graph,
    lift_masks,
    observer_thresholds,
)
from scenegrep.indexer.proposals.segmenters import (
    FelzenszwalbSegmenter,
    LabelMapSegmenter,
    Masks2D,
    PerturbedSegmenter,
    SamAutomaticOptions,
    SamAutomaticSegmenter,
    Segmenter2D,
)
from scenegrep.indexer.scans import read_scan


@pytest.fixture(scope="module")
def labelled_scans(synth_scans, tmp_path_factory):
    """Copies of the two small synthetic scans with instance-filt/<i>.png rendered from their scenes."""
    out = tmp_path_factory.mktemp("labelled")
    paths = []
    for p in synth_scans:
        dst = out / p.name
        shutil.copytree(p, dst)
        write_synthetic_label_maps(dst)
        paths.append(dst)
    return [(read_scan(p), np.load(p / "gt_instances.npy")) for p in paths]


# -- Masks2D ---------------------------------------------------------------------------------------


def test_masks2d_from_label_image_and_partition():
    labels = np.array([[0, 0, 2, 2], [0, 5, 5, 2], [0, 5, 5, 0]])
    m = Masks2D.from_label_image(labels, background=0)
    assert len(m) == 2 and m.size == (4, 3)
    assert m[0].tolist() == [2, 3, 7] and m[1].tolist() == [5, 6, 9, 10]
    assert np.array_equal(m.label_image(), np.where(labels == 0, -1, np.where(labels == 2, 0, 1)))


def test_masks2d_label_image_smaller_mask_wins():
    big = np.ones((4, 4), bool)
    small = np.zeros((4, 4), bool)
    small[1:3, 1:3] = True
    m = Masks2D.from_bool_masks([small, big], [0.5, 0.9], (4, 4))  # order must not matter
    lab = m.label_image()
    assert (lab[1:3, 1:3] == 0).all() and (lab[0] == 1).all() and (lab[:, 0] == 1).all()


def test_masks2d_checks_its_arrays():
    with pytest.raises(ValueError, match="outside the image"):
        Masks2D((2, 2), np.array([4]), np.array([0, 1]), np.ones(1))
    with pytest.raises(ValueError, match="scores"):
        Masks2D((2, 2), np.array([1]), np.array([0, 1]), np.ones(2))


# -- segmenters ------------------------------------------------------------------------------------


def test_segmenters_satisfy_the_protocol():
    assert isinstance(FelzenszwalbSegmenter(), Segmenter2D)
    assert isinstance(LabelMapSegmenter(), Segmenter2D)
    assert isinstance(PerturbedSegmenter(LabelMapSegmenter()), Segmenter2D)


def test_label_map_segmenter_reads_the_rendered_maps(labelled_scans):
    scan, gt = labelled_scans[0]
    frame = scan.frames[0]
    assert label_map_path(frame).is_file()
    masks = LabelMapSegmenter().segment(frame, frame.load_color())
    assert masks.size == frame.color_size and len(masks) >= 1
    assert set(np.unique(masks.label_image())) >= {-1, 0}


def test_perturbations_are_seeded_and_do_what_they_say(labelled_scans):
    scan, _ = labelled_scans[0]
    frame = scan.frames[0]
    image = frame.load_color()
    clean = LabelMapSegmenter().segment(frame, image)
    eroded = PerturbedSegmenter(LabelMapSegmenter(), erode_px=2).segment(frame, image)
    assert eroded.areas.sum() < clean.areas.sum()
    split = PerturbedSegmenter(LabelMapSegmenter(), split_rate=1.0).segment(frame, image)
    assert len(split) > len(clean) and split.areas.sum() == clean.areas.sum()
    merged = PerturbedSegmenter(LabelMapSegmenter(), merge_rate=1.0).segment(frame, image)
    assert len(merged) <= len(clean) and merged.areas.sum() == clean.areas.sum()
    a = PerturbedSegmenter(LabelMapSegmenter(), split_rate=0.5, seed=3).segment(frame, image)
    b = PerturbedSegmenter(LabelMapSegmenter(), split_rate=0.5, seed=3).segment(frame, image)
    assert np.array_equal(a.pixel_indices, b.pixel_indices) and np.array_equal(a.offsets, b.offsets)


def test_felzenszwalb_gives_a_partition(labelled_scans):
    scan, _ = labelled_scans[0]
    frame = scan.frames[0]
    m = FelzenszwalbSegmenter().segment(frame, frame.load_color())
    w, h = frame.color_size
    assert m.size == (w, h) and m.areas.sum() == w * h and len(m) > 1
    assert np.unique(m.pixel_indices).size == w * h


# -- lifting and consensus ------------------------------------------------------------------------


def test_lifting_is_sparse_and_uses_the_depth_test(labelled_scans):
    from scenegrep.indexer.features.visibility import exact_depth, visible_points

    scan, _ = labelled_scans[0]
    cfg = LiftedConfig(max_frames=4, depth_threshold=0.05)
    lifted = lift_masks(scan, LabelMapSegmenter(), cfg)
    assert lifted.frame_positions.tolist() == [0, 5, 10, 15]
    assert lifted.visibility.shape == (4, scan.num_points)
    for f, pos in enumerate(lifted.frame_positions.tolist()):
        frame = scan.frames[pos]
        want = visible_points(scan.points, frame, exact_depth(frame), threshold=0.05)
        got = lifted.visibility.indices[lifted.visibility.indptr[f] : lifted.visibility.indptr[f + 1]]
        assert np.array_equal(np.sort(got), want)  # same-grid frames: nothing leaves the colour image
    # every lifted mask is a subset of its frame's visible points, masks of one frame are disjoint
    L, V = lifted.masks, lifted.visibility
    for f in range(4):
        rows = np.flatnonzero(lifted.mask_frame == f)
        pts = L[rows].indices
        assert np.unique(pts).size == pts.size
        assert np.isin(pts, V[f].indices).all()
    assert L.nnz <= V.nnz and (np.diff(L.indptr) >= cfg.min_mask_points).all()


def test_consensus_graph_on_a_hand_made_case():
    import scipy.sparse as sp

    from scenegrep.indexer.proposals.lifted import LiftedMasks

    # 10 points; frame 0 segments {0..4} and {5..9}; frame 1 segments {0..9} as one mask.
    n = 10
    rows = [np.arange(5), np.arange(5, 10), np.arange(10)]
    L = sp.csr_matrix((np.ones(20, np.float32), np.concatenate(rows), [0, 5, 10, 20]), shape=(3, n))
    V = sp.csr_matrix(np.ones((2, n), np.float32))
    lifted = LiftedMasks(L, np.array([0, 0, 1]), np.ones(3, np.float32), V, np.array([0, 1]))
    g = consensus_graph(lifted, LiftedConfig(min_mask_points=1))
    assert g.visible.toarray().tolist() == [[1, 1], [1, 1], [1, 1]]
    # mask 0 is contained by itself (frame 0) and by mask 2 (frame 1); mask 2 is not contained in frame 0
    assert g.contained.toarray().tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 1]]


def test_observer_thresholds_follow_maskclustering():
    assert observer_thresholds(np.array([], np.int64)) == []
    t = observer_thresholds(np.arange(1, 101))
    assert t[0] == pytest.approx(np.percentile(np.arange(1, 101), 95)) and t == sorted(t, reverse=True)
    assert observer_thresholds(np.ones(10)) == [1.0] * 10  # <= 1: 1 down to the median, then stop


# -- the oracle proof ---------------------------------------------------------------------------------


def _ap(scans, segmenter, **cfg):
    return evaluate_many([(LiftedProposer(segmenter, LiftedConfig(**cfg)).propose(s), gt) for s, gt in scans])


def test_oracle_recovers_the_ground_truth(labelled_scans):
    res = _ap(labelled_scans, LabelMapSegmenter())
    assert res.ap50 >= 0.9 and res.ap25 >= 0.9


def test_oracle_degrades_gracefully(labelled_scans):
    eroded = _ap(labelled_scans, PerturbedSegmenter(LabelMapSegmenter(), erode_px=2))
    assert eroded.ap50 >= 0.8
    noisy = _ap(labelled_scans, PerturbedSegmenter(LabelMapSegmenter(), erode_px=2, split_rate=0.2, merge_rate=0.2))
    assert noisy.ap25 >= 0.8 and noisy.ap50 >= 0.4


def test_scores_rank_by_consistency(labelled_scans):
    scan, gt = labelled_scans[0]
    prop = LiftedProposer(LabelMapSegmenter())
    masks = prop.propose(scan)
    assert len(masks) and ((masks.scores > 0) & (masks.scores <= 1)).all()
    assert np.all(np.diff(masks.scores) <= 0)
    assert prop.last_stats["instances"] == len(masks) and prop.last_stats["rounds"]
    assert prop.identity()["segmenter"] == {"segmenter": "label-maps"}


def test_frame_budget_is_respected(labelled_scans):
    scan, _ = labelled_scans[0]
    prop = LiftedProposer(LabelMapSegmenter(), LiftedConfig(frame_step=7))
    prop.propose(scan)
    assert prop.last_stats["frames"] == 3  # frames 0, 7, 14 of 20


def test_no_frames_gives_no_masks(labelled_scans):
    from scenegrep.indexer.scans import Scan

    scan, _ = labelled_scans[0]
    bare = Scan("bare", scan.root, "scannet", scan.points, scan.colors)
    assert len(LiftedProposer(LabelMapSegmenter()).propose(bare)) == 0


# -- the registry -------------------------------------------------------------------------------------


def test_registry_without_weights_uses_felzenszwalb_and_says_so(labelled_scans, caplog):
    with caplog.at_level(logging.WARNING):
        prop = make_proposer("lifted", max_frames=10)
    assert isinstance(prop.segmenter, FelzenszwalbSegmenter) and prop.config.max_frames == 10
    assert "weight-free" in caplog.text
    scan, gt = labelled_scans[0]
    res = evaluate_masks(prop.propose(scan), gt)
    assert res.ap50 >= 0.5  # measured 0.74 pooled over both scans with every frame (BENCHMARKS.md)


def test_registry_rejects_conflicting_options():
    with pytest.raises(TypeError):
        make_proposer("lifted", config=LiftedConfig(), max_frames=3)
    with pytest.raises(TypeError):
        make_proposer("lifted", segmenter=LabelMapSegmenter(), sam_refiner=object())
    with pytest.raises(ValueError, match="model name"):
        make_proposer("lifted", sam_checkpoint="x.pth")


# -- SAM's automatic masks (tiny random checkpoint) -------------------------------------------------------


TINY = "tiny-lifted-test"


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    from scenegrep.testing import registered_sam_arch, tiny_sam_arch, write_random_sam_checkpoint

    with registered_sam_arch(TINY, tiny_sam_arch()):
        yield write_random_sam_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth", TINY, seed=0,
                                          mask_fraction=None)  # uncalibrated: LOOSE keeps its masks


LOOSE = SamAutomaticOptions(points_per_side=4, points_per_batch=16, pred_iou_thresh=-10.0,
                            stability_score_thresh=0.0)


def test_sam_automatic_segmenter_from_a_checkpoint(tiny_sam, labelled_scans, caplog):
    from scenegrep.indexer.weights import sha256_file

    with caplog.at_level(logging.WARNING, logger="scenegrep.indexer.proposals.segmenters"):
        prop = make_proposer("lifted", sam_checkpoint=tiny_sam, sam_model=TINY, sam_options=LOOSE, max_frames=2,
                             min_detections=1)
    # on the CPU the user is told it is slow and what to use instead (BENCHMARKS.md: ~2 min per frame)
    assert any("on the CPU are slow" in r.getMessage() and "--device cuda" in r.getMessage()
               for r in caplog.records)
    seg = prop.segmenter
    assert isinstance(seg, SamAutomaticSegmenter) and seg.name == f"sam-amg:{TINY}"
    ident = prop.identity()["segmenter"]
    assert ident["checkpoint_sha256"] == sha256_file(tiny_sam) and ident["points_per_side"] == 4
    scan, _ = labelled_scans[0]
    masks2d = seg.segment(scan.frames[0], scan.frames[0].load_color())
    assert masks2d.size == scan.frames[0].color_size and len(masks2d) > 0
    assert ((masks2d.scores > -10) & np.isfinite(masks2d.scores)).all()
    out = prop.propose(scan)
    assert out.num_points == scan.num_points and seg.frames == 3  # 1 above + 2 used frames


def test_sam_segmenter_shares_the_refiners_model(tiny_sam):
    from scenegrep.indexer.features.sam import load_sam_refiner

    refiner = load_sam_refiner(TINY, tiny_sam)
    prop = make_proposer("lifted", sam_refiner=refiner, sam_options=LOOSE)
    assert prop.segmenter.model is refiner.model
    assert prop.segmenter.generator.predictor is refiner.predictor
    assert prop.segmenter.checkpoint_sha256 == refiner.checkpoint_sha256


def test_bad_sam_checkpoint_is_one_line(tmp_path):
    from scenegrep.indexer.features.sam import SamCheckpointError

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match="bad.pth"):
        make_proposer("lifted", sam_checkpoint=bad, sam_model="vit_b")
