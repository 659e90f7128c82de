"""The union proposer: rank-quantile scores, sparse point-set NMS, per-mask sources, naming lists."""

from __future__ import annotations

import numpy as np
import pytest

from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.proposals.union import (
    SourcedMaskSet,
    UnionProposer,
    nms_keep,
    parse_proposer_list,
    rank_scores,
)


class Fixed:
    """A proposer returning fixed masks."""

    def __init__(self, name, masks):
        self.name = name
        self.masks = masks

    def propose(self, scan):
        return self.masks


class FakeScan:
    name = "fake"
    num_points = 1000


def _ms(blocks, scores, n=1000):
    return MaskSet.from_lists([np.asarray(b) for b in blocks], scores, n)


def test_rank_scores():
    assert rank_scores(np.array([0.1, 5.0, 0.3])).tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert rank_scores(np.array([0.2, 0.2, 0.9])).tolist() == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert rank_scores(np.ones(4)).tolist() == [1.0] * 4
    assert rank_scores(np.zeros(0)).size == 0


def test_nms_keeps_the_best_of_duplicates():
    ms = _ms([np.arange(100), np.arange(5, 100), np.arange(200, 300), np.arange(50, 150)], [0.5, 0.9, 0.1, 0.8])
    # IoU(0, 1) = 0.95, IoU(1, 3) = 50/145, IoU(0, 3) = 50/150
    assert nms_keep(ms, 0.5).tolist() == [1, 3, 2]
    assert nms_keep(ms, 0.99).tolist() == [1, 3, 0, 2]
    assert nms_keep(MaskSet.empty(10), 0.5).size == 0


def test_union_pools_dedupes_and_records_sources():
    a = Fixed("geometric", _ms([np.arange(100), np.arange(300, 420)], [0.2, 0.1]))
    b = Fixed("lifted", _ms([np.arange(3, 100), np.arange(600, 700)], [50.0, 10.0]))
    u = UnionProposer([a, b], iou_threshold=0.5)
    out = u.propose(FakeScan())
    assert isinstance(out, SourcedMaskSet) and out.num_points == 1000
    # ranks: geometric [1, 0.5], lifted [1, 0.5]; the tie at 1 goes to the larger mask (geometric's 0..99)
    assert [m.tolist()[:1] for m in out] == [[0], [300], [600]]
    assert out.sources.tolist() == ["geometric", "geometric", "lifted"]
    assert out.scores.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert u.last_stats == {"geometric": {"masks": 2, "kept": 2, "seconds": pytest.approx(0, abs=1)},
                            "lifted": {"masks": 2, "kept": 1, "seconds": pytest.approx(0, abs=1)}}
    ident = u.identity()
    assert [m["name"] for m in ident["members"]] == ["geometric", "lifted"] and ident["iou_threshold"] == 0.5


def test_nms_only_between_members():
    ms = _ms([np.arange(100), np.arange(5, 100), np.arange(3, 100)], [0.9, 0.8, 0.7])
    # masks 0 and 1 come from one member: both kept; mask 2 duplicates them from another member
    assert nms_keep(ms, 0.5, np.array(["a", "a", "b"])).tolist() == [0, 1]
    assert nms_keep(ms, 0.5).tolist() == [0]


def test_union_weights_and_checks():
    a = Fixed("a", _ms([np.arange(100)], [1.0]))
    b = Fixed("b", _ms([np.arange(100)], [1.0]))
    out = UnionProposer([a, b], weights=[0.5, 1.0]).propose(FakeScan())
    assert out.sources.tolist() == ["b"]
    with pytest.raises(ValueError, match="distinct"):
        UnionProposer([a, Fixed("a", a.masks)])
    with pytest.raises(ValueError, match="at least one"):
        UnionProposer([])
    with pytest.raises(ValueError, match="points"):
        UnionProposer([Fixed("c", _ms([np.arange(5)], None, n=10))]).propose(FakeScan())


class Prior(Fixed):
    """A fixed proposer declaring a prior reliability, as the weight-free lifted proposer does."""

    def __init__(self, name, masks, prior):
        super().__init__(name, masks)
        self.union_prior = prior


def test_union_weights_default_to_member_priors():
    # a strong member's 4 masks (its objects are its best two) and a weak member whose best mask would tie
    # with the strong member's best under plain rank quantiles
    strong = Fixed("geometric", _ms([np.arange(100), np.arange(200, 300), np.arange(400, 420),
                                     np.arange(500, 510)], [0.9, 0.8, 0.02, 0.01]))
    weak = Prior("lifted", _ms([np.arange(600, 700), np.arange(800, 900)], [0.9, 0.5]), 0.5)
    u = UnionProposer([strong, weak])
    assert u.weights == [1.0, 0.5] and u.identity()["weights"] == [1.0, 0.5]
    out = u.propose(FakeScan())
    # strong: ranks 1, 0.75, 0.5, 0.25; weak: 0.5 * (1, 0.5) = 0.5, 0.25 -> both of the strong member's
    # objects come before the weak member's best mask
    assert out.sources.tolist()[:2] == ["geometric", "geometric"]
    assert out.scores.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.5, 0.25, 0.25])
    assert UnionProposer([strong, weak], weights=[1.0, 1.0]).propose(FakeScan()).sources.tolist()[:2] == [
        "geometric", "lifted"]  # explicit weights override the priors


