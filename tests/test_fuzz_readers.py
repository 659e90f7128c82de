"""Fuzzing the readers of user files with hypothesis.

Each test writes a generated (often damaged) file and reads it with the library's reader. The property:
the reader returns, or raises a :class:`scenegrep.errors.ScenegrepError` subclass; never another exception,
never a hang (each example has a deadline), and never a Python/numpy allocation far beyond the file's size
(``tracemalloc`` peak <= a per-format multiple of the file size plus a constant; the multiple is what a
legitimate file of that format can expand to, e.g. deflate's 1032:1).

Readers covered: PLY headers and bodies (ascii and binary), pose and intrinsics text files, depth and colour
PNGs, ``scan.json``, mask files (``.npz`` sparse format and OpenMask3D ``.pt``) and the catalog's mask blob
codec. Settings come from tests/hypothesis_profiles.py: bounded and deterministic by default (CI); set
``SCENEGREP_FUZZ=long`` for a long randomized local run.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from hypothesis_profiles import FUZZ
from scenegrep.errors import ScenegrepError
from scenegrep.indexer.proposals.files import load_mask_file
from scenegrep.indexer.scans import decode_image, image_size, read_intrinsics, read_pose, read_ply_points, read_scan_meta
from scenegrep.storage.maskcodec import decode_indices, encode_indices

_SLACK = 8 << 20  # interpreter, numpy and library bookkeeping independent of the file


def check_reader(read: Callable[[], Any], size: int, factor: float) -> Any:
    """Run ``read``; only ScenegrepError may escape; traced peak allocation <= factor * size + slack."""
    tracemalloc.start()
    try:
        try:
            out = read()
        except ScenegrepError as e:
            assert "\n" not in str(e), str(e)
            out = e
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= factor * size + _SLACK, f"peak allocation {peak} bytes for a {size}-byte file"
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- byte-level damage applied to valid files -------------------------------------------------------------------

@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` with a few random edits: truncation, byte flips, inserted or overwritten spans."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "truncate":
            del out[pos:]
        elif kind == "flip" and out:
            out[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[pos:pos + len(chunk)] = chunk
    return bytes(out)


def write(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return len(data)


# -- PLY -------------------------------------------------------------------------------------------------------

PLY_TYPES = ["char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8", "uint8", "float32",
             "float64", "bogus"]
COUNTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**40, 10**12, 10**30]),
                   st.integers(-(2**63), 2**64))


@st.composite
def ply_headers(draw) -> tuple[str, str, list]:
    fmt = draw(st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian", "binary_middle_endian"]))
    elements = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["vertex", "face", "camera", "vertex"]))
        props = []
        for _ in range(draw(st.integers(0, 7))):
            pname = draw(st.sampled_from(["x", "y", "z", "red", "green", "blue", "r", "g", "b", "nx", "x"]))
            if draw(st.integers(0, 5)) == 0:
                props.append(f"property list {draw(st.sampled_from(PLY_TYPES))} "
                             f"{draw(st.sampled_from(PLY_TYPES))} {pname}")
            else:
                props.append(f"property {draw(st.sampled_from(PLY_TYPES))} {pname}")
        elements.append((name, draw(COUNTS), props))
    lines = ["ply", f"format {fmt} 1.0"]
    for name, count, props in elements:
        lines.append(f"element {name} {count}")
        lines += props
    lines.append("end_header")
    return fmt, "\n".join(lines) + "\n", elements


@given(header=ply_headers(), body=st.binary(max_size=400), ascii_body=st.lists(
    st.lists(st.sampled_from(["0", "1", "-1", "255", "256", "1e40", "nan", "inf", "0.5", "x", "65535", "1e400"]),
             max_size=8), max_size=12))
@FUZZ
def test_fuzz_ply_headers_and_bodies(work, header, body, ascii_body):
    fmt, text, _ = header
    if fmt == "ascii":
        payload = text.encode() + "\n".join(" ".join(r) for r in ascii_body).encode()
    else:
        payload = text.encode() + body
    path = work / "h.ply"
    check_reader(lambda: read_ply_points(path), write(path, payload), factor=64)


def _valid_ply(n: int, text: bool, seed: int) -> bytes:
    from plyfile import PlyData, PlyElement

    rng = np.random.default_rng(seed)
    v = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for c in ("x", "y", "z"):
        v[c] = rng.random(n)
    for c in ("red", "green", "blue"):
        v[c] = rng.integers(0, 256, n)
    f = np.empty(2, dtype=[("vertex_indices", "O")])
    f["vertex_indices"] = [np.array([0, 1, 2], np.int32), np.array([1, 2, 3], np.int32)]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], text=text).write(buf)
    return buf.getvalue()


@given(n=st.integers(4, 30), text=st.booleans(), seed=st.integers(0, 3), data=st.data())
@FUZZ
def test_fuzz_damaged_valid_ply(work, n, text, seed, data):
    payload = data.draw(damaged(_valid_ply(n, text, seed)))
    path = work / "d.ply"
    out = check_reader(lambda: read_ply_points(path), write(path, payload), factor=64)
    if not isinstance(out, Exception):
        pts, cols = out
        assert pts.dtype == np.float32 and cols.dtype == np.uint8 and pts.shape == cols.shape
        assert np.isfinite(pts).all()


# -- pose and intrinsics text ----------------------------------------------------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "1", "-0", "1e400", "nan", "inf", "-inf", "0x10", "1,2", "#", "1.5.2",
                                     "\x00", "é", "\ufeff1"]))


@given(rows=st.lists(st.lists(NUMBERS, max_size=6), max_size=6), raw=st.binary(max_size=64), use_raw=st.booleans())
@FUZZ
def test_fuzz_pose_and_intrinsics_text(work, rows, raw, use_raw):
    data = raw if use_raw else "\n".join(" ".join(r) for r in rows).encode("utf-8")
    path = work / "m.txt"
    size = write(path, data)
    out = check_reader(lambda: read_pose(path), size, factor=64)
    if isinstance(out, np.ndarray):
        assert out.shape == (4, 4)
    out = check_reader(lambda: read_intrinsics(path), size, factor=64)
    if isinstance(out, np.ndarray):
        assert out.shape == (3, 3) and np.isfinite(out).all()


# -- depth and colour images -----------------------------------------------------------------------------------

def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(buf, "PNG")
    return buf.getvalue()


def _with_ihdr_size(png: bytes, w: int, h: int) -> bytes:
    """The PNG with its IHDR width/height replaced and the chunk's CRC recomputed (a consistent lie)."""
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", w, h)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


