"""The CLI through click's CliRunner: the commands and JSON shapes other tools rely on, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from plyfile import PlyData

from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.cli import cli
from scenegrep.testing import tiny_sam_arch, write_random_sam_checkpoint


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    err = lines[-1]
    assert err.startswith("Error: "), result.output
    for n in needles:
        assert n in err, err


@pytest.fixture()
def indexed_home(home, synth_scans, tiny_clip_model):
    run("index", *synth_scans, "--clip-model", tiny_clip_model, "-q")
    return home


def test_index_search_show_export_scans_stats_remove(indexed_home, synth_scans, tiny_clip_model, tmp_path):
    res = run("search", "a red chair", "-k", "50", "--json")
    hits = json.loads(res.stdout)
    assert hits and {"id", "scan", "score", "n_points", "bbox", "thumbnail"} <= set(hits[0])
    assert {h["scan"] for h in hits} == {p.name for p in synth_scans}  # ranked across both scans
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["thumbnail"] and Path(hits[0]["thumbnail"]).is_file()

    only = json.loads(run("search", "a chair", "--scan", synth_scans[1].name, "--json").stdout)
    assert only and {h["scan"] for h in only} == {synth_scans[1].name}

    top = hits[0]
    shown = json.loads(run("show", top["id"], "--json").stdout)
    assert shown["id"] == top["id"] and shown["n_points"] == top["n_points"]

    out = tmp_path / "hit.ply"
    run("export", top["id"], out)
    ply = PlyData.read(str(out))["vertex"]
    assert len(ply) == top["n_points"]
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], axis=1)
    np.testing.assert_allclose(xyz.min(0), top["bbox"][:3], atol=1e-3)
    np.testing.assert_allclose(xyz.max(0), top["bbox"][3:], atol=1e-3)

    scans = json.loads(run("scans", "--json").stdout)
    assert {s["name"] for s in scans} == {p.name for p in synth_scans}
    assert all(s["status"] == "indexed" and s["instances"] > 0 for s in scans)
    stats = json.loads(run("stats", "--json").stdout)
    assert stats["scans"] == 2 and stats["instances"] == sum(s["instances"] for s in scans)

    # Unchanged scans are a no-op.
    again = json.loads(run("index", synth_scans[0], "--clip-model", tiny_clip_model, "--json").stdout)
    assert again[0]["status"] == "unchanged"

    run("remove", synth_scans[0].name)
    left = json.loads(run("search", "a red chair", "-k", "50", "--json").stdout)
    assert left and {h["scan"] for h in left} == {synth_scans[1].name}
    assert_one_line_error(run("show", top["id"], ok=False) if top["scan"] == synth_scans[0].name
                          else run("show", 10**9, ok=False), "instance")


def test_human_output_is_a_table(indexed_home):
    res = run("search", "a table", "-k", "3")
    assert "rank" in res.stdout and "score" in res.stdout


def test_bad_scan_is_one_line_and_others_still_indexed(home, synth_scans, tiny_clip_model, tmp_path):
    bad = tmp_path / "bad_scan"
    shutil.copytree(synth_scans[0], bad)
    (bad / "pose" / "3.txt").write_text("not a matrix\n")
    res = run("index", bad, synth_scans[1], "--clip-model", tiny_clip_model, "-q", ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "FAILED" in res.stdout and "3.txt" in res.stdout
    assert f"indexed    {synth_scans[1].name}" in res.stdout
    scans = json.loads(run("scans", "--json").stdout)
    assert [s["name"] for s in scans] == [synth_scans[1].name]


def test_one_line_errors(home, tmp_path, tiny_clip_model, synth_scans):
    assert_one_line_error(run("search", "a chair", ok=False), "index")  # nothing indexed yet
    res = run("index", tmp_path / "nope", "--clip-model", tiny_clip_model, "-q", ok=False)
    assert res.exit_code == 1 and "nope" in res.stdout and "Traceback" not in res.output
    # weights that are not here: one line saying how to provide them (or to allow random ones)
    assert_one_line_error(run("index", synth_scans[0], "--clip-model", "ViT-B-32", "--clip-pretrained", "openai",
                              ok=False), "allow-random-weights")
    # ... but a wrong path is reported as such, before any model is loaded
    res = run("index", tmp_path, "--clip-model", "ViT-B-32", "--clip-pretrained", "openai", ok=False)
    assert res.exit_code == 1 and f"FAILED     {tmp_path}" in res.stdout and "no known layout" in res.stdout
    assert not (home / "catalog.sqlite").exists()  # a job that indexed nothing leaves no home behind
    assert_one_line_error(run("export", 1, tmp_path / "x.ply", ok=False), "no scenegrep catalog", str(home))
    from scenegrep.storage import Store

    Store.open(home).close()  # an empty home: the instance is what is missing
    assert_one_line_error(run("export", 1, tmp_path / "x.ply", ok=False), "instance", "1")


def test_propose_then_index_with_file_proposer(home, synth_scans, tiny_clip_model, tmp_path):
    out = tmp_path / "masks.npz"
    run("propose", synth_scans[0], "--out", out)
    ms = MaskSet.load_npz(out)
    assert len(ms) > 0 and ms.num_points > 0
    res = json.loads(run("index", synth_scans[0], "--proposer", "file", "--masks", out,
                         "--clip-model", tiny_clip_model, "--json").stdout)
    assert res[0]["status"] == "indexed" and res[0]["instances"] == len(ms)
    # The wrong scan's masks: point counts differ -> that scan fails in one line.
    res = run("index", synth_scans[1], "--proposer", "file", "--masks", out, "--clip-model", tiny_clip_model,
              "-q", ok=False)
    assert res.exit_code == 1 and "masks.npz" in res.stdout


def test_eval_masks_json(synth_scans):
    res = json.loads(run("eval-masks", synth_scans[0], "--json").stdout)
    assert {"ap", "ap50", "ap25"} <= set(res)
    assert 0.0 <= res["ap"] <= res["ap50"] <= res["ap25"] <= 1.0


def test_synth_command(tmp_path):
    res = run("synth", tmp_path / "s", "--scans", "1", "--seed", "3")
    (path,) = res.stdout.split()
    assert (Path(path) / "gt_instances.npy").is_file()


# -- presets, 2D-mask method, stored vectors --------------------------------------------------------------------


def _instance_ids(home: Path, scan_name: str) -> list[int]:
    from scenegrep.storage import Store

    with Store.open(home, read_only=True) as store:
        return [i.id for i in store.instances(scan_name)]


def test_index_openmask3d_preset_end_to_end(home, synth_scans, tiny_clip_model, tiny_encoder):
    """``--preset openmask3d`` with one explicit override: the catalog records the settings used, and
    every stored vector is the unit direction of OpenMask3D's raw mean computed with those settings."""
    from scenegrep.indexer.features.extractor import extract_features
    from scenegrep.indexer.features.presets import OPENMASK3D
    from scenegrep.indexer.proposals import make_proposer
    from scenegrep.indexer.scans import read_scan

    out = json.loads(run("index", synth_scans[0], "--preset", "openmask3d", "--top-k", "3",
                         "--clip-model", tiny_clip_model, "--json").stdout)
    assert out[0]["status"] == "indexed"
    (scan,) = json.loads(run("scans", "--json").stdout)
    info = scan["info"]
    assert scan["preset"] == "openmask3d" and scan["mask_method_2d"] == "projected-points-box"
    assert scan["proposer"] == "geometric" and info["proposer_identity"]["name"] == "geometric"
    assert info["mask_method_2d_identity"]["name"] == "projected-points-box"
    assert info["features"]["top_k"] == 3  # explicit beats the preset
    assert {k: info["features"][k] for k in ("frame_step", "depth_threshold", "crop_levels", "crop_expansion",
                                             "require_positive_depth", "renormalize")} == {
        "frame_step": 10, "depth_threshold": 0.2, "crop_levels": 3, "crop_expansion": 0.1,
        "require_positive_depth": False, "renormalize": False}
    assert (info["precision"], info["seed"], info["sam_image_encodings"]) == ("fp32", 0, 0)

    s = read_scan(synth_scans[0])
    masks = make_proposer("geometric").propose(s)
    feats = extract_features(s, masks, tiny_encoder, OPENMASK3D.with_overrides(top_k=3).feature_config())
    assert info["frames_used"] == feats.stats["frames_used"] == 2  # 20 frames, every 10th
    ids = _instance_ids(home, s.name)
    assert len(ids) == len(masks)
    norms = []
    for iid in ids:
        shown = json.loads(run("show", iid, "--json", "--vector").stdout)
        assert shown["mask_method_2d"] == "projected-points-box" and shown["proposer"] == "geometric"
        m = shown["mask_index"]
        if not feats.valid[m]:
            assert shown["vector"] is None
            continue
        raw = feats.vectors[m].astype(np.float64)
        norms.append(np.linalg.norm(raw))
        np.testing.assert_allclose(shown["vector"], raw / np.linalg.norm(raw), atol=1e-3)  # the catalog is unit
    # OpenMask3D's mean of unit crop embeddings is not re-normalised: below 1 wherever a mask's crops differ.
    # A mask with one distinct crop (seen in one view, boxes too small to grow) has the norm of that one
    # float32 unit vector, 1 up to rounding.
    assert max(norms) <= 1.0 + 1e-6 and min(norms) < 0.99


