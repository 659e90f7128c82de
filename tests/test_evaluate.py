"""Class-agnostic AP (scenegrep.indexer.evaluate): hand-computed cases and a cross-check against a plain
re-statement of ScanNet's evaluate_semantic_instance.py (dicts, dense boolean masks, the original loops)."""

from __future__ import annotations

import numpy as np
import pytest

from scenegrep.indexer.evaluate import ALL_THRESHOLDS, AP_THRESHOLDS, evaluate_many, evaluate_masks, evaluate_scan_dir
from scenegrep.indexer.proposals.base import MaskSet


def _masks(blocks, scores, n) -> MaskSet:
    return MaskSet.from_lists([np.asarray(b) for b in blocks], scores, n)


def r_(a: int, b: int) -> np.ndarray:
    return np.arange(a, b)


# -- hand-computed cases ---------------------------------------------------------------------------


def test_perfect_prediction_is_one():
    gt = np.zeros(1200, np.int32)
    gt[0:200], gt[200:500], gt[500:650] = 1, 2, 3  # 650..1199 void
    pred = _masks([r_(0, 200), r_(200, 500), r_(500, 650)], [0.9, 0.5, 0.7], gt.size)
    r = evaluate_masks(pred, gt)
    assert r.ap == pytest.approx(1.0) and r.ap50 == pytest.approx(1.0) and r.ap25 == pytest.approx(1.0)
    assert set(r.per_threshold) == {round(float(t), 2) for t in ALL_THRESHOLDS}
    assert all(v == pytest.approx(1.0) for v in r.per_threshold.values())
    assert (r.num_gt, r.num_pred, r.num_gt_ignored, r.num_pred_ignored) == (3, 3, 0, 0)


def test_false_positive_above_true_positive():
    # gt 1 = points 0..299 (all annotated). TP = gt 1 (conf 0.5); FP = 100 points of gt 1 (conf 0.9),
    # IoU 100/300 = 1/3, so it is a plain false positive at every AP threshold (0.5 ... 0.9).
    gt = np.full(300, 1, np.int32)
    pred = _masks([r_(0, 300), r_(0, 100)], [0.5, 0.9], gt.size)
    r = evaluate_masks(pred, gt)
    # Official curve at th >= 0.5: examples sorted by score: (0.5, TP), (0.9, FP); 1 true example.
    #   unique score 0.5: cumsum below = 0 -> tp=1, fp=2-0-1=1, fn=0 -> p=1/2, r=1
    #   unique score 0.9: cumsum below = 1 -> tp=0, fp=2-1-0=1, fn=1 -> p=0,   r=0
    #   artificial point: p=1, r=0
    # recall padded [1, 1, 0, 0, 0]; np.convolve(.., [-0.5, 0, 0.5], 'valid') = 0.5*r[k] - 0.5*r[k+2]
    #   = [0.5, 0.5, 0]; AP = 0.5*0.5 + 0*0.5 + 1*0 = 0.25   (VOC-style AP would say 0.5)
    assert r.ap50 == pytest.approx(0.25)
    assert r.ap == pytest.approx(0.25)
    # At th 0.25 the FP also overlaps gt 1 (1/3 > 0.25): the official rule makes the *lower* of the two
    # confidences the false positive and gives the gt the higher one: (0.9, TP), (0.5, FP):
    #   score 0.5: tp=1, fp=1, fn=0 -> p=1/2, r=1 ; score 0.9: cumsum below = 0 -> tp=1, fp=0 -> p=1, r=1
    #   precision [1/2, 1, 1], recall [1, 1, 0] -> widths [0, 0.5, 0.5] -> AP = 1
    assert r.ap25 == pytest.approx(1.0)


