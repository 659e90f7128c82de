"""SAM refinement: checkpoint loading through the registry, the per-frame embedding cache, batched prompts
against one-at-a-time ``SamPredictor.predict``, seeded sampling, reduced precision, bad checkpoints.

A tiny SAM (ViT of width 32, 2 blocks, 128 px input, 32-wide decoder) is registered like any architecture
and saved with random weights in tmp_path; it is loaded through ``load_sam_refiner``, the path
``--sam-model/--sam-checkpoint`` take.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile

import numpy as np
import pytest
import torch

from scenegrep.indexer.features.crops import ProjectedPointsRefiner, box_from_pixels
from scenegrep.indexer.features.extractor import FeatureConfig, extract_features
from scenegrep.indexer.features.sam import (
    SamCheckpointError,
    SamRefiner,
    load_sam_refiner,
    mask_box,
    prompt_point_indices,
)
from scenegrep.testing import registered_sam_arch, tiny_sam_arch, write_random_sam_checkpoint
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.scans import read_scan
from scenegrep.indexer.weights import WeightsFileError

TINY = "tiny-test"
TINY_ARCH = tiny_sam_arch()
OTHER = "tiny-test-wide"  # another registered size, to check the "wrong architecture" message
OTHER_ARCH = tiny_sam_arch(48, 3, (2,))


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    with registered_sam_arch(TINY, TINY_ARCH), registered_sam_arch(OTHER, OTHER_ARCH):
        yield write_random_sam_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth", TINY, seed=0)


@pytest.fixture(scope="module")
def scan_and_masks(synth_scans):
    """The first small synthetic scan and its ground-truth objects as masks (plus a never-visible one)."""
    scan = read_scan(synth_scans[0])
    gt = np.load(synth_scans[0] / "gt_instances.npy")
    objects = [np.flatnonzero(gt == i) for i in range(1, int(gt.max()) + 1)]
    return scan, MaskSet.from_lists(objects, None, scan.num_points)


def _frame_inputs(scan, masks, frame_pos: int, top_k: int = 5):
    """(rgb, pixels per mask, depth size, frame id, mask ids) of one used frame, as the stage passes them."""
    from scenegrep.indexer.features.visibility import compute_visibility

    vis = compute_visibility(scan, masks, top_k=top_k)
    pairs = vis.views_by_frame()[frame_pos]
    frame = scan.frames[frame_pos]
    size = (int(vis.depth_sizes[frame_pos, 0]), int(vis.depth_sizes[frame_pos, 1]))
    return frame.load_color(), [vis.pixels[m][j] for m, j in pairs], size, frame.frame_id, [m for m, _ in pairs]


def _busiest_frame(scan, masks) -> int:
    from scenegrep.indexer.features.visibility import compute_visibility

    by = compute_visibility(scan, masks, top_k=5).views_by_frame()
    return max(by, key=lambda v: len(by[v]))


def test_load_identity_and_name(sam_file):
    ref = load_sam_refiner(TINY, sam_file, seed=3, rounds=4, points=2)
    assert ref.name == f"sam:{TINY}"
    ident = ref.identity()
    assert ident == {"method": f"sam:{TINY}", "model_type": TINY,
                     "checkpoint_sha256": hashlib.sha256(sam_file.read_bytes()).hexdigest(),
                     "rounds": 4, "points": 2, "seed": 3, "precision": "fp32"}
    assert ref.stats.image_encodings == 0 and ref.stats["prompts"] == 0
    # weights really come from the file: every tensor equals the saved one
    saved = torch.load(sam_file, weights_only=True)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    with pytest.raises(ValueError):
        load_sam_refiner("vit_x", sam_file)
    with pytest.raises(ValueError):
        load_sam_refiner(TINY, sam_file, rounds=0)


def test_prompt_sampling_is_seeded_by_identity_only():
    a = prompt_point_indices(0, 12, 3, 1000, rounds=10, points=5)
    assert a.shape == (10, 5) and a.dtype == np.int64
    assert all(len(set(row.tolist())) == 5 for row in a)  # without replacement
    assert (a >= 0).all() and (a < 1000).all()
    assert np.array_equal(a, prompt_point_indices(0, 12, 3, 1000, rounds=10, points=5))
    assert len({tuple(r) for r in a.tolist()}) == 10  # rounds differ
    for other in (prompt_point_indices(1, 12, 3, 1000), prompt_point_indices(0, 13, 3, 1000),
                  prompt_point_indices(0, 12, 4, 1000)):
        assert not np.array_equal(a, other)
    # the first rounds do not depend on how many rounds are drawn
    assert np.array_equal(prompt_point_indices(0, 12, 3, 1000, rounds=3), a[:3])
    few = prompt_point_indices(0, 1, 1, 3, rounds=4, points=5)  # P < points: all P, shuffled
    assert few.shape == (4, 3) and all(sorted(r) == [0, 1, 2] for r in few.tolist())


def _one_at_a_time(ref: SamRefiner, rgb, pixels, size, frame_id, mask_ids):
    """OpenMask3D's loop: set_image per mask, predict() per round, strictly-better IoU, mask2box."""
    from scenegrep.indexer.features.crops import scale_box, scale_pixels

    predictor = ref.predictor
    color_size = (rgb.shape[1], rgb.shape[0])
    out, fallbacks = [], 0
    for uv, mid in zip(pixels, mask_ids):
        predictor.set_image(rgb)
        best_score, best_mask = 0.0, None
        for idx in prompt_point_indices(ref.seed, frame_id, mid, len(uv), ref.rounds, ref.points):
            pts = scale_pixels(uv[idx], size, color_size)
            masks, scores, _ = predictor.predict(point_coords=pts, point_labels=np.ones(len(pts)),
                                                 multimask_output=False)
            if scores[0] > best_score:
                best_score, best_mask = scores[0], masks[0]
        box = mask_box(best_mask) if best_mask is not None else None
        if box is None:
            box, fallbacks = scale_box(box_from_pixels(uv), size, color_size), fallbacks + 1
        out.append(box)
    return out, fallbacks