def test_show_vector(home, synth_scans, tiny_clip_model, tmp_path):
    from scenegrep.storage import Store

    cloud_only = tmp_path / "cloud_only"
    cloud_only.mkdir()
    for f in synth_scans[1].glob("*.ply"):
        shutil.copy(f, cloud_only / f"cloud_only{f.suffix}")
    run("index", synth_scans[0], cloud_only, "--clip-model", tiny_clip_model, "-q")
    with Store.open(home, read_only=True) as store:
        iid = next(i.id for i in store.instances(synth_scans[0].name) if i.searchable)
        stored = store.instance_vector(iid)
        blind = store.instances("cloud_only")[0].id
    shown = json.loads(run("show", iid, "--json", "--vector").stdout)
    assert shown["vector"] == stored.tolist() and len(shown["vector"]) == 64
    # the float16-stored values, widened exactly
    assert np.array_equal(np.asarray(shown["vector"], np.float32).astype(np.float16).astype(np.float32), stored)
    assert "vector" not in json.loads(run("show", iid, "--json").stdout)
    none = json.loads(run("show", blind, "--json", "--vector").stdout)
    assert none["vector"] is None and none["searchable"] is False


@pytest.mark.parametrize("args, needle", [
    (["--proposer", "mask3d"], "--checkpoint"),
    (["--proposer", "mask3d", "--checkpoint", "{tmp}/nope.ckpt"], "nope.ckpt"),
    (["--checkpoint", "{tmp}/any.ckpt"], "--proposer mask3d"),
    (["--mask3d-topk", "5"], "--mask3d-topk"),
    (["--proposer", "mask3d", "--checkpoint", "{tmp}/any.ckpt", "--mask3d-topk", "0"], "--mask3d-topk"),
    (["--proposer", "mask3d", "--checkpoint", "{tmp}/any.ckpt", "--mask3d-colors", "rgb"], "--mask3d-colors"),
    (["--proposer", "nonesuch"], "--proposer"),
    (["--sam-model", "vit_h"], "--sam-checkpoint"),
    (["--sam-checkpoint", "{tmp}/missing.pth"], "missing.pth"),
    (["--sam-checkpoint", "{tmp}/any.ckpt"], "--sam-model"),
    (["--sam-rounds", "3"], "--sam-rounds"),
    (["--frame-step", "0"], "--frame-step"),
    (["--preset", "scannet"], "--preset"),
])
def test_index_option_errors_are_one_line(home, synth_scans, tiny_clip_model, tmp_path, args, needle):
    (tmp_path / "any.ckpt").write_bytes(b"not a checkpoint")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = run("index", synth_scans[0], *args, "--clip-model", tiny_clip_model, "-q", ok=False)
    assert_one_line_error(res, needle)
    assert not (home / "catalog.sqlite").exists()  # rejected before anything was written


