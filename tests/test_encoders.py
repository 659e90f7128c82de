"""open_clip loading through the user's code path (local-dir / hf-hub / tags), offline, and the spec."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenegrep.indexer.features.encoders import EncoderWeightsError, load_encoder
from scenegrep.testing import CONFIG_NAME, WEIGHTS_NAME, write_local_dir_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_local_dir_model(tmp_path_factory.mktemp("enc") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_encoder(f"local-dir:{tiny_dir}", None)


@pytest.fixture()
def no_network(monkeypatch):
    """Any socket connection attempt fails the test (loading must be offline)."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_tiny_model_folder_format(tiny_dir):
    cfg = json.loads((tiny_dir / CONFIG_NAME).read_text())
    assert cfg["model_cfg"]["embed_dim"] == 64
    assert cfg["model_cfg"]["text_cfg"]["vocab_size"] == 49408
    assert set(cfg["preprocess_cfg"]) == {"mean", "std"}
    assert (tiny_dir / WEIGHTS_NAME).is_file()


def test_local_dir_spec(tiny, tiny_dir):
    spec = tiny.spec
    assert spec.model == f"local-dir:{tiny_dir.resolve()}"
    assert spec.pretrained is None
    assert spec.dim == 64 and spec.image_size == (64, 64)
    assert spec.random_weights is False
    assert spec.checkpoint_sha256 == hashlib.sha256((tiny_dir / WEIGHTS_NAME).read_bytes()).hexdigest()
    ident = spec.identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_encode_texts_and_images(tiny):
    t = tiny.encode_texts(["a red chair", "a red chair", "a wooden table"], batch_size=2)
    assert t.shape == (3, 64) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(t[0], t[1])
    assert not np.allclose(t[0], t[2])

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(30, 50), (64, 64), (90, 20)]]
    images = [Image.fromarray(a) for a in arrays]
    a = tiny.encode_images(arrays, batch_size=2)
    b = tiny.encode_images(images, batch_size=64)
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert tiny.encode_images([]).shape == (0, 64)
    assert tiny.encode_texts([]).shape == (0, 64)


def test_same_seed_same_weights(tmp_path, tiny_dir):
    other = write_local_dir_model(tmp_path / "again")
    assert (other / WEIGHTS_NAME).read_bytes() == (tiny_dir / WEIGHTS_NAME).read_bytes()


def test_missing_tag_fails_fast_offline(tmp_path, no_network):
    t0 = time.perf_counter()
    with pytest.raises(EncoderWeightsError) as err:
        load_encoder("ViT-L-14-336", "openai", cache_dir=str(tmp_path / "empty-cache"))
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "\n" not in msg and "--clip-pretrained" in msg and "local-dir:" in msg
    assert no_network == []


def test_missing_hf_hub_fails_fast_offline(tmp_path, no_network):
    with pytest.raises(EncoderWeightsError):
        load_encoder("hf-hub:nobody/not-cached", None, cache_dir=str(tmp_path / "empty-cache"))
    assert no_network == []


def test_random_weights_only_when_allowed(tmp_path, tiny_dir, no_network):
    # A local-dir folder without a weights file: an error, unless random weights are allowed.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_dir / CONFIG_NAME, bare / CONFIG_NAME)
    with pytest.raises(EncoderWeightsError):
        load_encoder(f"local-dir:{bare}", None)
    enc = load_encoder(f"local-dir:{bare}", None, allow_random_weights=True)
    assert enc.spec.random_weights is True and enc.spec.checkpoint_sha256 is None
    assert enc.encode_texts(["x"]).shape == (1, 64)


@pytest.mark.slow
def test_random_weights_for_builtin_tag(tmp_path, no_network):
    enc = load_encoder("ViT-B-32", "laion2b_s34b_b79k", allow_random_weights=True,
                       cache_dir=str(tmp_path / "empty-cache"))
    assert enc.spec.random_weights is True
    assert enc.spec.pretrained == "laion2b_s34b_b79k"
    assert enc.spec.dim == 512 and enc.spec.image_size == (224, 224)
    assert no_network == []


def test_hf_hub_from_cache_offline(tmp_path, tiny_dir, tiny, no_network):
    """An hf-hub model present in the HF cache loads without any connection."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someone--tiny-clip"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(tiny_dir / CONFIG_NAME, snap / CONFIG_NAME)
    shutil.copy(tiny_dir / WEIGHTS_NAME, snap / WEIGHTS_NAME)
    enc = load_encoder("hf-hub:someone/tiny-clip", None, cache_dir=str(tmp_path / "hf"))
    assert enc.spec.model == "hf-hub:someone/tiny-clip"
    assert enc.spec.checkpoint_sha256 == tiny.spec.checkpoint_sha256
    assert enc.spec.random_weights is False
    np.testing.assert_array_equal(enc.encode_texts(["a lamp"]), tiny.encode_texts(["a lamp"]))
    assert no_network == []


def test_bad_arguments(tiny_dir, tmp_path):
    with pytest.raises(ValueError):
        load_encoder(f"local-dir:{tiny_dir}", None, precision="int8")
    with pytest.raises(ValueError):
        load_encoder(f"local-dir:{tmp_path / 'nowhere'}", None)
    with pytest.raises(ValueError):
        load_encoder("No-Such-Arch", "openai")
    with pytest.raises(ValueError):
        load_encoder("ViT-B-32", "no_such_tag")


def test_reduced_precision_autocast(tiny_dir, tiny):
    """bf16 (and fp16 where this torch supports CPU autocast) run on the CPU and stay close to fp32."""
    import torch

    from scenegrep.indexer.features.encoders import autocast_context, check_precision

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(6)]
    ref = tiny.encode_images(images)
    for precision in ("bf16", "fp16"):
        try:
            check_precision("cpu", precision)
        except ValueError:
            continue  # this torch build cannot autocast to it on CPU: load_encoder refuses, tested below
        enc = load_encoder(f"local-dir:{tiny_dir}", None, precision=precision)
        with autocast_context("cpu", precision):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if precision == "bf16"
                                                                   else torch.float16)
        out = enc.encode_images(images)
        assert out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
        cos = np.sum(out * ref, axis=1)
        assert not np.array_equal(out, ref)  # the low precision really ran
        assert cos.min() >= 0.9999, (precision, cos.min())  # measured: >= 0.99999 (bf16) on this model
        assert enc.encode_texts(["a chair"]).shape == (1, 64)
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("cpu", "fp8")


def test_parallel_preprocess_is_exact(tiny_dir, tiny):
    """The preprocess thread pool changes no number and keeps the order."""
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
              for h, w in rng.integers(8, 90, (11, 2))]
    serial = load_encoder(f"local-dir:{tiny_dir}", None, preprocess_workers=1)
    parallel = load_encoder(f"local-dir:{tiny_dir}", None, preprocess_workers=4)
    assert np.array_equal(serial.encode_images(images, batch_size=5), parallel.encode_images(images, batch_size=5))