def test_batched_prompts_match_one_at_a_time(sam_file, scan_and_masks):
    scan, masks = scan_and_masks
    rgb, pixels, size, fid, mids = _frame_inputs(scan, masks, _busiest_frame(scan, masks))
    assert len(pixels) >= 3
    # one mask with fewer pixels than points: its prompt sets have another size (another batch group)
    pixels = pixels + [pixels[0][:3]]
    mids = mids + [len(masks) + 7]
    ref = load_sam_refiner(TINY, sam_file, seed=5, prompt_batch=7)  # batches cut across masks
    boxes = ref.refine(rgb, pixels, size, frame_id=fid, mask_ids=mids)
    assert ref.stats.image_encodings == 1
    assert ref.stats.prompts == 10 * len(pixels) and ref.stats.decoder_calls >= 2
    expected, fallbacks = _one_at_a_time(ref, rgb, pixels, size, fid, mids)
    assert boxes == expected
    assert ref.stats.fallbacks == fallbacks < len(pixels)  # the SAM path is exercised, not only the fallback
    projected = ProjectedPointsRefiner().refine(rgb, pixels, size)
    assert sum(b != p for b, p in zip(boxes, projected)) == len(pixels) - fallbacks


def test_refine_does_not_depend_on_batch_composition(sam_file, scan_and_masks):
    scan, masks = scan_and_masks
    rgb, pixels, size, fid, mids = _frame_inputs(scan, masks, _busiest_frame(scan, masks))
    ref = load_sam_refiner(TINY, sam_file, seed=1)
    full = ref.refine(rgb, pixels, size, frame_id=fid, mask_ids=mids)
    order = list(reversed(range(len(pixels))))
    rev = ref.refine(rgb, [pixels[i] for i in order], size, frame_id=fid, mask_ids=[mids[i] for i in order])
    assert [rev[order.index(i)] for i in range(len(pixels))] == full
    alone = ref.refine(rgb, pixels[-1:], size, frame_id=fid, mask_ids=mids[-1:])
    assert alone == full[-1:]
    assert ref.stats.image_encodings == 3  # one per call
    # nothing to prompt: no encoding at all
    assert ref.refine(rgb, [np.zeros((0, 2), np.int32)], size, frame_id=fid, mask_ids=[0]) == [None]
    assert ref.stats.image_encodings == 3