@pytest.mark.parametrize("command", ["propose", "eval-masks"])
def test_mask3d_options_of_propose_and_eval_masks(synth_scans, tmp_path, command):
    extra = ["--out", str(tmp_path / "m.npz")] if command == "propose" else []
    assert_one_line_error(run(command, synth_scans[0], *extra, "--proposer", "mask3d", ok=False), "--checkpoint")
    assert_one_line_error(run(command, synth_scans[0], *extra, "--mask3d-colors", "unit", ok=False),
                          "--mask3d-colors")
    assert_one_line_error(run(command, synth_scans[0], *extra, "--proposer", "mask3d", "--checkpoint",
                              tmp_path / "gone.ckpt", ok=False), "gone.ckpt")


class _RecordingMask3D:
    """Stands in for the Mask3D factory: records the options it is built with, proposes geometric masks."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **options):
        from scenegrep.indexer.proposals.geometric import GeometricConfig, GeometricProposer

        self.calls.append(options)
        proposer = GeometricProposer(GeometricConfig())
        proposer.name = "mask3d"
        proposer.identity = lambda: {"checkpoint_sha256": "ab" * 32, "postprocess": options["postprocess"]}
        return proposer


def test_mask3d_options_reach_the_proposer_once_per_job(home, synth_scans, tiny_clip_model, tmp_path, monkeypatch):
    import scenegrep.indexer.proposals as proposals

    factory = _RecordingMask3D()
    monkeypatch.setitem(proposals._REGISTRY, "mask3d", factory)
    ckpt = tmp_path / "scannet200_val.ckpt"
    ckpt.write_bytes(b"x")
    res = json.loads(run("index", *synth_scans, "--proposer", "mask3d", "--checkpoint", ckpt,
                         "--mask3d-postprocess", "openmask3d", "--mask3d-topk", "7", "--mask3d-colors", "unit",
                         "--clip-model", tiny_clip_model, "--json").stdout)
    assert [o["status"] for o in res] == ["indexed", "indexed"]
    assert factory.calls == [{"checkpoint": ckpt, "postprocess": "openmask3d", "topk": 7, "colors": "unit",
                              "device": "cpu"}]  # one model for both scans
    for s in json.loads(run("scans", "--json").stdout):
        assert s["proposer"] == "mask3d"
        assert s["info"]["proposer_identity"] == {"name": "mask3d", "checkpoint_sha256": "ab" * 32,
                                                  "postprocess": "openmask3d"}
    run("propose", synth_scans[0], "--out", tmp_path / "m.npz", "--proposer", "mask3d", "--checkpoint", ckpt)
    assert factory.calls[-1] == {"checkpoint": ckpt, "postprocess": "default", "topk": 750, "colors": "scannet",
                                 "device": "cpu"}
    assert len(MaskSet.load_npz(tmp_path / "m.npz")) > 0


def test_bad_mask3d_checkpoint_is_one_line(home, synth_scans, tiny_clip_model, tmp_path):
    bad = tmp_path / "scannet200_val.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    for cmd in (["index", synth_scans[0], "--clip-model", tiny_clip_model, "-q"],
                ["propose", synth_scans[0], "--out", tmp_path / "m.npz"]):
        assert_one_line_error(run(*cmd, "--proposer", "mask3d", "--checkpoint", bad, ok=False), str(bad))


# -- SAM through the CLI (a tiny random-weight SAM registered as vit_b for the test) ------------------------------


@pytest.fixture()
def tiny_sam_as_vit_b(tmp_path, monkeypatch):
    """A random-weight SAM checkpoint named like the official vit_b file; vit_b means the tiny architecture
    for the duration of the test, so the CLI's real option and loading path run in seconds."""
    import scenegrep.indexer.features.sam as sam
    monkeypatch.setitem(sam.SAM_ARCHS, "vit_b", tiny_sam_arch(decoder_depth=1))
    return write_random_sam_checkpoint(tmp_path / "sam_vit_b_tiny.pth", "vit_b", seed=1)


