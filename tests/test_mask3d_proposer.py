"""``--proposer mask3d`` end to end: checkpoint file -> masks -> catalog, with random checkpoints written
here and the original code's outputs (../shared/fixtures/mask3d-parity) as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.proposals.mask3d.arch import tiny_arch
from scenegrep.indexer.proposals.mask3d.checkpoint import Mask3DCheckpointError
from scenegrep.testing import (
    random_mask3d_state,
    write_random_mask3d_checkpoint,
)
from scenegrep.indexer.scans import Scan, read_scan
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_random_mask3d_checkpoint(tmp_path_factory.mktemp("mask3d") / "tiny.ckpt", tiny_arch(num_queries=12), seed=3)


def test_index_with_mask3d_end_to_end(home, synth_scans, tiny_clip_model, tiny_ckpt, tmp_path):
    out = json.loads(run("index", synth_scans[0], "--proposer", "mask3d", "--checkpoint", tiny_ckpt,
                         "--clip-model", tiny_clip_model, "--json", "-q").output)
    assert out[0]["status"] == "indexed", out
    scans = json.loads(run("scans", "--json").output)
    ident = scans[0]["info"]["proposer_identity"]
    assert ident["name"] == "mask3d" and ident["postprocess"] == "default" and len(ident["checkpoint_sha256"]) == 64
    # the stored masks are exactly the proposer's masks for that scan (sparse, in score order)
    scan = read_scan(synth_scans[0])
    direct = make_proposer("mask3d", checkpoint=tiny_ckpt).propose(scan)
    assert len(direct) > 0
    run("propose", synth_scans[0], "--out", tmp_path / "m.npz", "--proposer", "mask3d", "--checkpoint", tiny_ckpt)
    saved = MaskSet.load_npz(tmp_path / "m.npz")
    assert saved.num_points == scan.num_points and len(saved) == len(direct)
    assert all(np.array_equal(a, b) for a, b in zip(saved, direct))
    hits = json.loads(run("search", "a chair", "--json", "-k", "3").output)
    assert hits and all(h["scan"] == scan.name for h in hits)


def test_default_postprocess_stores_each_point_set_once(tiny_ckpt, synth_scans):
    scan = read_scan(synth_scans[1])
    masks = make_proposer("mask3d", checkpoint=tiny_ckpt).propose(scan)
    keys = {m.tobytes() for m in masks}
    assert len(keys) == len(masks)
    assert np.all(np.diff(masks.scores) <= 0) and np.all((masks.scores >= 0) & (masks.scores <= 1))


def _fixture_scan(parity) -> Scan:
    return Scan(name="fragment", root=parity.folder, layout="scannet", points=parity.inputs["points_xyz"],
                colors=parity.inputs["points_colors"])


@pytest.mark.parametrize("mode, prefix", [("openmask3d", "openmask3d"), ("mask3d", "mask3d_dbscan")])
def test_fixture_checkpoint_gives_the_original_final_masks(mask3d_parity, mode, prefix):
    """From the points alone: the same set of distinct final masks as the original code (points whose
    final logit is within 1e-3 of 0 may flip, as the fixture README allows)."""
    exp, inputs = mask3d_parity.expected, mask3d_parity.inputs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        masks = make_proposer("mask3d", checkpoint=mask3d_parity.folder / "checkpoint.ckpt", postprocess=mode,
                              topk=100).propose(_fixture_scan(mask3d_parity))
    finally:
        torch.set_num_threads(threads)
    near_zero = np.abs(exp["pred_masks"]).min(axis=1) < 1e-3  # per voxel, any query
    unsure = near_zero[inputs["inverse_map"]]
    ptr, idx = exp["pp_masks_indptr"], exp["pp_masks_indices"]
    ref_ids = list(dict.fromkeys(exp[f"{prefix}_mask_id"].tolist()))
    assert len(masks) == len(ref_ids)

    def sure(points):
        keep = np.zeros(unsure.size, bool)
        keep[points] = True
        return keep & ~unsure

    expected = [sure(idx[ptr[m]:ptr[m + 1]]) for m in ref_ids]
    for got in masks:
        assert any(np.array_equal(sure(got.astype(np.int64)), e) for e in expected)


# -- bad checkpoints through the proposer -------------------------------------------------------------------


def test_missing_key_names_the_file_and_key(tmp_path):
    state = random_mask3d_state(tiny_arch(), seed=0)
    del state["model.class_embed_head.bias"]
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": {"model": {"num_heads": 4, "num_queries": 8}}}},
               path)
    with pytest.raises(Mask3DCheckpointError) as err:
        make_proposer("mask3d", checkpoint=path)
    assert str(path) in str(err.value) and "missing key model.class_embed_head.bias" in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_shape_and_wrong_numbers_are_one_line_cli_errors(tmp_path, synth_scans):
    state = random_mask3d_state(tiny_arch(), seed=0)
    state["model.backbone.block1.0.conv2.kernel"] = torch.zeros(27, 16, 8)
    shape = tmp_path / "shape.ckpt"
    torch.save({"state_dict": state}, shape)
    res = run("propose", synth_scans[0], "--out", tmp_path / "m.npz", "--proposer", "mask3d", "--checkpoint", shape,
              ok=False)
    assert_one_line_error(res, str(shape))
    numbers = tmp_path / "numbers.ckpt"
    torch.save({"state_dict": random_mask3d_state(tiny_arch(), seed=0),
                "hyper_parameters": {"config": {"model": {"num_heads": 4, "num_queries": 8, "hidden_dim": 64}}}},
               numbers)
    res = run("propose", synth_scans[0], "--out", tmp_path / "m.npz", "--proposer", "mask3d", "--checkpoint",
              numbers, ok=False)
    assert_one_line_error(res, str(numbers), "hidden_dim=64 but the weights have 32")
    assert not (tmp_path / "m.npz").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "scene.ply"
    path.write_text("ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(Mask3DCheckpointError, match="scene.ply"):
        make_proposer("mask3d", checkpoint=path)
