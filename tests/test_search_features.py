"""Search beyond plain text: folding near-duplicates, calibrated relevance, query by example, by photo, in
batches, and filters through the public API and the CLI (against brute-force oracles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import scenegrep
from scenegrep.cli import cli
from scenegrep.errors import ScenegrepError
from scenegrep.search.folding import Group, fold, overlap
from scenegrep.search.relevance import Calibration


# -- folding (pure) ----------------------------------------------------------------------------------


def test_overlap_is_exact_iou_and_containment():
    a = np.arange(0, 100, dtype=np.uint32)
    b = np.arange(50, 250, dtype=np.uint32)
    iou, cont = overlap(a, b)
    assert iou == pytest.approx(50 / 250) and cont == pytest.approx(50 / 100)
    assert overlap(a, np.arange(200, 300, dtype=np.uint32)) == (0.0, 0.0)
    assert overlap(a, np.array([], np.uint32)) == (0.0, 0.0)


def test_fold_keeps_the_better_hit_and_reports_the_nested_ones():
    table = np.arange(0, 1000, dtype=np.uint32)
    leg = np.arange(0, 100, dtype=np.uint32)  # inside the table: containment 1.0
    table_and_chair = np.arange(0, 1300, dtype=np.uint32)  # IoU 1000/1300 with the table
    chair = np.arange(2000, 2600, dtype=np.uint32)
    other_scan_copy = table.copy()  # same indices, other scan: never folded
    pts = {1: table, 2: leg, 3: table_and_chair, 4: chair, 5: other_scan_copy}
    scans = {1: "a", 2: "a", 3: "a", 4: "a", 5: "b"}
    ranked = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (5, 0.5)]
    groups = fold(ranked, scans, lambda ids: {i: pts[i] for i in ids}, k=10)
    assert groups == [Group(1, 0.9, [2, 3]), Group(4, 0.6), Group(5, 0.5)]
    assert [g.id for g in fold(ranked, scans, lambda ids: {i: pts[i] for i in ids}, k=2)] == [1, 4]


# -- relevance (pure) -------------------------------------------------------------------------------


def test_relevance_orders_like_the_cosine_and_lies_in_0_1():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 16)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q = ref[0]
    cal = Calibration.for_query(q, ref)
    scores = np.sort(rng.uniform(-1, 1, 200))
    rel = cal(scores)
    assert np.all((rel >= 0) & (rel <= 1)) and np.all(np.diff(rel) >= 0)
    s = ref @ q
    assert cal(np.median(s)) == pytest.approx(0.5, abs=0.05)  # an average instance is about 0.5
    assert Calibration.for_query(q, ref[:3]) is None  # too few stored vectors: no calibration


# -- through the API (small indexed home) -------------------------------------------------------------


@pytest.fixture()
def col(home, synth_scans, tiny_clip_model):
    with scenegrep.open(home, write=True) as w:
        w.index(synth_scans, clip_model=tiny_clip_model)
    with scenegrep.open(home) as c:
        yield c


def _all_vectors(col):
    """Brute-force oracle input: every searchable instance's stored vector and its details."""
    rows = [d for s in col.scans() for d in col.instances(s.name) if d.searchable]
    vecs = np.stack([np.asarray(col.instance(d.id, vector=True).vector, np.float32) for d in rows])
    return rows, vecs


def test_filters_equal_brute_force_over_the_filtered_set(col, synth_scans):
    rows, vecs = _all_vectors(col)
    q = col.embed_text("a wooden table")
    extent = {d.id: max(np.subtract(d.bbox[3:], d.bbox[:3])) for d in rows}
    cases = [
        ({"scans": [synth_scans[1].name]}, lambda d: d.scan == synth_scans[1].name),
        ({"min_points": 500}, lambda d: d.n_points >= 500),
        ({"max_points": 400}, lambda d: d.n_points <= 400),
        ({"min_extent": 0.5}, lambda d: extent[d.id] >= 0.5),
        ({"max_extent": 0.6, "min_points": 150}, lambda d: extent[d.id] <= 0.6 and d.n_points >= 150),
        ({"proposer": "geometric"}, lambda d: True),
        ({"proposer": "mask3d"}, lambda d: False),
    ]
    for flt, keep in cases:
        allowed = [i for i, d in enumerate(rows) if keep(d)]
        expected = sorted(((float(vecs[i] @ q), rows[i].id) for i in allowed), reverse=True)[:7]
        got = col.search(q, k=7, all=True, **flt)
        assert len(got) == min(7, len(allowed)), flt  # k hits whenever k match
        assert [h.id for h in got] == [i for _, i in expected], flt
        np.testing.assert_allclose([h.score for h in got], [s for s, _ in expected], atol=1e-4)


