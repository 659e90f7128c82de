"""scenegrep.storage.maskcodec: exact round trips, input validation, corruption detection, size on a ScanNet-size scan."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from scenegrep.storage.maskcodec import decode_indices, encode_indices


def _roundtrip(idx) -> np.ndarray:
    out = decode_indices(encode_indices(idx))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, np.asarray(idx, dtype=np.uint64).astype(np.uint32))
    return out


@pytest.mark.parametrize(
    "idx",
    [
        [],
        [0],
        [7],
        [2**32 - 1],
        [0, 2**32 - 1],
        [2**32 - 3, 2**32 - 2, 2**32 - 1],
        list(range(1000, 5000)),  # dense run: all gaps 1
        [0, 1, 2, 300, 301, 70_000, 70_001, 4_000_000_000],  # gaps needing u1, u2 and u4
    ],
)
def test_roundtrip_edge_cases(idx):
    _roundtrip(idx)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint32, np.uint64])
def test_roundtrip_any_int_dtype(dtype):
    _roundtrip(np.array([1, 5, 9, 60_000], dtype=dtype))


def test_roundtrip_random_sets():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 5000))
        universe = int(rng.choice([n, 2 * n, 300_000, 2**32 - 1]))
        idx = np.unique(rng.integers(0, universe, size=n, dtype=np.int64))
        _roundtrip(idx)


@pytest.mark.parametrize(
    "bad",
    [[3, 2], [1, 1], [0, 5, 5, 9], [-1, 3], [0, 2**32], [[1, 2], [3, 4]]],
)
def test_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        encode_indices(np.array(bad, dtype=np.int64))


def test_rejects_float_dtype():
    with pytest.raises(TypeError):
        encode_indices(np.array([1.0, 2.0]))


def test_rejects_corrupted_blobs():
    blob = encode_indices(np.arange(0, 20_000, 3))
    with pytest.raises(ValueError):
        decode_indices(blob[:5])  # truncated header
    with pytest.raises(ValueError):
        decode_indices(blob[:-4])  # truncated payload
    with pytest.raises(ValueError):
        decode_indices(b"\x00" + blob[1:])  # magic
    with pytest.raises(ValueError):
        decode_indices(blob[:1] + b"\x09" + blob[2:])  # version
    with pytest.raises(ValueError):
        decode_indices(blob[:2] + b"\x03" + blob[3:])  # dtype code
    with pytest.raises(ValueError):
        decode_indices(blob[:3] + struct.pack("<I", 123) + blob[7:])  # count
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    with pytest.raises(ValueError):
        decode_indices(bytes(flipped))  # payload bit flip (zlib checksum)


def test_rejects_overflowing_payload():
    # a well-formed blob whose gaps sum past 2**32 - 1 must not wrap around
    payload = zlib.compress(struct.pack("<I", 2**32 - 2) + bytes([5]))
    blob = struct.pack("<BBBI", 0xA7, 1, 1, 2) + payload
    with pytest.raises(ValueError):
        decode_indices(blob)


def test_scannet_size_scan_is_compact():
    rng = np.random.default_rng(1)
    n_points, total = 240_000, 0
    for _ in range(200):
        size = int(rng.integers(1000, 6000))  # random cloud order: members spread over the whole range
        idx = np.sort(rng.choice(n_points, size=size, replace=False))
        blob = encode_indices(idx)
        np.testing.assert_array_equal(decode_indices(blob), idx)
        total += len(blob)
    assert total < 2_000_000 * 0.6, total  # well under 2 MB (about 0.7 MB)
