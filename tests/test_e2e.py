"""End to end: synthetic scans -> geometric masks -> features -> store -> text search across scans.

Two encoders are used. The tiny random-weight open_clip model exercises the real code path (local-dir
loading, batching, storage of its identity). A deterministic colour "CLIP" (the image embedding is a
chromaticity histogram over the synthetic palette, the text embedding a one-hot colour word) gives the
pipeline a known right answer, so the test can check that a query for "red" finds the red object's points.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scenegrep.indexer.features.crops import ProjectedPointsRefiner
from scenegrep.indexer.features.encoders import EncoderSpec
from scenegrep.indexer.features.extractor import extract_features
from scenegrep.indexer.features.presets import OPENMASK3D
from scenegrep.indexer.pipeline import IndexOptions, index_paths
from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.scans import read_scan
from scenegrep.indexer.synthetic import FLOOR_RGB, PALETTE, WALL_RGB
from scenegrep.search.engine import SearchEngine
from scenegrep.storage import Store
from scenegrep.storage.errors import EncoderMismatchError

NEUTRAL = {"white", "black"}  # chromaticity cannot tell these from the grey floor and walls


class ColourEncoder:
    """A deterministic stand-in for CLIP with a known right answer (see module docstring)."""

    def __init__(self) -> None:
        self.names = [n for n, _ in PALETTE if n not in NEUTRAL]
        refs = [rgb for n, rgb in PALETTE if n not in NEUTRAL] + [FLOOR_RGB, WALL_RGB, (128, 128, 128)]
        self.refs = self._chroma(np.asarray(refs, np.float64))
        self.dim = len(self.refs)
        self.spec = EncoderSpec(model="test:colour", pretrained=None, checkpoint_sha256="0" * 64, dim=self.dim,
                                image_size=(64, 64), image_mean=(0.0,) * 3, image_std=(1.0,) * 3,
                                random_weights=False)

    @staticmethod
    def _chroma(rgb: np.ndarray) -> np.ndarray:
        return rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), 1.0)

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        for i, im in enumerate(images):
            px = np.asarray(im, np.float64).reshape(-1, 3)
            px = px[px.sum(axis=1) > 60]  # unlit background carries no colour
            nearest = np.argmin(((self._chroma(px)[:, None, :] - self.refs[None]) ** 2).sum(-1), axis=1)
            out[i] = np.bincount(nearest, minlength=self.dim)
            # Floor, wall and grey pixels stay in the embedding (as a real encoder sees them): a text query
            # names a colour only, so a crop that is mostly floor (a floor instance, whose crop holds what
            # stands on it) scores low, and a crop that is mostly the object scores high.
            out[i] += 1e-3  # like a real encoder, never a zero embedding
            out[i] /= max(np.linalg.norm(out[i]), 1e-12)
        return out

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            words = t.lower().replace(".", " ").split()
            for j, n in enumerate(self.names):
                if n in words:
                    out[i, j] = 1.0
            if not out[i].any():
                out[i, :] = 1.0
            out[i] /= np.linalg.norm(out[i])
        return out


def _gt(scan_dir: Path) -> tuple[np.ndarray, dict[int, str]]:
    labels = json.loads((scan_dir / "gt_labels.json").read_text())
    return np.load(scan_dir / "gt_instances.npy"), {int(k): v for k, v in labels.items()}


@pytest.fixture(scope="module")
def colour_home(tmp_path_factory, synth_scans):
    home = tmp_path_factory.mktemp("colour") / "home"
    with Store.open(home) as store:
        outcomes = index_paths(synth_scans, store, ColourEncoder(), IndexOptions())
    return home, outcomes


def test_index_two_scans_all_indexed(colour_home, synth_scans):
    _, outcomes = colour_home
    assert [o.status for o in outcomes] == ["indexed", "indexed"]
    for o in outcomes:
        assert o.instances > 0 and 0 < o.searchable <= o.instances


def test_colour_query_finds_the_object_of_that_colour(colour_home, synth_scans):
    home, _ = colour_home
    with Store.open(home, read_only=True) as store:
        engine = SearchEngine(store, encoder=ColourEncoder())
        checked = 0
        for scan_dir in synth_scans:
            gt, labels = _gt(scan_dir)
            scan = read_scan(scan_dir)
            for inst_id, label in labels.items():
                colour = label.split()[0]
                if colour in NEUTRAL:
                    continue
                hits = engine.search(colour, k=3, scans=[scan.name])
                assert hits and hits[0].scan == scan.name
                pts = engine.points(hits[0].id)
                np.testing.assert_array_equal(pts.xyz, scan.points[pts.indices])
                np.testing.assert_array_equal(pts.rgb, scan.colors[pts.indices])
                precision = float(np.mean(gt[pts.indices] == inst_id))
                assert precision >= 0.8, f"{scan.name}: '{colour}' top hit is {precision:.0%} {label}"
                checked += 1
        assert checked >= 4


def test_search_spans_scans_and_equals_brute_force_cosine(colour_home):
    home, _ = colour_home
    with Store.open(home, read_only=True) as store:
        enc = ColourEncoder()
        engine = SearchEngine(store, encoder=enc)
        ids, vecs = [], []
        for s in store.scans():
            for inst in store.instances(s.name):
                v = store.instance_vector(inst.id)
                if v is not None:
                    ids.append(inst.id)
                    vecs.append(v)
        vecs = np.asarray(vecs, np.float64)
        q = enc.encode_texts(["red"])[0].astype(np.float64)
        # The index holds exactly the stored float16 vectors; their norms are 1 within float16 rounding.
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)
        brute = vecs @ q
        hits = engine.search("red", k=len(ids) + 5, fold=False)  # the raw ranking (folding is tested apart)
        assert len(hits) == len(ids)  # every searchable instance, no padding ids
        assert {h.scan for h in hits} == {s.name for s in store.scans()}
        np.testing.assert_allclose([h.score for h in hits], np.sort(brute)[::-1], atol=1e-5)
        by_id = dict(zip(ids, brute))
        for h in hits:
            assert h.score == pytest.approx(by_id[h.id], abs=1e-5)


def test_real_encoder_path_and_reindex_rules(tmp_path, synth_scans, tiny_encoder):
    home = tmp_path / "home"
    with Store.open(home) as store:
        first = index_paths(synth_scans[:1], store, tiny_encoder, IndexOptions())
        assert first[0].status == "indexed"
        ids_before = {i.id for i in store.instances(first[0].name)}
        again = index_paths(synth_scans[:1], store, tiny_encoder, IndexOptions())
        assert again[0].status == "unchanged"
        assert {i.id for i in store.instances(first[0].name)} == ids_before
        forced = index_paths(synth_scans[:1], store, tiny_encoder, IndexOptions(force=True))
        assert forced[0].status == "indexed"
        ids_after = {i.id for i in store.instances(first[0].name)}
        assert ids_after and not ids_after & ids_before  # replaced, ids never reused
        assert store.stats()["scans"] == 1
        ident = store.encoder()
        assert ident.checkpoint_sha256 == tiny_encoder.spec.checkpoint_sha256
        with pytest.raises(EncoderMismatchError):
            index_paths(synth_scans[1:], store, ColourEncoder(), IndexOptions())
    # A new process-like reader loads the catalog's own encoder and gets the same query vector.
    with Store.open(home, read_only=True) as store:
        engine = SearchEngine(store)
        hits = engine.search("a chair", k=5)
        assert hits and all(h.scan == first[0].name for h in hits)
        np.testing.assert_allclose(engine.embed_text("a chair"),
                                   tiny_encoder.encode_texts(["a chair"])[0], atol=1e-6)


def test_bad_scan_fails_alone_and_points_only_scan_is_not_searchable(tmp_path, synth_scans, tiny_encoder):
    bad = tmp_path / "broken"
    shutil.copytree(synth_scans[0], bad)
    (bad / "pose" / "0.txt").write_text("1 0 0\n0 1 0\n")
    cloud_only = tmp_path / "cloud_only"
    cloud_only.mkdir()
    src = synth_scans[1]
    for f in src.glob("*.ply"):
        shutil.copy(f, cloud_only / f"cloud_only{f.suffix}")
    with Store.open(tmp_path / "home") as store:
        out = index_paths([bad, synth_scans[1], cloud_only], store, tiny_encoder, IndexOptions())
    assert [o.status for o in out] == ["failed", "indexed", "indexed"]
    assert "0.txt" in out[0].error
    assert out[2].instances > 0 and out[2].searchable == 0
    assert "not searchable" in out[2].note


def test_labelfusion_shelf_real_scan(shared_dir, tmp_path, tiny_encoder):
    scan_dir = shared_dir / "data" / "labelfusion-shelf"
    with Store.open(tmp_path / "home") as store:
        (o,) = index_paths([scan_dir], store, tiny_encoder, IndexOptions())
        assert o.status == "indexed", o.error
        assert o.searchable > 0
        hits = SearchEngine(store, encoder=tiny_encoder).search("a box", k=3)
        assert hits and hits[0].scan == o.name


class _HalfBoxRefiner:
    """A 2D-mask method of its own: the left half of the projected-points box (so its vectors differ)."""

    name = "test:left-half"

    def __init__(self) -> None:
        self.calls = 0

    def identity(self) -> dict:
        return {"method": self.name, "fraction": 0.5}

    def refine(self, image, pixels, pixel_size, *, frame_id=0, mask_ids=None):
        self.calls += 1
        boxes = ProjectedPointsRefiner().refine(image, pixels, pixel_size, frame_id=frame_id, mask_ids=mask_ids)
        return [None if b is None else (b[0], b[1], max(b[0] + 1, (b[0] + b[2]) // 2), b[3]) for b in boxes]


def test_refiner_and_preset_are_used_and_recorded(tmp_path, synth_scans):
    """The job's refiner makes the crops and is named in the catalog with its identity; with the
    openmask3d preset (raw mean, norm < 1) the catalog stores each vector's unit direction."""
    enc = ColourEncoder()
    refiner = _HalfBoxRefiner()
    cfg = OPENMASK3D.feature_config()
    options = IndexOptions(features=cfg, refiner=refiner, preset="openmask3d", seed=5)
    with Store.open(tmp_path / "home") as store:
        (o,) = index_paths(synth_scans[:1], store, enc, options)
        assert o.status == "indexed" and refiner.calls > 0
        info = store.find_scan(o.name).info
        vectors = {i.mask_index: store.instance_vector(i.id) for i in store.instances(o.name)}
    assert info["mask_method_2d"] == "test:left-half"
    assert info["mask_method_2d_identity"] == {"name": "test:left-half", "method": "test:left-half", "fraction": 0.5}
    assert (info["preset"], info["seed"], info["features"]["renormalize"]) == ("openmask3d", 5, False)

    scan = read_scan(synth_scans[0])
    masks = make_proposer("geometric").propose(scan)
    feats = extract_features(scan, masks, enc, cfg, refiner=_HalfBoxRefiner())
    plain = extract_features(scan, masks, enc, cfg)
    assert not np.allclose(feats.vectors, plain.vectors, atol=1e-3)  # the refiner changed the crops
    norms = np.linalg.norm(feats.vectors[feats.valid], axis=1)
    assert norms.min() < 0.99  # too far from unit to be stored as is
    for m, v in vectors.items():
        if not feats.valid[m]:
            assert v is None
            continue
        raw = feats.vectors[m].astype(np.float64)
        np.testing.assert_allclose(v, raw / np.linalg.norm(raw), atol=1e-3)