def test_embedding_cache_one_encoding_per_used_frame(sam_file, scan_and_masks, tiny_encoder):
    scan, masks = scan_and_masks
    ref = load_sam_refiner(TINY, sam_file, seed=0)
    cfg = FeatureConfig(frame_step=2, top_k=3)
    feats = extract_features(scan, masks, tiny_encoder, cfg, refiner=ref)
    st = feats.stats
    assert st["mask_method"] == f"sam:{TINY}"
    assert st["frames_used"] == 10
    assert 0 < st["sam_image_encodings"] == st["frames_decoded"] <= st["frames_used"]
    assert st["sam_image_encodings"] == ref.stats.image_encodings
    pairs = int((feats.topk_frames >= 0).sum())
    assert st["openmask3d_sam_encodings"] == pairs > st["sam_image_encodings"]
    assert st["sam_prompts"] == 10 * pairs
    assert st["clip_crops"] == 3 * pairs
    assert st["features_s"] >= st["refine_s"] > 0
    plain = extract_features(scan, masks, tiny_encoder, cfg)
    assert plain.stats["sam_image_encodings"] == 0 and plain.stats["mask_method"] == "projected-points-box"
    assert plain.stats["openmask3d_sam_encodings"] == pairs
    assert not np.array_equal(plain.vectors, feats.vectors)  # SAM boxes changed the crops


def test_same_seed_bit_identical_other_seed_other_points(sam_file, scan_and_masks, tiny_encoder):
    scan, masks = scan_and_masks
    cfg = FeatureConfig(frame_step=2, top_k=3)
    runs = [extract_features(scan, masks, tiny_encoder, cfg, refiner=load_sam_refiner(TINY, sam_file, seed=s))
            for s in (11, 11, 12)]
    assert np.array_equal(runs[0].vectors, runs[1].vectors)
    assert runs[0].vectors.tobytes() == runs[1].vectors.tobytes()
    # another seed samples other points for the same (frame, mask, round) ...
    assert not np.array_equal(prompt_point_indices(11, 4, 0, 500), prompt_point_indices(12, 4, 0, 500))
    # ... and here that moves at least one SAM box, hence a vector
    assert not np.array_equal(runs[0].vectors, runs[2].vectors)


@pytest.mark.parametrize("precision, sam_bound", [("bf16", 0.99), ("fp16", 0.9999)])
def test_reduced_precision_on_cpu(sam_file, scan_and_masks, tiny_clip_model, precision, sam_bound):
    """fp16/bf16 autocast (CPU here, CUDA on a GPU) keeps the mask vectors' directions.

    Measured on 4 small synthetic scans with these tiny random models (28 masks), min cosine to fp32:
    CLIP alone 0.999991 (bf16) / 0.9999998 (fp16); with SAM (image encoder in low precision, decoder
    fp32) 0.9961 (bf16) / 0.9999998 (fp16). bf16 moves some SAM boxes: this random SAM's predicted IoUs
    differ by ~0.01 between rounds, so bf16's coarser image embedding sometimes changes the winning round.
    """
    from scenegrep.indexer.features.encoders import load_encoder

    try:
        enc_lo = load_encoder(tiny_clip_model, None, precision=precision)
        sam_lo = load_sam_refiner(TINY, sam_file, precision=precision)
    except ValueError as e:
        pytest.skip(f"{precision} autocast not supported on this CPU build: {e}")
    assert sam_lo.identity()["precision"] == precision and enc_lo.precision == precision
    scan, masks = scan_and_masks
    cfg = FeatureConfig(frame_step=2, top_k=3)
    enc32 = load_encoder(tiny_clip_model, None)

    def cosines(refiner32, refiner_lo):
        a = extract_features(scan, masks, enc32, cfg, refiner=refiner32)
        b = extract_features(scan, masks, enc_lo, cfg, refiner=refiner_lo)
        assert a.valid.tolist() == b.valid.tolist() and a.valid.any()
        assert not np.array_equal(a.vectors, b.vectors)  # the low precision really ran
        return np.sum(a.vectors[a.valid] * b.vectors[a.valid], axis=1)

    assert cosines(None, None).min() >= 0.99995  # CLIP alone
    assert cosines(load_sam_refiner(TINY, sam_file), sam_lo).min() >= sam_bound