def test_weaker_member_never_displaces_a_stronger_members_mask():
    """The shelf's case: the strong member ranks a good mask low (a colour part, scored below its hierarchy
    masks); the weak member's best mask duplicates it with a higher weighted score. The strong member's mask
    stays and the weak duplicate goes; the weak member's mask that duplicates nothing stays; the output is
    still in descending score."""
    strong = Fixed("geometric", _ms([np.arange(200, 300), np.arange(400, 500), np.arange(0, 100)],
                                    [0.9, 0.8, 0.1]))
    weak = Prior("lifted", _ms([np.arange(5, 100), np.arange(600, 700)], [0.9, 0.5]), 0.5)
    out = UnionProposer([strong, weak]).propose(FakeScan())
    assert [(src, m[0]) for src, m in zip(out.sources.tolist(), out)] == [
        ("geometric", 200), ("geometric", 400), ("geometric", 0), ("lifted", 600)]
    assert out.scores.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.25])
    # equal weights: plain score-greedy NMS, the higher-scored duplicate wins
    even = UnionProposer([strong, weak], weights=[1.0, 1.0]).propose(FakeScan())
    assert ("lifted", 5) in [(src, m[0]) for src, m in zip(even.sources.tolist(), even)]
    assert ("geometric", 0) not in [(src, m[0]) for src, m in zip(even.sources.tolist(), even)]
    # nms_keep's priority: visited by priority first, score second
    ms = _ms([np.arange(100), np.arange(3, 100)], [0.1, 0.9])
    assert nms_keep(ms, 0.5, np.array(["a", "b"]), np.array([1.0, 0.5])).tolist() == [0]
    assert nms_keep(ms, 0.5, np.array(["a", "b"])).tolist() == [1]


def test_weight_free_lifted_member_has_prior_half():
    u = make_proposer("union")
    assert [m.name for m in u.members] == ["geometric", "lifted"]
    assert u.weights == [1.0, 0.5]  # felzenszwalb segmenter without a SAM checkpoint
    from scenegrep.indexer.proposals.segmenters import LabelMapSegmenter

    assert make_proposer("lifted", segmenter=LabelMapSegmenter()).union_prior == 1.0


def test_sourced_maskset_select_and_file(tmp_path):
    s = SourcedMaskSet.from_lists([np.arange(3), np.arange(5, 9)], [0.3, 0.7], 20)
    assert s.sources.tolist() == ["", ""]  # MaskSet's constructors leave the source unknown
    s = SourcedMaskSet(s.point_indices, s.offsets, s.scores, 20, np.array(["x", "y"]))
    sel = s.select([1])
    assert isinstance(sel, SourcedMaskSet) and sel.sources.tolist() == ["y"] and sel[0].tolist() == [5, 6, 7, 8]
    s.save_npz(tmp_path / "m.npz")
    back = MaskSet.load_npz(tmp_path / "m.npz")  # readers without sources still read the file
    assert len(back) == 2 and np.array_equal(back.point_indices, s.point_indices)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["sources"].tolist() == ["x", "y"]
    with pytest.raises(ValueError, match="one entry per mask"):
        SourcedMaskSet(s.point_indices, s.offsets, s.scores, 20, np.array(["x"]))


def test_naming_lists_of_proposers():
    assert parse_proposer_list("geometric+lifted") == ["geometric", "lifted"]
    with pytest.raises(ValueError, match="empty"):
        parse_proposer_list("geometric+")
    with pytest.raises(ValueError, match="twice"):
        parse_proposer_list("lifted+lifted")
    u = make_proposer("geometric+lifted")
    assert isinstance(u, UnionProposer) and [m.name for m in u.members] == ["geometric", "lifted"]
    d = make_proposer("union")
    assert [m.name for m in d.members] == ["geometric", "lifted"]
    with pytest.raises(ValueError, match="not in the union"):
        make_proposer("union", members=["geometric"], member_options={"lifted": {}})
    with pytest.raises(ValueError, match="unknown proposer"):
        make_proposer("geometric+nope")


def test_union_of_geometric_and_lifted_on_a_synthetic_scan(synth_scans, tmp_path):
    import shutil

    from scenegrep.indexer.evaluate import evaluate_masks
    from scenegrep.indexer.labelmaps import write_synthetic_label_maps
    from scenegrep.indexer.proposals.segmenters import LabelMapSegmenter
    from scenegrep.indexer.scans import read_scan

    path = tmp_path / synth_scans[0].name
    shutil.copytree(synth_scans[0], path)
    write_synthetic_label_maps(path)
    scan = read_scan(path)
    gt = np.load(path / "gt_instances.npy")
    u = make_proposer("union", members=["geometric", "lifted"],
                      member_options={"lifted": {"segmenter": LabelMapSegmenter()}})
    out = u.propose(scan)
    assert set(out.sources.tolist()) <= {"geometric", "lifted"} and len(out) > 0
    assert u.last_stats["lifted"]["kept"] > 0
    # no two kept masks of different members overlap above the threshold; a member's own masks are kept
    iou = out.iou()
    np.fill_diagonal(iou, 0)
    other = out.sources[:, None] != out.sources[None, :]
    assert iou[other].max() <= 0.5
    assert evaluate_masks(out, gt).ap50 >= 0.5