IMAGE_KINDS = ["u16", "u8", "rgb", "rgba", "la", "1", "P", "i32", "f32", "jpeg"]


@st.composite
def image_files(draw) -> bytes:
    kind = draw(st.sampled_from(IMAGE_KINDS))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    if kind == "u16":
        data = _png(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif kind == "u8":
        data = _png(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif kind in ("rgb", "rgba"):
        data = _png(rng.integers(0, 256, (h, w, 3 if kind == "rgb" else 4), dtype=np.uint8))
    elif kind in ("la", "1", "P"):
        data = _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), {"la": "LA", "1": "1", "P": "P"}[kind])
    elif kind == "i32":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 2**20, (h, w), dtype=np.int32)).save(buf, "TIFF")
        data = buf.getvalue()
    elif kind == "f32":
        buf = io.BytesIO()
        Image.fromarray(rng.random((h, w), dtype=np.float32)).save(buf, "TIFF")
        data = buf.getvalue()
    else:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
        data = buf.getvalue()
    if data.startswith(b"\x89PNG") and draw(st.integers(0, 3)) == 0:
        big = st.sampled_from([0, 1, 2**15, 2**20, 2**31 - 1, 2**32 - 1])
        data = _with_ihdr_size(data, draw(big), draw(big))
    return draw(damaged(data))


@given(data=image_files(), what=st.sampled_from(["depth", "colour"]))
@FUZZ
def test_fuzz_depth_and_colour_images(work, data, what):
    path = work / ("img.png" if what == "depth" else "img.jpg")
    size = write(path, data)
    check_reader(lambda: image_size(path, what), size, factor=8)
    out = check_reader(lambda: decode_image(path, what), size, factor=2 * 1100)
    if isinstance(out, np.ndarray):
        if what == "depth":
            assert out.ndim == 2 and out.dtype.kind in "iu" and out.dtype.itemsize >= 2
        else:
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


# -- scan.json -------------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@given(
    fields=st.dictionaries(st.sampled_from(["name", "tags", "depth_scale", "intrinsic_resolution", "other"]),
                           JSON_VALUES, max_size=5),
    raw=st.one_of(st.binary(max_size=64), st.sampled_from([b"[" * 100_000, b'{"depth_scale": ' + b"9" * 5000 + b"}",
                                                          b'{"depth_scale": 1e999}', b'{"depth_scale": NaN}',
                                                          b'{"name": "a\\nb"}', b"\xff\xfe{}"])),
    use_raw=st.booleans(),
)
@FUZZ
def test_fuzz_scan_json(work, fields, raw, use_raw):
    root = work / "meta"
    root.mkdir(exist_ok=True)
    data = raw if use_raw else json.dumps(fields).encode()
    size = write(root / "scan.json", data)
    out = check_reader(lambda: read_scan_meta(root), size, factor=64)
    if not isinstance(out, Exception):
        assert out.depth_scale > 0 and np.isfinite(out.depth_scale)


# -- mask files ------------------------------------------------------------------------------------------------

