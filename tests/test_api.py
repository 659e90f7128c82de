"""The public library API (``scenegrep.open`` -> Collection, IndexSettings, propose/evaluate) and the user
trips of issue 8 that it fixes: collections of scans, the home's own encoder, one error root."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scenegrep
from scenegrep.errors import ScenegrepError, SettingsError

REPO = Path(__file__).resolve().parents[1]


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path, tiny_clip_model, monkeypatch, capsys):
    code = _readme_python_example()
    assert len(code.strip().splitlines()) <= 16
    # The one line a reader edits: where their CLIP model is.
    code, n = re.subn(r'^MODEL = ".*"', f"MODEL = {tiny_clip_model!r}", code, flags=re.M)
    assert n == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "indexed" in out and Path("chair.ply").is_file()


def test_collection_round_trip(home, synth_dir, synth_scans, tiny_clip_model, tmp_path):
    with scenegrep.open(home, write=True) as col:
        outcomes = col.index([synth_dir], clip_model=tiny_clip_model)  # a folder of scans = every scan
        assert [o.name for o in outcomes] == [p.name for p in synth_scans]
        assert all(o.status == "indexed" for o in outcomes)
    with scenegrep.open(home) as col:
        assert col.read_only
        hits = col.search("a red chair", k=5)
        assert len(hits) == 5 and hits[0].score >= hits[-1].score
        # text and its vector give the same ranking
        again = col.search(col.embed_text("a red chair"), k=5)
        assert [h.id for h in again] == [h.id for h in hits]
        d = col.instance(hits[0].id, vector=True)
        assert d.id == hits[0].id and d.searchable and len(d.vector) == 64
        pts = col.points(hits[0].id)
        assert len(pts.indices) == d.n_points
        xyz, rgb = col.scan_points(d.scan)
        np.testing.assert_array_equal(xyz[pts.indices], pts.xyz)
        listed = col.instances(d.scan)
        assert d.id in {i.id for i in listed} and all(i.scan == d.scan for i in listed)
        assert col.stats()["scans"] == 2 and col.verify() == []
        assert Path(col.thumbnail(hits[0].id)).is_absolute()
        with pytest.raises(SettingsError, match="write=True"):
            col.remove(d.scan)


def test_index_reuses_the_home_encoder(home, synth_scans, tiny_clip_model):
    with scenegrep.open(home, write=True) as col:
        col.index(synth_scans[:1], clip_model=tiny_clip_model)
    # No --clip-model: the home's own encoder, not the preset's ViT-L-14-336 (whose weights are not here).
    with scenegrep.open(home, write=True) as col:
        (o,) = col.index(synth_scans[1:])
        assert o.status == "indexed"
    with scenegrep.open(home) as col:
        assert {s.name for s in col.scans()} == {p.name for p in synth_scans}


def test_index_settings_resolve_presets_and_reject_contradictions(tmp_path):
    s = scenegrep.IndexSettings.create("openmask3d", top_k=3)
    assert (s.preset.name, s.preset.top_k, s.preset.frame_step) == ("openmask3d", 3, 10)
    assert scenegrep.IndexSettings.create(frame_step="auto").preset.frame_step is None
    sam = tmp_path / "sam_vit_h_4b8939.pth"
    sam.write_bytes(b"x")
    assert scenegrep.IndexSettings.create(sam_checkpoint=sam).sam_model == "vit_h"  # from the file name
    ckpt = tmp_path / "scannet200_val.ckpt"
    ckpt.write_bytes(b"x")
    m = scenegrep.IndexSettings.create(proposer="mask3d", checkpoint=ckpt, mask3d_topk=5, device="cpu")
    assert m.proposer_options() == {"checkpoint": ckpt, "postprocess": "default", "topk": 5, "colors": "scannet",
                                    "device": "cpu"}
    for bad, needle in [({"mask3d_topk": 5}, "--mask3d-topk"), ({"proposer": "mask3d"}, "--checkpoint"),
                        ({"sam_rounds": 3}, "--sam-rounds"), ({"nonesuch": 1}, "--nonesuch"),
                        ({"voxel_size": 0}, "--voxel-size"), ({"masks": tmp_path}, "--masks"),
                        ({"sam_model": "vit_b"}, "--sam-checkpoint")]:
        with pytest.raises(SettingsError, match=re.escape(needle)):
            scenegrep.IndexSettings.create(**bad)
    with pytest.raises(SettingsError, match="preset"):
        scenegrep.IndexSettings.create("scannet")


def test_voxel_size_is_recorded_and_part_of_the_content_hash(home, tmp_path, tiny_clip_model, shared_dir):
    shelf = shared_dir / "data" / "labelfusion-shelf"
    with scenegrep.open(home, write=True) as col:
        (a,) = col.index([shelf], clip_model=tiny_clip_model, voxel_size=0.04)
        assert a.status == "indexed"
        (b,) = col.index([shelf], clip_model=tiny_clip_model, voxel_size=0.04)
        assert b.status == "unchanged"
        (c,) = col.index([shelf], clip_model=tiny_clip_model, voxel_size=0.03)
        assert c.status == "indexed"  # another cloud: not "unchanged"
        (scan,) = col.scans()
        assert scan.info["voxel_size"] == 0.03


def test_every_library_error_has_one_root():
    """Each exception class the package defines derives from ScenegrepError (the CLI catches only that)."""
    import importlib
    import pkgutil

    found = []
    for layer in ("storage", "indexer", "search"):
        pkg = importlib.import_module(f"scenegrep.{layer}")
        for info in pkgutil.walk_packages(pkg.__path__, f"scenegrep.{layer}."):
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name):
                    found.append(obj)
                    assert issubclass(obj, ScenegrepError), f"{info.name}.{name} is not a ScenegrepError"
    assert len(found) >= 10


def test_propose_and_evaluate_without_a_home(synth_scans):
    masks = scenegrep.propose(synth_scans[0])
    assert len(masks) > 0
    res = scenegrep.evaluate_masks(synth_scans[0])
    assert res.masks == len(masks) and 0.0 <= res.ap <= res.ap50 <= res.ap25 <= 1.0


def test_stats_into_a_closed_pipe_exits_quietly(home, synth_scans, tiny_clip_model):
    with scenegrep.open(home, write=True) as col:
        col.index(synth_scans[:1], clip_model=tiny_clip_model)
    r, w = os.pipe()
    os.close(r)  # the reader (`head -1`) is gone before anything is written
    try:
        res = subprocess.run([sys.executable, "-m", "scenegrep", "--home", str(home), "stats"], stdout=w,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert res.stderr == "", res.stderr
    assert res.returncode in (0, 1)
    ok = subprocess.run([sys.executable, "-m", "scenegrep", "--home", str(home), "stats", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert json.loads(ok.stdout)["scans"] == 1


def test_lifted_and_union_settings(tmp_path):
    s = scenegrep.IndexSettings.create(proposer="lifted")
    assert s.segmenter == "felzenszwalb" and s.proposer_options() == {}
    sam = tmp_path / "sam_vit_b_01ec64.pth"
    sam.write_bytes(b"x")
    s = scenegrep.IndexSettings.create(proposer="lifted", sam_checkpoint=sam)
    assert s.segmenter == "sam" and s.proposer_options() == {"sam_checkpoint": sam, "sam_model": "vit_b",
                                                              "device": "cpu", "precision": "fp32"}
    refiner = object()
    assert s.proposer_options(sam_refiner=refiner) == {"sam_refiner": refiner}  # one SAM model for both
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    u = scenegrep.IndexSettings.create(proposer="geometric+mask3d", checkpoint=ckpt)
    assert u.proposer_members() == ["geometric", "mask3d"]
    assert u.proposer_options()["member_options"]["mask3d"]["checkpoint"] == ckpt
    assert scenegrep.IndexSettings.create(proposer="union").proposer_members() == ["geometric", "lifted"]
    for bad, needle in [({"proposer": "geometric+nonesuch"}, "nonesuch"), ({"segmenter": "sam"}, "--segmenter"),
                        ({"proposer": "lifted", "segmenter": "sam"}, "--sam-checkpoint"),
                        ({"proposer": "file+geometric", "masks": tmp_path}, "union"),
                        ({"proposer": "lifted", "segmenter": "watershed"}, "--segmenter")]:
        with pytest.raises(SettingsError, match=re.escape(needle)):
            scenegrep.IndexSettings.create(**bad)


def test_wrong_paths_are_reported_before_any_model_loads(home, tmp_path):
    # The preset's ViT-L-14-336 weights are not here: a wrong path must say so, not "weights missing".
    with scenegrep.open(home, write=True) as col:
        (o,) = col.index([tmp_path / "no-such-scan"])
    assert o.status == "failed" and "no-such-scan" in o.error and "no such folder" in o.error
    assert not (home / "catalog.sqlite").exists()