def test_two_gts_with_a_false_positive_between():
    gt = np.zeros(700, np.int32)
    gt[0:300], gt[300:600] = 1, 2
    pred = _masks([r_(0, 300), r_(0, 100), r_(300, 600)], [0.9, 0.8, 0.7], gt.size)
    r = evaluate_masks(pred, gt)
    # sorted: (0.7 T), (0.8 F), (0.9 T); cumsum [1, 1, 2]; N=3, 2 true
    #   0.7: tp=2, fp=1, fn=0 -> p=2/3, r=1 ; 0.8: tp=1, fp=1, fn=1 -> p=1/2, r=1/2
    #   0.9: tp=1, fp=0, fn=1 -> p=1, r=1/2 ; artificial p=1, r=0
    # recall padded [1, 1, .5, .5, 0, 0] -> widths [.25, .25, .25, .25]
    expected = 0.25 * (2 / 3 + 1 / 2 + 1 + 1)
    assert r.ap50 == pytest.approx(expected)
    assert r.ap == pytest.approx(expected)


def test_prediction_on_void_is_not_penalised():
    gt = np.zeros(1000, np.int32)
    gt[0:300] = 1
    on_void = r_(500, 900)  # entirely unannotated, highest confidence
    pred = _masks([r_(0, 300), on_void], [0.5, 1.0], gt.size)
    r = evaluate_masks(pred, gt)
    assert r.ap == pytest.approx(1.0) and r.ap25 == pytest.approx(1.0)


def test_mostly_void_prediction_depends_on_threshold():
    # FP of 100 points: 72 void + 28 on gt 1 (IoU 28/372). proportion_ignore = 0.72: ignored where
    # 0.72 > th (th = 0.25, 0.5 ... 0.7), a false positive where 0.72 <= th (0.75 ... 0.9).
    gt = np.zeros(1000, np.int32)
    gt[0:300] = 1
    fp = np.concatenate([r_(0, 28), r_(500, 572)])
    pred = _masks([r_(0, 300), fp], [0.5, 0.9], gt.size)
    r = evaluate_masks(pred, gt)
    for th, ap in r.per_threshold.items():
        assert ap == pytest.approx(1.0 if th < 0.72 else 0.25), th
    assert r.ap == pytest.approx((5 * 1.0 + 4 * 0.25) / 9)
    assert r.ap25 == pytest.approx(1.0)


def test_small_gt_is_ignored_and_not_a_false_negative():
    gt = np.zeros(1000, np.int32)
    gt[0:300] = 1
    gt[300:350] = 2  # 50 points < 100: not evaluated
    # a prediction over the small gt plus void (110 points): everything in it is ignored -> not a FP
    over_small = r_(300, 410)
    pred = _masks([r_(0, 300), over_small], [0.5, 0.95], gt.size)
    r = evaluate_masks(pred, gt)
    assert r.num_gt == 1 and r.num_gt_ignored == 1
    assert r.ap == pytest.approx(1.0)


def test_small_predictions_are_discarded():
    gt = np.zeros(1000, np.int32)
    gt[0:300] = 1
    gt[300:800] = 2
    pred = _masks([r_(0, 300), r_(300, 800), r_(0, 99)], [0.5, 0.5, 1.0], gt.size)
    r = evaluate_masks(pred, gt)
    assert r.num_pred == 2 and r.num_pred_ignored == 1
    assert r.ap == pytest.approx(1.0)


def test_ap25_differs_from_ap50():
    gt = np.zeros(1000, np.int32)
    gt[0:500] = 1
    pred = _masks([r_(0, 200)], [0.8], gt.size)  # IoU 0.4
    r = evaluate_masks(pred, gt)
    assert r.ap25 == pytest.approx(1.0)
    assert r.ap50 == pytest.approx(0.0) and r.ap == pytest.approx(0.0)


def test_no_gt_is_nan_and_no_pred_is_zero():
    gt = np.zeros(500, np.int32)
    r = evaluate_masks(_masks([r_(0, 200)], [0.5], 500), gt)
    assert np.isnan(r.ap) and np.isnan(r.ap50)
    gt[:200] = 4
    r = evaluate_masks(MaskSet.empty(500), gt)
    assert r.ap == 0.0 and r.ap50 == 0.0 and r.ap25 == 0.0


