"""The documented picture scripts (scripts/topview.py, scripts/frameview.py) run on a scan and draw it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(*args) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.fixture(scope="module")
def labelled(synth_scans, tmp_path_factory) -> Path:
    """A synthetic scan with 2D label maps rendered from its 3D ground truth."""
    from scenegrep.indexer.labelmaps import write_synthetic_label_maps

    path = tmp_path_factory.mktemp("scripts") / synth_scans[0].name
    shutil.copytree(synth_scans[0], path)
    write_synthetic_label_maps(path)
    return path


def test_topview_draws_each_ground_truth_instance(labelled, tmp_path):
    out = tmp_path / "gt.png"
    _run(SCRIPTS / "topview.py", labelled, "--gt", "--size", "300", "-o", out)
    img = np.asarray(Image.open(out))[..., :3]
    assert max(img.shape[:2]) == 300
    sys.path.insert(0, str(SCRIPTS))
    try:
        from topview import PALETTE
    finally:
        sys.path.remove(str(SCRIPTS))
    from scenegrep.indexer.evaluate import load_gt

    n_inst = np.unique(load_gt(labelled)).size - 1
    present = {tuple(c) for c in img.reshape(-1, 3)} & {tuple(c) for c in PALETTE.tolist()}
    # every instance shows in its own palette colour (instance k -> PALETTE[k % 20])
    assert len(present) == min(n_inst, len(PALETTE)), (len(present), n_inst)


def test_frameview_rows_panels_and_reported_iou(labelled, tmp_path):
    from scenegrep.indexer.evaluate import load_gt
    from scenegrep.indexer.proposals import make_proposer
    from scenegrep.indexer.scans import read_scan

    scan = read_scan(labelled)
    gt = load_gt(labelled, scan.num_points)
    gid = int(np.bincount(gt[gt > 0]).argmax())  # the largest object
    out = tmp_path / "fv.png"
    res = _run(SCRIPTS / "frameview.py", labelled, "--gt-id", gid, "--frames", 0, 1, "--proposer", "geometric",
               "--scale", "1", "-o", out)
    w, h = scan.frames[0].color_size
    assert Image.open(out).size == (3 * w, 2 * h)  # label map, object points, one proposer; two frames
    # the IoU it reports is the best over the proposer's masks, computed here directly
    inside = gt == gid
    best = max(inside[m].sum() / (inside.sum() + m.size - inside[m].sum()) for m in make_proposer("geometric")
               .propose(scan))
    (reported,) = re.findall(r"geometric: best mask \d+ points, IoU ([0-9.]+)", res.stderr)
    assert float(reported) == pytest.approx(best, abs=5e-4)


@pytest.mark.parametrize("script, extra", [("topview.py", ["--gt"]), ("frameview.py", ["--gt-id", "1"])])
def test_scripts_report_a_bad_scan_in_one_line(tmp_path, script, extra):
    res = subprocess.run([sys.executable, str(SCRIPTS / script), str(tmp_path / "nope"), *extra, "-o",
                          str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert str(tmp_path / "nope") in res.stderr and "Traceback" not in res.stderr
