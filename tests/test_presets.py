"""Feature presets: OpenMask3D's exact settings, override precedence, and OpenMask3D's own outputs
reproduced through ``--preset openmask3d`` (library and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from scenegrep.indexer.features.crops import ProjectedPointsRefiner, multi_level_boxes
from scenegrep.indexer.features.encoders import load_encoder
from scenegrep.indexer.features.extractor import FeatureConfig, extract_features
from scenegrep.indexer.features.presets import (
    DEFAULT,
    OPENMASK3D,
    PRESETS,
    WHY_DIFFERENT,
    get_preset,
    preset_table_markdown,
    sam_model_for,
)
from scenegrep.cli import cli
from scenegrep.storage import Store


def run(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_openmask3d_preset_holds_openmask3d_settings():
    p = get_preset("openmask3d")
    assert p is OPENMASK3D and set(PRESETS) == {"default", "openmask3d"}
    assert (p.frame_step, p.depth_threshold, p.top_k, p.crop_levels, p.crop_expansion) == (10, 0.2, 5, 3, 0.1)
    assert p.require_positive_depth is False and p.renormalize is False
    assert (p.sam_model, p.sam_rounds, p.sam_points) == ("vit_h", 10, 5)
    assert (p.clip_model, p.clip_pretrained) == ("ViT-L-14-336", "openai")
    cfg = p.feature_config()
    assert isinstance(cfg, FeatureConfig)
    assert (cfg.frame_step, cfg.depth_threshold, cfg.top_k, cfg.crop_levels, cfg.crop_expansion) == (10, 0.2, 5, 3, 0.1)
    assert cfg.require_positive_depth is False and cfg.renormalize is False


def test_default_preset_is_the_feature_config_default():
    d = DEFAULT.feature_config()
    plain = FeatureConfig()
    for f in ("frame_step", "depth_threshold", "top_k", "crop_levels", "crop_expansion",
              "require_positive_depth", "renormalize"):
        assert getattr(d, f) == getattr(plain, f), f
    assert DEFAULT.sam_model is None and DEFAULT.frame_step is None


def test_overrides_win_and_leave_the_rest():
    p = OPENMASK3D.with_overrides(frame_step=1, top_k=3)
    assert (p.frame_step, p.top_k) == (1, 3)
    assert p.settings() == {**OPENMASK3D.settings(), "frame_step": 1, "top_k": 3}
    assert OPENMASK3D.frame_step == 10  # presets are frozen; overriding makes a copy
    assert OPENMASK3D.with_overrides(frame_step=None).feature_config().frame_step is None  # explicit "auto"
    assert OPENMASK3D.feature_config(batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="unknown preset setting"):
        OPENMASK3D.with_overrides(topk=3)
    with pytest.raises(ValueError):
        OPENMASK3D.with_overrides(top_k=0)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("scannet")


def test_table_lists_every_setting_with_a_reason():
    table = preset_table_markdown()
    assert set(WHY_DIFFERENT) == set(DEFAULT.settings())
    for key in DEFAULT.settings():
        (row,) = [ln for ln in table.splitlines() if ln.startswith(f"| {key} |")]
        differs = getattr(DEFAULT, key) != getattr(OPENMASK3D, key)
        assert (WHY_DIFFERENT[key] != "same") == differs, key


def test_sam_model_resolution(tmp_path):
    official = tmp_path / "sam_vit_b_01ec64.pth"
    assert sam_model_for(official, None, DEFAULT) == "vit_b"
    assert sam_model_for(official, "vit_l", DEFAULT) == "vit_l"  # explicit wins over the file name
    assert sam_model_for(tmp_path / "weights.pth", None, OPENMASK3D) == "vit_h"  # the preset's model
    assert sam_model_for(tmp_path / "sam_vit_l.pth", None, OPENMASK3D) == "vit_l"  # the file name beats it
    with pytest.raises(ValueError, match="--sam-model"):
        sam_model_for(tmp_path / "weights.pth", None, DEFAULT)
    with pytest.raises(ValueError, match="several"):
        sam_model_for(tmp_path / "vit_b-vs-vit_h.pth", None, DEFAULT)


# -- OpenMask3D's fixture through the preset ------------------------------------------------------------------


class _RecordingRefiner(ProjectedPointsRefiner):
    """The default refiner, recording each (mask, frame)'s level-0 box."""

    def __init__(self) -> None:
        self.boxes: dict[tuple[int, int], tuple[int, ...]] = {}

    def refine(self, image, pixels, pixel_size, *, frame_id=0, mask_ids=None):
        out = super().refine(image, pixels, pixel_size, frame_id=frame_id, mask_ids=mask_ids)
        for m, box in zip(mask_ids, out, strict=True):
            if box is not None:
                self.boxes[(int(m), int(frame_id))] = tuple(box)
        return out


