"""Mask3D on spconv: parity with the original code (../shared/fixtures/mask3d-parity), the full-size key
set, checkpoint-layout round trips and architecture errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scenegrep.indexer.proposals.mask3d.arch import ArchError, infer_arch, tiny_arch
from scenegrep.indexer.proposals.mask3d.convert import (
    expected_checkpoint_shapes,
    export_mask3d_state,
    load_mask3d_state,
    me_kernel_to_spconv,
    spconv_to_me_kernel,
    strip_model_prefix,
)
from scenegrep.indexer.proposals.mask3d.model import Mask3D, _avg_pool
from scenegrep.testing import random_mask3d_state
from scenegrep.indexer.proposals.mask3d.voxelize import voxelize

TINY_HPARAMS = {"config": {"model": {"hidden_dim": 32, "dim_feedforward": 64, "num_queries": 16, "num_heads": 4,
                                     "num_decoders": 3, "shared_decoder": True, "hlevels": [0, 1, 2, 3],
                                     "normalize_pos_enc": True, "voxel_size": 0.02, "num_classes": 201}}}


@pytest.fixture(scope="module")
def parity(mask3d_parity):
    """(model, inputs, expected) of the parity fixture."""
    ck = torch.load(mask3d_parity.folder / "checkpoint.ckpt", weights_only=True)
    sd = strip_model_prefix(ck["state_dict"])
    model = Mask3D(infer_arch(sd, ck["hyper_parameters"])).eval()
    load_mask3d_state(model, sd)
    return model, mask3d_parity.inputs, mask3d_parity.expected


@pytest.fixture(scope="module")
def parity_run(parity):
    model, inputs, expected = parity
    vox = voxelize(inputs["points_xyz"], inputs["points_colors"], voxel_size=model.arch.voxel_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(vox.coords), torch.from_numpy(vox.features), torch.from_numpy(vox.raw_coords),
                        keep_aux=True)
    finally:
        torch.set_num_threads(threads)
    return vox, out


def _close(actual, expected, atol):
    actual = np.asarray(actual.detach() if torch.is_tensor(actual) else actual)
    diff = float(np.abs(actual - expected).max())
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol}"


def test_voxelisation_matches_the_original_collate(parity, parity_run):
    _, inputs, _ = parity
    vox, _ = parity_run
    np.testing.assert_array_equal(vox.coords, inputs["voxel_coords"])
    np.testing.assert_array_equal(vox.unique_map, inputs["unique_map"])
    np.testing.assert_array_equal(vox.inverse_map, inputs["inverse_map"])
    np.testing.assert_array_equal(vox.features, inputs["voxel_features"])  # bit-exact float32 recipe
    np.testing.assert_array_equal(vox.raw_coords, inputs["raw_coordinates"])
    unit = voxelize(inputs["points_xyz"], inputs["points_colors"], color_mode="unit")
    np.testing.assert_array_equal(unit.features, inputs["voxel_features_openmask3d_unnormalized"])


def test_backbone_and_pyramid_match_the_original(parity, parity_run):
    _, _, exp = parity
    _, out = parity_run
    _close(out.backbone_features, exp["backbone_features"], 1e-4)
    _close(out.mask_features, exp["mask_features"], 1e-4)
    for level in range(4):
        coords, feats = (t.numpy() for t in out.pyramid[level])
        ref_coords = exp[f"fmap{level}_coords"]
        # MinkowskiEngine's row order at coarse strides is its hash order: match rows by coordinate.
        rows = {tuple(c): i for i, c in enumerate(coords.tolist())}
        assert set(rows) == {tuple(c) for c in ref_coords.tolist()}, f"level {level} coordinate sets differ"
        order = [rows[tuple(c)] for c in ref_coords.tolist()]
        _close(feats[order], exp[f"fmap{level}_feats"], 1e-4)


def test_queries_and_decoder_outputs_match_the_original(parity, parity_run):
    _, _, exp = parity
    _, out = parity_run
    np.testing.assert_array_equal(out.fps_idx.numpy(), exp["fps_idx"])
    _close(out.aux[0][0], exp["aux0_pred_logits"], 1e-4)
    _close(out.aux[0][1], exp["aux0_pred_masks"], 1e-4)
    _close(out.aux[1][1], exp["aux1_pred_masks"], 2e-4)
    _close(out.aux[4][1], exp["aux4_pred_masks"], 2e-4)
    _close(torch.stack([a[0] for a in out.aux]), exp["aux_pred_logits"], 5e-5)
    _close(out.pred_logits, exp["pred_logits"], 5e-5)
    _close(out.pred_masks, exp["pred_masks"], 2e-4)


def test_attention_masks_equal_those_of_the_reference_predictions(parity, parity_run):
    """The keys each query may see (pooled mask >= 0.5) are exactly those the original's predictions give,
    at every step for which the fixture stores the predicted masks."""
    model, _, exp = parity
    _, out = parity_run
    sizes = [c.shape[0] for c, _ in out.pyramid]
    levels = model.arch.hlevels
    for step, ref in ((0, exp["aux0_pred_masks"]), (1, exp["aux1_pred_masks"]), (4, exp["aux4_pred_masks"])):
        theirs = torch.from_numpy(ref)
        for level in range(len(sizes) - 1, levels[step % len(levels)], -1):
            theirs = _avg_pool(theirs, out.parents[level - 1], sizes[level - 1])
        blocked = theirs.sigmoid() < 0.5
        blocked[:, blocked.all(dim=0)] = False
        assert torch.equal(out.aux[step][2], blocked)
        assert 0.2 < blocked.float().mean() < 0.8  # the fixture exercises the masks (README: 40-60 %)


def test_final_mask_signs_match_away_from_zero(parity, parity_run):
    _, _, exp = parity
    _, out = parity_run
    ref = exp["pred_masks"]
    safe = np.abs(ref) > 1e-3  # the README's margin: float32 noise may flip logits closer to 0
    assert safe.mean() > 0.99
    np.testing.assert_array_equal((out.pred_masks.numpy() > 0)[safe], (ref > 0)[safe])


# -- checkpoint layout ---------------------------------------------------------------------------------


def test_kernel_layout_round_trips_and_follows_minkowski_offset_order():
    k, cin, cout = 3, 2, 4
    me = torch.randn(k ** 3, cin, cout)
    sp = me_kernel_to_spconv(me)
    assert sp.shape == (cout, k, k, k, cin)
    # ME offset index (dx + 1) + 3 (dy + 1) + 9 (dz + 1): x fastest; spconv indexes (out, x, y, z, in)
    dx, dy, dz = 1, -1, 0
    torch.testing.assert_close(sp[:, dx + 1, dy + 1, dz + 1, :], me[(dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)].T)
    torch.testing.assert_close(spconv_to_me_kernel(sp), me)


def test_full_size_res16unet34c_key_set_loads_exactly(shared_dir):
    """A random checkpoint with every key and shape of the real ScanNet200 model loads; our model asks
    for exactly that key set."""
    spec = json.loads((shared_dir / "fixtures" / "mask3d-parity" / "shapes_res16unet34c.json").read_text())
    gen = torch.Generator().manual_seed(0)
    state = {e["key"]: (torch.zeros(e["shape"], dtype=torch.int64) if e["dtype"] == "int64"
                        else torch.randn(e["shape"], generator=gen) * 0.01)
             for e in spec["entries"]}
    hparams = {"config": {"model": spec["model_config"]}}
    sd = strip_model_prefix(state)
    arch = infer_arch(sd, hparams)
    assert arch.backbone.name == "Res16UNet34C"
    assert (arch.hidden_dim, arch.num_heads, arch.dim_feedforward, arch.num_queries, arch.num_classes) == (128, 8, 1024, 150, 201)
    model = Mask3D(arch)
    wanted = expected_checkpoint_shapes(model)
    given = {e["key"]: tuple(e["shape"]) for e in spec["entries"] if not e["key"].startswith("criterion.")}
    assert wanted == given
    load_mask3d_state(model, sd)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == spec["num_model_parameters"]


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random Mask3D checkpoint state dict in the original key layout."""
    return random_mask3d_state(tiny_arch(), seed)