def _bad(tmp_path, name: str, obj=None, raw: bytes | None = None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    return path


def test_bad_checkpoints_one_clear_error(sam_file, tmp_path):
    good = torch.load(sam_file, weights_only=True)
    data = sam_file.read_bytes()
    dropped = dict(good)
    missing_key = min(dropped)
    del dropped[missing_key]
    reshaped = dict(good)
    reshaped["mask_decoder.iou_token.weight"] = torch.zeros(1, 33)
    extra = dict(good, **{"image_encoder.extra.weight": torch.zeros(2)})
    other_file = write_random_sam_checkpoint(tmp_path / "other.pth", OTHER, mask_fraction=None)

    class Evil:
        def __reduce__(self):
            return (print, ("never run",))

    cases = {
        "missing": (tmp_path / "nope.pth", "no such file"),
        "text": (_bad(tmp_path, "notes.pth", raw=b"this is not a checkpoint\n"), "not a PyTorch checkpoint"),
        "truncated": (_bad(tmp_path, "cut.pth", raw=data[: len(data) // 2]), "truncated"),
        "corrupt": (_bad(tmp_path, "zeroed.pth", raw=data[:-200] + bytes(200)), "truncated or corrupt"),
        "pickle": (_bad(tmp_path, "list.pth", raw=pickle.dumps([1, 2, 3], protocol=2)), "not a PyTorch checkpoint"),
        "garbage": (_bad(tmp_path, "garbage.pth", raw=b"\x80\x02garbage"), "not a PyTorch checkpoint"),
        "objects": (_bad(tmp_path, "objs.pth", obj={"w": Evil()}), "other than tensors"),
        "plain pickle": (_bad(tmp_path, "evil.pth", raw=pickle.dumps({"w": Evil()})), "not a PyTorch checkpoint"),
        "wrapped": (_bad(tmp_path, "wrapped.pth", obj={"model": good, "epoch": 3}), "not a SAM state dict"),
        "not sam": (_bad(tmp_path, "clip.pth", obj={"visual.proj": torch.zeros(2)}), "not a SAM checkpoint"),
        "missing key": (_bad(tmp_path, "dropped.pth", obj=dropped), f"missing keys {missing_key}"),
        "shape": (_bad(tmp_path, "shape.pth", obj=reshaped), "mis-shaped mask_decoder.iou_token.weight"),
        "extra": (_bad(tmp_path, "extra.pth", obj=extra), "unexpected keys image_encoder.extra.weight"),
        "other arch": (other_file, f"a {OTHER} SAM checkpoint (image encoder width 48, 3 blocks), not {TINY}"),
    }
    assert zipfile.is_zipfile(tmp_path / "zeroed.pth") is False
    for case, (path, words) in cases.items():
        with pytest.raises(SamCheckpointError) as err:
            load_sam_refiner(TINY, path)
        msg = str(err.value)
        assert isinstance(err.value, WeightsFileError)
        assert "\n" not in msg and msg.startswith(f"{path}: "), (case, msg)
        assert words in msg, (case, msg)
    # a known architecture's file given for another size says which one it is
    with pytest.raises(SamCheckpointError, match=f"pass --sam-model {OTHER}"):
        load_sam_refiner(TINY, other_file)
    with pytest.raises(SamCheckpointError, match=f"a {TINY} SAM checkpoint .*, not vit_l .*--sam-model {TINY}"):
        load_sam_refiner("vit_l", sam_file)
    odd = dict(good, **{"image_encoder.patch_embed.proj.weight": torch.zeros(40, 3, 16, 16)})
    unknown = rf"of an unknown size \(image encoder width 40, 2 blocks\), not {TINY}"
    with pytest.raises(SamCheckpointError, match=unknown):
        load_sam_refiner(TINY, _bad(tmp_path, "odd.pth", obj=odd))
