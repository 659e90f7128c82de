"""The CLI through click's CliRunner: the commands and JSON shapes other tools rely on, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from plyfile import PlyData

from indexer.proposals.base import MaskSet
from search.cli import cli


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


def test_one_line_errors(home, tmp_path, tiny_clip_model):
    assert_one_line_error(run("search", "a chair", ok=False), "index")  # nothing indexed yet
    res = run("index", tmp_path / "nope", "--clip-model", tiny_clip_model, "-q", ok=False)
    assert res.exit_code == 1 and "nope" in res.stdout and "Traceback" not in res.output
    assert_one_line_error(run("index", tmp_path, "--clip-model", "ViT-B-32", "--clip-pretrained", "openai",
                              ok=False), "allow-random-weights")
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