def test_like_finds_itself_first_among_neighbours(col):
    rows, vecs = _all_vectors(col)
    target = rows[3].id
    hits = col.like(target, k=5, all=True)
    assert target not in [h.id for h in hits]
    v = vecs[3] / np.linalg.norm(vecs[3])
    expected = [rows[i].id for i in np.argsort(-(vecs @ v)) if rows[i].id != target][:5]
    assert [h.id for h in hits] == expected


def test_image_search_uses_the_image_tower(col, synth_scans, tmp_path):
    frame = sorted((synth_scans[0] / "color").iterdir())[0]
    photo = tmp_path / "photo.png"
    Image.open(frame).crop((40, 40, 200, 200)).save(photo)
    by_path = col.search_image(photo, k=5)
    by_bytes = col.search_image(photo.read_bytes(), k=5)
    assert by_path and [h.id for h in by_path] == [h.id for h in by_bytes]
    with pytest.raises(ScenegrepError, match="image"):
        col.search_image(b"not an image", k=5)


def test_folding_reports_near_duplicates_under_the_better_hit(col):
    folded = col.search("a chair", k=10)
    flat = col.search("a chair", k=10, all=True)
    assert {h.id for h in folded} <= {h.id for h in col.search("a chair", k=200, all=True)}
    shown = [h.id for h in folded] + [i for h in folded for i in h.folded]
    assert len(shown) == len(set(shown))  # every instance appears once
    for h in folded:  # a folded id really overlaps its hit, and scores no better
        for f in h.folded:
            a, b = col.points(h.id).indices, col.points(f).indices
            iou, cont = overlap(a, b)
            assert iou >= 0.5 or cont >= 0.8
    assert [h.score for h in flat] == sorted((h.score for h in flat), reverse=True)


def test_min_score_and_relevance(col):
    hits = col.search("a red chair", k=30, all=True)
    rel = [h.relevance for h in hits]
    assert all(r is not None and 0 <= r <= 1 for r in rel)
    assert rel == sorted(rel, reverse=True)  # orders like the cosine
    cut = sorted(rel)[len(rel) // 2]
    kept = col.search("a red chair", k=30, all=True, min_score=cut)
    assert kept and all(h.relevance >= cut for h in kept)
    assert [h.id for h in kept] == [h.id for h in hits if h.relevance >= cut]


def test_batch_queries_match_single_queries(col):
    texts = ["a red chair", "a wooden table", "a blue box"]
    many = col.search_many(texts, k=4)
    for t, hits in zip(texts, many):
        assert [h.id for h in hits] == [h.id for h in col.search(t, k=4)]


def test_cli_search_modes(col, home, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("a red chair\n\na wooden table\n")
    res = CliRunner().invoke(cli, ["search", "--queries", str(queries), "-k", "3"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [ln["query"] for ln in lines] == ["a red chair", "a wooden table"]
    assert all(len(ln["hits"]) == 3 for ln in lines)
    first = lines[0]["hits"][0]["id"]
    res = CliRunner().invoke(cli, ["search", "--like", str(first), "-k", "2", "--json"])
    assert res.exit_code == 0 and first not in [h["id"] for h in json.loads(res.stdout)]
    res = CliRunner().invoke(cli, ["search", "chair", "--like", "1"])
    assert res.exit_code != 0 and "one of TEXT" in res.output
    res = CliRunner().invoke(cli, ["search", "chair", "--min-points", "100000", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []


def test_tag_filter_and_combined_filters(home, synth_scans, tiny_clip_model, tmp_path):
    import shutil

    tagged = tmp_path / "kitchen_scan"
    shutil.copytree(synth_scans[0], tagged)
    (tagged / "scan.json").write_text(json.dumps({"name": "kitchen-1", "tags": ["kitchen", "ground-floor"]}))
    with scenegrep.open(home, write=True) as w:
        w.index([tagged, synth_scans[1]], clip_model=tiny_clip_model)
    with scenegrep.open(home) as c:
        q = c.embed_text("a chair")
        hits = c.search(q, k=500, all=True, tags=["kitchen"])
        assert hits and {h.scan for h in hits} == {"kitchen-1"}
        assert c.search(q, k=5, tags=["kitchen", "attic"]) == []  # every given tag must be present
        rows = [d for d in c.instances("kitchen-1") if d.searchable and d.n_points >= 300]
        both = c.search(q, k=500, all=True, tags=["kitchen"], min_points=300)
        assert {h.id for h in both} == {d.id for d in rows}
        assert c.search(q, k=3, nprobe=4)  # search settings pass through
        with pytest.raises(ScenegrepError):
            c.search(q, k=3, min_points=-1)