def test_all_ignored_predictions_give_zero_not_a_crash():
    # has gt and has predictions, but every prediction is ignored and the gt is missed: no examples at all
    gt = np.zeros(1000, np.int32)
    gt[0:300] = 1
    r = evaluate_masks(_masks([r_(400, 600)], [0.5], gt.size), gt)
    assert r.ap == 0.0


def test_gt_length_mismatch():
    with pytest.raises(ValueError, match="ground truth"):
        evaluate_masks(MaskSet.empty(10), np.zeros(11, np.int32))


def test_evaluate_scan_dir(tmp_path, monkeypatch):
    from scenegrep.indexer.scans import Scan

    gt = np.zeros(400, np.int32)
    gt[:150] = 3
    np.save(tmp_path / "gt_instances.npy", gt)

    class Fixed:
        name = "fixed"

        def propose(self, scan):
            return _masks([r_(0, 150)], [1.0], scan.num_points)

    fake = Scan("s", tmp_path, "scannet", np.zeros((400, 3)), np.zeros((400, 3)))
    monkeypatch.setattr("scenegrep.indexer.scans.read_scan", lambda p: fake, raising=False)
    assert evaluate_scan_dir(tmp_path, Fixed()).ap == pytest.approx(1.0)


# -- cross-check against the official algorithm ----------------------------------------------------