def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _npy_claiming(shape: tuple[int, ...], dtype: str = "<u4", payload: bytes = b"") -> bytes:
    """A .npy member whose header claims ``shape`` but which holds only ``payload``."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


@st.composite
def npz_files(draw) -> bytes:
    n = draw(st.integers(0, 30))
    masks = [np.flatnonzero(np.random.default_rng(s).random(n) < 0.3) for s in range(draw(st.integers(0, 4)))]
    sizes = [len(m) for m in masks]
    arrays = {
        "point_indices": np.concatenate(masks).astype(np.uint32) if masks else np.zeros(0, np.uint32),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "scores": np.ones(len(masks), np.float32),
        "num_points": np.int64(n),
    }
    swap = draw(st.sampled_from([None, "point_indices", "offsets", "scores", "num_points"]))
    if swap:  # one array replaced by something of the wrong kind
        arrays[swap] = draw(st.sampled_from([
            np.array([1.5, np.nan]), np.array(["a", "b"]), np.zeros((2, 2), np.int64), np.array(-1),
            np.array([2**40], np.int64), np.array(2**40), np.array([], np.float64), np.array([1 + 2j]),
            np.array([True, False]),
        ]))
    data = _npz_bytes(arrays)
    if draw(st.integers(0, 3)) == 0:  # a member whose .npy header claims a huge array
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, v in arrays.items():
                if k == swap or k == "point_indices":
                    shape = draw(st.sampled_from([(10**12,), (2**31, 2**31), (-1,), (3,)]))
                    zf.writestr(f"{k}.npy", _npy_claiming(shape, payload=b"\x00" * 12))
                else:
                    member = io.BytesIO()
                    np.save(member, v)
                    zf.writestr(f"{k}.npy", member.getvalue())
        data = buf.getvalue()
    return draw(damaged(data))


@given(data=npz_files())
@FUZZ
def test_fuzz_npz_mask_files(work, data):
    path = work / "m.npz"
    out = check_reader(lambda: load_mask_file(path), write(path, data), factor=4 * 1100)
    if not isinstance(out, Exception):
        assert out.point_indices.dtype == np.uint32 and len(out.scores) == len(out)


@st.composite
def pt_objects(draw) -> Any:
    import torch

    n, m = draw(st.integers(0, 12)), draw(st.integers(0, 5))
    dense = (np.random.default_rng(draw(st.integers(0, 3))).random((n, m)) < 0.4)
    kind = draw(st.sampled_from(["np_f16", "np_f32", "np_bool", "t_f32", "t_u8", "t_bf16", "t_f8", "t_c64",
                                 "strided", "empty_rows", "dict", "list", "str", "np_1d", "t_3d", "t_sparse"]))
    if kind.startswith("np_"):
        return {"np_f16": dense.astype(np.float16), "np_f32": dense.astype(np.float32),
                "np_bool": dense, "np_1d": dense.astype(np.float32).ravel()}[kind]
    if kind == "t_f8":
        return torch.from_numpy(dense.astype(np.float32)).to(torch.float8_e4m3fn)
    if kind == "t_c64":
        return torch.from_numpy(dense.astype(np.complex64))
    if kind.startswith("t_"):
        t = torch.from_numpy(dense.astype(np.float32))
        return {"t_f32": t, "t_u8": t.to(torch.uint8), "t_bf16": t.to(torch.bfloat16),
                "t_3d": t.reshape(1, n, m), "t_sparse": t.to_sparse()}[kind]
    if kind == "strided":  # one stored value repeated over a huge shape
        return torch.ones(1).as_strided((draw(st.sampled_from([10, 10**6, 10**9])),) * 2, (0, 0))
    if kind == "empty_rows":
        return np.zeros((0, draw(st.sampled_from([0, 3, 10**9]))), np.float32)
    return {"dict": {"masks": dense}, "list": [dense], "str": "masks"}[kind]


@given(obj=pt_objects(), legacy=st.booleans(), data=st.data())
@FUZZ
def test_fuzz_pt_mask_files(work, obj, legacy, data):
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    payload = data.draw(damaged(buf.getvalue()))
    path = work / "m.pt"
    out = check_reader(lambda: load_mask_file(path), write(path, payload), factor=64)
    if not isinstance(out, Exception):
        assert out.point_indices.dtype == np.uint32


# -- the catalog's mask blobs ----------------------------------------------------------------------------------

@given(idx=st.lists(st.integers(0, 2**32 - 1), max_size=60, unique=True), data=st.data(),
       header=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1)))
@FUZZ
def test_fuzz_mask_blob_decode(idx, data, header):
    good = np.array(sorted(idx), np.uint32)
    blob = encode_indices(good)
    assert np.array_equal(decode_indices(blob), good)
    bad = data.draw(damaged(blob))
    if data.draw(st.booleans()):
        bad = struct.pack("<BBBI", *header) + bad[7:]
    assume(bad != blob)
    out = check_reader(lambda: decode_indices(bad), len(bad), factor=10 * 1100)
    if isinstance(out, np.ndarray):
        assert out.dtype == np.uint32 and np.all(np.diff(out.astype(np.int64)) > 0)