def _fixture_root(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "openmask3d-features"


def test_openmask3d_fixture_through_the_preset(openmask3d_fixture, shared_dir):
    scan, masks, exp = openmask3d_fixture
    enc = load_encoder(f"local-dir:{_fixture_root(shared_dir) / 'tinyclip'}", None)
    # The fixture ran OpenMask3D with frequency 1 (12 frames): the only setting changed from the preset.
    cfg = OPENMASK3D.with_overrides(frame_step=1).feature_config()
    refiner = _RecordingRefiner()
    feats = extract_features(scan, masks, enc, cfg, refiner=refiner)

    counts = exp["visible_counts"]  # (view, mask)
    for m in range(len(masks)):
        seen = [int(v) for v in exp["topk_views"][m] if counts[v, m] > 0]
        assert feats.topk_frames[m, : len(seen)].tolist() == seen, m
        assert (feats.topk_frames[m, len(seen):] == -1).all()

    rows = exp["crop_boxes"]  # (mask, view, level, x1, y1, x2, y2); frame ids are the view positions here
    level0 = {(m, v): tuple(box) for m, v, level, *box in rows.tolist() if level == 0}
    assert refiner.boxes == level0
    for m, v, level, *box in rows.tolist():
        assert multi_level_boxes(level0[(m, v)], cfg.crop_levels, cfg.crop_expansion,
                                 image_size=(320, 240))[level] == tuple(box)
    assert feats.stats["clip_crops"] == len(rows) == 132

    ref = exp["features"]
    visible = np.linalg.norm(ref, axis=1) > 0
    assert feats.valid.tolist() == visible.tolist()
    # renormalize=False: the raw mean, norms below 1 exactly as OpenMask3D's.
    np.testing.assert_allclose(feats.vectors, ref, atol=1e-6, rtol=0)
    a, b = feats.vectors[visible].astype(np.float64), ref[visible].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99999


def test_cli_index_fixture_with_openmask3d_preset(openmask3d_fixture, shared_dir, home):
    """The user's path: ``index --preset openmask3d`` on the fixture scene with its masks; the stored
    vectors (float16 unit directions) point where OpenMask3D's do."""
    _, _, exp = openmask3d_fixture
    root = _fixture_root(shared_dir)
    res = json.loads(run("index", root / "scene", "--preset", "openmask3d", "--frame-step", "1",
                         "--proposer", "file", "--masks", root / "scene" / "masks.npz",
                         "--clip-model", f"local-dir:{root / 'tinyclip'}", "--json").stdout)
    assert res[0]["status"] == "indexed" and res[0]["instances"] == 10 and res[0]["searchable"] == 9
    (scan,) = json.loads(run("scans", "--json").stdout)
    assert scan["preset"] == "openmask3d" and scan["mask_method_2d"] == "projected-points-box"
    assert scan["info"]["features"]["frame_step"] == 1 and scan["info"]["clip_crops"] == 132
    with Store.open(home, read_only=True) as store:
        ids = [i.id for i in store.instances(scan["name"])]
    shown = [json.loads(run("show", i, "--json", "--vector").stdout) for i in ids]
    assert sorted(s["mask_index"] for s in shown) == list(range(10))
    for s in shown:
        ref = exp["features"][s["mask_index"]].astype(np.float64)
        if not ref.any():
            assert s["vector"] is None and s["searchable"] is False
            continue
        v = np.asarray(s["vector"], np.float64)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=2e-3)
        assert v @ ref / np.linalg.norm(v) / np.linalg.norm(ref) >= 0.99999