def official_ap(preds: list[tuple[np.ndarray, float]], gt_ids: np.ndarray) -> dict[float, float]:
    """A literal re-statement of evaluate_semantic_instance.py (assign_instances_for_scan +
    evaluate_matches) for one class and one scene, with dense boolean masks."""
    overlaps = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
    min_region_size = 100
    gt_instances = []
    for inst_id in np.unique(gt_ids):
        if inst_id == 0:
            continue
        gt_instances.append({"instance_id": int(inst_id), "vert_count": int(np.count_nonzero(gt_ids == inst_id)),
                             "matched_pred": []})
    bool_void = gt_ids == 0
    pred_instances = []
    for num, (mask, conf) in enumerate(preds):
        pred_mask = np.zeros(gt_ids.size, bool)
        pred_mask[mask] = True
        n = int(np.count_nonzero(pred_mask))
        if n < min_region_size:
            continue
        p = {"filename": num, "vert_count": n, "confidence": conf,
             "void_intersection": int(np.count_nonzero(bool_void & pred_mask))}
        matched_gt = []
        for gt in gt_instances:
            inter = int(np.count_nonzero((gt_ids == gt["instance_id"]) & pred_mask))
            if inter > 0:
                gc, pc = dict(gt), dict(p)
                gc["intersection"] = inter
                pc["intersection"] = inter
                matched_gt.append(gc)
                gt["matched_pred"].append(pc)
        p["matched_gt"] = matched_gt
        pred_instances.append(p)

    result = {}
    for overlap_th in overlaps:
        pred_visited = {p["filename"]: False for p in pred_instances}
        y_true, y_score = np.empty(0), np.empty(0)
        hard_false_negatives = 0
        gts = [g for g in gt_instances if g["vert_count"] >= min_region_size]
        has_gt, has_pred = bool(gts), bool(pred_instances)
        cur_true = np.ones(len(gts))
        cur_score = np.ones(len(gts)) * (-float("inf"))
        cur_match = np.zeros(len(gts), dtype=bool)
        for gti, gt in enumerate(gts):
            found_match = False
            for pred in gt["matched_pred"]:
                if pred_visited[pred["filename"]]:
                    continue
                union = gt["vert_count"] + pred["vert_count"] - pred["intersection"]
                overlap = float(pred["intersection"]) / union
                if overlap > overlap_th:
                    confidence = pred["confidence"]
                    if cur_match[gti]:
                        max_score = max(cur_score[gti], confidence)
                        min_score = min(cur_score[gti], confidence)
                        cur_score[gti] = max_score
                        cur_true = np.append(cur_true, 0)
                        cur_score = np.append(cur_score, min_score)
                        cur_match = np.append(cur_match, True)
                    else:
                        found_match = True
                        cur_match[gti] = True
                        cur_score[gti] = confidence
                        pred_visited[pred["filename"]] = True
            if not found_match:
                hard_false_negatives += 1
        cur_true = cur_true[cur_match]
        cur_score = cur_score[cur_match]
        for pred in pred_instances:
            found_gt = False
            for gt in pred["matched_gt"]:
                overlap = float(gt["intersection"]) / (gt["vert_count"] + pred["vert_count"] - gt["intersection"])
                if overlap > overlap_th:
                    found_gt = True
                    break
            if not found_gt:
                num_ignore = pred["void_intersection"]
                for gt in pred["matched_gt"]:
                    if gt["vert_count"] < min_region_size:
                        num_ignore += gt["intersection"]
                proportion_ignore = float(num_ignore) / pred["vert_count"]
                if proportion_ignore <= overlap_th:
                    cur_true = np.append(cur_true, 0)
                    cur_score = np.append(cur_score, pred["confidence"])
        y_true = np.append(y_true, cur_true)
        y_score = np.append(y_score, cur_score)
        if has_gt and has_pred:
            score_arg_sort = np.argsort(y_score)
            y_score_sorted = y_score[score_arg_sort]
            y_true_sorted = y_true[score_arg_sort]
            y_true_sorted_cumsum = np.cumsum(y_true_sorted)
            (thresholds, unique_indices) = np.unique(y_score_sorted, return_index=True)
            num_prec_recall = len(unique_indices) + 1
            num_examples = len(y_score_sorted)
            num_true_examples = y_true_sorted_cumsum[-1] if len(y_true_sorted_cumsum) > 0 else 0
            precision = np.zeros(num_prec_recall)
            recall = np.zeros(num_prec_recall)
            y_true_sorted_cumsum = np.append(y_true_sorted_cumsum, 0)
            for idx_res, idx_scores in enumerate(unique_indices):
                cumsum = y_true_sorted_cumsum[idx_scores - 1]
                tp = num_true_examples - cumsum
                fp = num_examples - idx_scores - tp
                fn = cumsum + hard_false_negatives
                precision[idx_res] = float(tp) / (tp + fp)
                recall[idx_res] = float(tp) / (tp + fn)
            precision[-1] = 1.0
            recall[-1] = 0.0
            recall_for_conv = np.copy(recall)
            recall_for_conv = np.append(recall_for_conv[0], recall_for_conv)
            recall_for_conv = np.append(recall_for_conv, 0.0)
            step_widths = np.convolve(recall_for_conv, [-0.5, 0, 0.5], "valid")
            ap_current = np.dot(precision, step_widths)
        elif has_gt:
            ap_current = 0.0
        else:
            ap_current = float("nan")
        result[round(float(overlap_th), 2)] = float(ap_current)
    return result


def _random_scene(rng: np.random.Generator):
    n = int(rng.integers(2000, 5000))
    gt = np.zeros(n, np.int32)
    order = rng.permutation(n)
    pos = 0
    k = int(rng.integers(1, 9))
    for i in range(1, k + 1):
        size = int(rng.choice([int(rng.integers(20, 100)), int(rng.integers(100, 600))]))
        gt[order[pos : pos + size]] = i * 7  # ids need not be consecutive
        pos += size
    preds = []
    ids = np.unique(gt[gt > 0])
    for _ in range(int(rng.integers(0, 14))):
        kind = rng.random()
        if kind < 0.5 and ids.size:  # a perturbed gt instance
            base = np.flatnonzero(gt == rng.choice(ids))
            keep = base[rng.random(base.size) < rng.uniform(0.3, 1.0)]
            extra = rng.choice(n, int(rng.integers(0, base.size + 1)), replace=False)
            m = np.union1d(keep, extra)
        elif kind < 0.7 and ids.size >= 2:  # union of two instances
            a, b = rng.choice(ids, 2, replace=False)
            m = np.flatnonzero((gt == a) | (gt == b))
        elif kind < 0.85 and ids.size:  # random annotated points, spanning several instances
            ann = np.flatnonzero(gt > 0)
            m = rng.choice(ann, min(ann.size, int(rng.integers(50, 500))), replace=False)
        else:  # random blob, mostly on void
            m = rng.choice(n, int(rng.integers(50, 700)), replace=False)
        # coarse scores so that ties happen
        preds.append((np.sort(m), float(np.round(rng.random(), 1))))
    if preds and rng.random() < 0.3:
        preds.append((preds[0][0].copy(), preds[0][1]))  # exact duplicate
    return gt, preds