def test_export_then_load_reproduces_the_model():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 1.5, (3000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
    vox = voxelize(xyz, rgb)
    state = _tiny_state(1)
    sd = strip_model_prefix(state)
    a = Mask3D(infer_arch(sd, TINY_HPARAMS)).eval()
    load_mask3d_state(a, sd)
    b = Mask3D(infer_arch(strip_model_prefix(export_mask3d_state(a)), TINY_HPARAMS)).eval()
    load_mask3d_state(b, strip_model_prefix(export_mask3d_state(a)))
    args = (torch.from_numpy(vox.coords), torch.from_numpy(vox.features), torch.from_numpy(vox.raw_coords))
    # one thread: spconv's multi-threaded CPU scatter is not bit-deterministic (MinkowskiEngine's neither)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            oa, ob = a(*args), b(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(oa.pred_masks, ob.pred_masks) and torch.equal(oa.pred_logits, ob.pred_logits)


# -- errors ----------------------------------------------------------------------------------------------


def test_missing_key_is_named():
    sd = strip_model_prefix(_tiny_state())
    del sd["decoder_norm.bias"]
    model = Mask3D(infer_arch(sd, TINY_HPARAMS))
    with pytest.raises(ArchError, match=r"missing key model\.decoder_norm\.bias"):
        load_mask3d_state(model, sd)


def test_unexpected_key_is_named():
    sd = strip_model_prefix(_tiny_state())
    sd["backbone.extra.kernel"] = torch.zeros(1)
    model = Mask3D(infer_arch(sd, TINY_HPARAMS))
    with pytest.raises(ArchError, match=r"unexpected key model\.backbone\.extra\.kernel"):
        load_mask3d_state(model, sd)


def test_wrong_shape_is_named():
    sd = strip_model_prefix(_tiny_state())
    sd["backbone.block3.0.conv1.kernel"] = torch.zeros(27, 32, 31)
    model = Mask3D(infer_arch(sd, TINY_HPARAMS))
    with pytest.raises(ArchError, match=r"block3\.0\.conv1\.kernel has shape \(27, 32, 31\)"):
        load_mask3d_state(model, sd)


@pytest.mark.parametrize("change, message", [
    ({"hidden_dim": 64}, "hidden_dim=64 but the weights have 32"),
    ({"num_heads": 5}, "num_heads=5 does not divide hidden_dim=32"),
    ({"hlevels": [0, 1, 2]}, "has 3 levels but the weights have 4"),
    ({"hlevels": [0, 1, 2, 2]}, "lin_squeeze.0.3.weight takes 16 channels but level 2"),
    ({"num_classes": 19}, "num_classes=19 but the weights have 201"),
    ({"non_parametric_queries": False}, "only farthest-point-sampled queries"),
])
def test_wrong_architecture_numbers_are_reported(change, message):
    sd = strip_model_prefix(_tiny_state())
    hp = {"config": {"model": {**TINY_HPARAMS["config"]["model"], **change}}}
    with pytest.raises(ArchError, match=message.replace(".", r"\.").replace("(", r"\(")):
        infer_arch(sd, hp)


def test_settings_without_hyper_parameters_need_explicit_values():
    sd = strip_model_prefix(_tiny_state())
    with pytest.raises(ArchError, match="num_heads is not stored"):
        infer_arch(sd, None)
    arch = infer_arch(sd, None, {"num_heads": 4, "num_queries": 8})
    assert (arch.num_heads, arch.num_queries, arch.sources["num_heads"]) == (4, 8, "override")


def test_backbone_is_deterministic_with_several_threads():
    """spconv's CPU kernels race under several torch threads (0.5 errors); the model guards against it."""
    rng = np.random.default_rng(1)
    xyz = rng.uniform(0, 2.0, (20000, 3)).astype(np.float32)
    vox = voxelize(xyz, rng.integers(0, 256, (20000, 3), dtype=np.uint8))
    model = Mask3D(tiny_arch()).eval()
    load_mask3d_state(model, strip_model_prefix(random_mask3d_state(tiny_arch(), 0)))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            runs = [model.run_backbone(torch.from_numpy(vox.coords), torch.from_numpy(vox.features))[0]
                    for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for other in runs[1:]:
        assert torch.equal(runs[0].levels[-1].features, other.levels[-1].features)