@pytest.mark.slow
def test_index_with_sam_records_the_method_and_loads_once(home, synth_scans, tiny_clip_model, tiny_sam_as_vit_b,
                                                          monkeypatch):
    import scenegrep.indexer.features.sam as sam
    from scenegrep.indexer.features.encoders import sha256_file

    loads = []
    real = sam.load_sam_refiner
    monkeypatch.setattr(sam, "load_sam_refiner", lambda *a, **k: loads.append(a) or real(*a, **k))
    res = json.loads(run("index", *synth_scans, "--sam-checkpoint", tiny_sam_as_vit_b, "--seed", "3",
                         "--frame-step", "10", "--clip-model", tiny_clip_model, "--json").stdout)
    assert [o["status"] for o in res] == ["indexed", "indexed"]
    assert len(loads) == 1 and loads[0][0] == "vit_b"  # model from the file name, one load per job
    for s in json.loads(run("scans", "--json").stdout):
        info = s["info"]
        assert s["mask_method_2d"] == "sam:vit_b"
        ident = info["mask_method_2d_identity"]
        assert ident["checkpoint_sha256"] == sha256_file(tiny_sam_as_vit_b)
        assert (ident["seed"], ident["rounds"], ident["points"], ident["precision"]) == (3, 10, 5, "fp32")
        assert info["seed"] == 3 and info["precision"] == "fp32"
        assert 0 < info["sam_image_encodings"] <= info["frames_used"]
    iid = _instance_ids(home, synth_scans[0].name)[0]
    assert json.loads(run("show", iid, "--json").stdout)["mask_method_2d"] == "sam:vit_b"