def test_matches_official_algorithm_on_random_scenes():
    rng = np.random.default_rng(1234)
    compared = 0
    for _ in range(150):
        gt, preds = _random_scene(rng)
        ms = MaskSet.from_lists([p[0] for p in preds], [p[1] for p in preds], gt.size)
        ours = evaluate_masks(ms, gt)
        ref = official_ap(preds, gt)
        for th, v in ref.items():
            if np.isnan(v):
                assert np.isnan(ours.per_threshold[th])
            else:
                assert ours.per_threshold[th] == pytest.approx(v, abs=1e-12), (th, ours.per_threshold, ref)
                compared += 1
        ap_ref = np.mean([ref[round(float(t), 2)] for t in AP_THRESHOLDS])
        assert (np.isnan(ours.ap) and np.isnan(ap_ref)) or ours.ap == pytest.approx(ap_ref, abs=1e-12)
    assert compared > 500


def test_pooled_scans_equal_one_concatenated_scan():
    rng = np.random.default_rng(5)
    pairs, all_gt, all_masks, all_scores, off = [], [], [], [], 0
    for _ in range(3):
        gt, preds = _random_scene(rng)
        ms = MaskSet.from_lists([p[0] for p in preds], [p[1] for p in preds], gt.size)
        pairs.append((ms, gt))
        # disjoint id ranges so that instances of different scans never merge
        all_gt.append(np.where(gt > 0, gt + 100000 * (len(all_gt) + 1), 0))
        all_masks += [p[0] + off for p in preds]
        all_scores += [p[1] for p in preds]
        off += gt.size
    pooled = evaluate_many(pairs)
    one = evaluate_masks(MaskSet.from_lists(all_masks, all_scores, off), np.concatenate(all_gt))
    for th in pooled.per_threshold:
        assert pooled.per_threshold[th] == pytest.approx(one.per_threshold[th], abs=1e-12)
    assert pooled.num_scans == 3


# -- per-instance best IoU and ground truth from 2D label maps ---------------------------------------


def test_per_instance_best_iou():
    gt = np.zeros(1000, np.int32)
    gt[0:200], gt[200:500], gt[500:550] = 1, 2, 7  # gt 7 is small (ignored by AP)
    pred = _masks([r_(0, 150), r_(0, 250), r_(600, 700), r_(500, 540)], [0.9, 0.5, 0.1, 0.3], gt.size)
    r = evaluate_masks(pred, gt, per_instance=True)
    # gt 1: best of 150/200 and 200/250 -> 0.8; gt 2: 50/(250+300-50) = 0.1; gt 7: the 40-point prediction
    # is discarded (< 100 points), so nothing evaluated overlaps it
    assert r.instances == [
        {"gt": 1, "points": 200, "best_iou": pytest.approx(0.8), "ignored": False},
        {"gt": 2, "points": 300, "best_iou": pytest.approx(0.1), "ignored": False},
        {"gt": 7, "points": 50, "best_iou": 0.0, "ignored": True},
    ]
    d = r.as_dict()
    assert [set(i) for i in d["instances"]] == [{"gt", "points", "best_iou", "ignored"}] * 3
    assert "instances" not in evaluate_masks(pred, gt).as_dict()
    assert evaluate_masks(MaskSet.empty(gt.size), gt, per_instance=True).instances[0]["best_iou"] == 0.0