def test_bad_sam_checkpoints_are_one_line(home, synth_scans, tiny_clip_model, tiny_sam_as_vit_b, tmp_path):
    garbage = tmp_path / "sam_vit_b_01ec64.pth"
    garbage.write_bytes(b"\x00not a torch file")
    res = run("index", synth_scans[0], "--sam-checkpoint", garbage, "--clip-model", tiny_clip_model, "-q", ok=False)
    assert_one_line_error(res, str(garbage))
    # A (tiny) vit_b file given as vit_l: the architecture does not match.
    res = run("index", synth_scans[0], "--sam-model", "vit_l", "--sam-checkpoint", tiny_sam_as_vit_b,
              "--clip-model", tiny_clip_model, "-q", ok=False)
    assert_one_line_error(res, str(tiny_sam_as_vit_b), "vit_l")
    assert not (home / "catalog.sqlite").exists()


def test_user_trips_of_issue_8(indexed_home, synth_scans, tmp_path):
    """What a user tried and tripped on: each is a one-line error or works as documented."""
    # an absurd k is a one-line error, never a memory bomb
    assert_one_line_error(run("search", "a chair", "-k", "1000000000", ok=False), "k")
    assert_one_line_error(run("search", "x" * 100_000, ok=False), "characters")
    # an id beyond SQLite's integers: not found, naming the id
    assert_one_line_error(run("show", "99999999999999999999", ok=False), "99999999999999999999")
    hits = json.loads(run("search", "a chair", "-k", "3", "--json").stdout)
    assert all(Path(h["thumbnail"]).is_absolute() for h in hits if h["thumbnail"])
    # export into a folder that does not exist says so and creates nothing
    missing = tmp_path / "no" / "such" / "dir" / "hit.ply"
    assert_one_line_error(run("export", hits[0]["id"], missing, ok=False), "does not exist")
    assert not (tmp_path / "no").exists()
    assert_one_line_error(run("export", hits[0]["id"], tmp_path / "hit.xyz", ok=False), "format")
    # instances of a scan, as JSON
    listed = json.loads(run("instances", hits[0]["scan"], "--json").stdout)
    assert hits[0]["id"] in {d["id"] for d in listed}
    assert all(d["scan"] == hits[0]["scan"] for d in listed)
    assert "points" in run("instances", hits[0]["scan"]).stdout
    assert_one_line_error(run("instances", "no-such-scan", ok=False), "no-such-scan")
    assert run("--version").stdout.startswith("scenegrep ")


def test_progress_bars_only_on_a_terminal(home, synth_scans, tiny_clip_model):
    from scenegrep.cli import _Progress, _progress

    # CliRunner's stderr is not a terminal: no progress at all, only the per-scan lines on stdout
    res = CliRunner().invoke(cli, ["index", str(synth_scans[0]), "--clip-model", tiny_clip_model])
    assert res.exit_code == 0 and res.stderr == "" and "indexed" in res.stdout
    assert _progress(quiet=True) is None
    bars = _Progress()
    with bars:
        for stage, done, total in (("read", 0, 1), ("read", 1, 1), ("features:crops", 3, 7), ("store", 1, 1)):
            bars("scan-a", stage, done, total)
    (task,) = bars._bars.tasks
    assert task.description == "scan-a [store]" and task.completed == 1


def test_optimize_command(indexed_home):
    """`optimize` merges what is live into one segment; searches find the same hits afterwards."""
    before = json.loads(run("search", "a red chair", "-k", "20", "--json").stdout)
    vectors = json.loads(run("stats", "--json").stdout)["vectors"]
    report = json.loads(run("optimize", "--json").stdout)
    assert report["vectors"] == vectors and report["dropped"] == 0 and report["factory"] == "IDMap,Flat"
    human = run("optimize").stdout.splitlines()  # already one segment: nothing to merge
    assert human[0].split() == ["merged", "0"] and any(line.split()[0] == "vectors" for line in human)
    after = json.loads(run("search", "a red chair", "-k", "20", "--json").stdout)
    assert [(h["id"], h["score"]) for h in after] == [(h["id"], h["score"]) for h in before]


def test_verify_command(indexed_home):
    res = run("verify")
    assert res.stdout.strip().endswith(": ok")
    assert json.loads(run("verify", "--json").stdout) == {"ok": True, "problems": []}


def test_eval_masks_per_instance_from_label_maps(shared_dir):
    """labelfusion-shelf has no gt_instances.npy: its 2D label maps are lifted to the points."""
    shelf = shared_dir / "data" / "labelfusion-shelf"
    res = json.loads(run("eval-masks", shelf, "--proposer", "union", "--per-instance", "--json").stdout)
    assert res["gt_source"].startswith("label maps") and res["proposer"] == "union"
    assert {i["gt"] for i in res["instances"]} == {48, 132}
    assert all(0.0 <= i["best_iou"] <= 1.0 and i["points"] > 0 for i in res["instances"])
    # the union keeps the geometric proposer's colour part of the box (0.836; a weight-free lifted box mask,
    # 0.721, used to displace it)
    best = {i["gt"]: i["best_iou"] for i in res["instances"]}
    assert best[132] >= 0.8, best
    human = run("eval-masks", shelf, "--proposer", "geometric", "--per-instance").stdout
    assert "best IoU" in human and "label maps" in human


def test_union_records_which_proposer_made_each_mask(home, synth_scans, tiny_clip_model):
    res = json.loads(run("index", synth_scans[0], "--proposer", "geometric+lifted", "--frame-step", "4",
                         "--clip-model", tiny_clip_model, "--json").stdout)
    assert res[0]["status"] == "indexed"
    (scan,) = json.loads(run("scans", "--json").stdout)
    sources = scan["info"]["mask_sources"]
    assert scan["proposer"] == "union" and len(sources) == res[0]["instances"]
    assert set(sources) <= {"geometric", "lifted"} and "geometric" in sources
    ids = _instance_ids(home, scan["name"])
    shown = json.loads(run("show", ids[0], "--json").stdout)
    assert shown["proposer"] == sources[shown["mask_index"]]
    assert_one_line_error(run("index", synth_scans[0], "--proposer", "geometric+nope", "-q", ok=False), "nope")