@pytest.fixture(scope="module")
def labelled_scan(synth_scans, tmp_path_factory):
    """A synthetic scan whose instance-filt maps are rendered from its scene; gt_instances.npy moved aside."""
    import shutil

    from scenegrep.indexer.labelmaps import write_synthetic_label_maps

    path = tmp_path_factory.mktemp("lm") / synth_scans[0].name
    shutil.copytree(synth_scans[0], path)
    write_synthetic_label_maps(path)
    gt = np.load(path / "gt_instances.npy")
    (path / "gt_instances.npy").rename(path.parent / "gt_aside.npy")
    return path, gt


def test_ground_truth_from_label_maps_matches_the_3d_ground_truth(labelled_scan):
    from scenegrep.indexer.evaluate import load_ground_truth
    from scenegrep.indexer.scans import read_scan

    path, gt3d = labelled_scan
    scan = read_scan(path)
    gt, source = load_ground_truth(scan)
    assert source == f"label maps ({len(scan.frames)} frames)"
    labelled = gt != 0
    # every label the maps give a point is its 3D ground truth ...
    assert (gt[labelled] == gt3d[labelled]).mean() >= 0.999
    # ... and most object points are labelled (the rest are never seen by a frame: backs, undersides)
    assert (gt[gt3d > 0] == gt3d[gt3d > 0]).mean() >= 0.7
    assert set(np.unique(gt[labelled])) == set(np.unique(gt3d[gt3d > 0]))


def test_evaluate_scan_dir_with_label_maps_and_per_instance(labelled_scan):
    from scenegrep.indexer.proposals.lifted import LiftedProposer
    from scenegrep.indexer.proposals.segmenters import LabelMapSegmenter

    path, _ = labelled_scan
    r = evaluate_scan_dir(path, LiftedProposer(LabelMapSegmenter()), per_instance=True)
    assert r.gt_source.startswith("label maps") and r.as_dict()["gt_source"] == r.gt_source
    assert r.ap50 >= 0.9 and all(i["best_iou"] > 0.5 for i in r.instances if not i["ignored"])


def test_label_maps_missing_or_bad(synth_scans, tmp_path):
    import shutil

    from scenegrep.errors import ScenegrepError
    from scenegrep.indexer.evaluate import load_ground_truth
    from scenegrep.indexer.labelmaps import LabelMapError
    from scenegrep.indexer.scans import read_scan

    path = tmp_path / "s"
    shutil.copytree(synth_scans[0], path)
    (path / "gt_instances.npy").unlink()
    with pytest.raises(LabelMapError, match="no label maps"):
        load_ground_truth(read_scan(path))
    (path / "instance-filt").mkdir()
    (path / "instance-filt" / "0.png").write_bytes(b"garbage")
    with pytest.raises(ScenegrepError, match="0.png"):
        load_ground_truth(read_scan(path))


def test_labelfusion_shelf_ground_truth_from_label_maps(shared_dir):
    from scenegrep.indexer.evaluate import load_ground_truth
    from scenegrep.indexer.proposals.lifted import LiftedProposer
    from scenegrep.indexer.proposals.segmenters import LabelMapSegmenter
    from scenegrep.indexer.scans import read_scan

    scan = read_scan(shared_dir / "data" / "labelfusion-shelf")
    gt, source = load_ground_truth(scan)
    assert source == "label maps (15 frames)"
    ids, counts = np.unique(gt[gt != 0], return_counts=True)
    assert ids.tolist() == [48, 132] and (counts >= 100).all()
    # the maps themselves as 2D masks, lifted and merged, give both objects back
    r = evaluate_masks(LiftedProposer(LabelMapSegmenter()).propose(scan), gt, per_instance=True)
    assert r.ap50 == pytest.approx(1.0) and [i["best_iou"] > 0.5 for i in r.instances] == [True, True]
