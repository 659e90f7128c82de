"""Bad input found by trying (issue 8, section 4) and by fuzzing the readers (tests/test_fuzz_readers.py).

Every case is a one-line typed error naming the file, raised before anything large is allocated; through
the CLI, a bad scan is reported in one line and the other scans are still indexed.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from scenegrep.cli import cli
from scenegrep.errors import ScenegrepError
from scenegrep.indexer.proposals.base import MaskFileError, MaskSet
from scenegrep.indexer.proposals.files import load_mask_file
from scenegrep.indexer.scans import (
    FrameError,
    PointCloudError,
    ScanMetaError,
    decode_image,
    image_size,
    read_pose,
    read_ply_points,
    read_scan,
    read_scan_meta,
)
from scenegrep.indexer.weights import WeightsFileError, safe_torch_load
from scenegrep.storage.maskcodec import MaskBlobError, decode_indices, encode_indices

MiB = 1 << 20


def peak_bytes(fn) -> tuple[object, int]:
    """(result or raised ScenegrepError, traced peak allocation in bytes) of ``fn()``."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except ScenegrepError as e:
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def one_line_error(err: BaseException, *needles: str) -> str:
    msg = str(err)
    assert isinstance(err, ScenegrepError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def ply_bytes(header_lines: list[str], body: bytes) -> bytes:
    return ("\n".join(["ply", *header_lines, "end_header"]) + "\n").encode() + body


XYZRGB = ["property float x", "property float y", "property float z",
          "property uchar red", "property uchar green", "property uchar blue"]


def binary_body(n: int) -> bytes:
    v = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    v["x"] = np.arange(n)
    v["r"] = 7
    return v.tobytes()


# -- PLY headers that claim more than the file holds ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_huge_vertex_count_is_refused_before_allocating(tmp_path, fmt):
    path = tmp_path / "scene.ply"
    body = binary_body(10) if fmt != "ascii" else b"0 0 0 1 2 3\n" * 10
    path.write_bytes(ply_bytes([f"format {fmt} 1.0", f"element vertex {2_000_000_000}", *XYZRGB], body))
    err, peak = peak_bytes(lambda: read_ply_points(path))
    assert isinstance(err, PointCloudError)
    one_line_error(err, str(path), "2000000000 vertices", "truncated or damaged")
    assert peak < 2 * MiB  # the old reader asked numpy for 27.9 GiB here


def test_huge_face_count_before_the_vertices_is_refused(tmp_path):
    path = tmp_path / "scene.ply"
    header = ["format binary_little_endian 1.0", "element face 10000000000", "property list uchar int vertex_indices",
              "element vertex 10", *XYZRGB]
    path.write_bytes(ply_bytes(header, binary_body(10)))
    with pytest.raises(PointCloudError, match="need at least"):
        read_ply_points(path)


def test_faces_after_the_vertices_are_never_read(tmp_path):
    # a damaged face element (huge count, huge list length) after good vertices: the points are still read
    path = tmp_path / "mesh.ply"
    header = ["format binary_little_endian 1.0", "element vertex 10", *XYZRGB,
              "element face 10000000000", "property list uint int vertex_indices"]
    path.write_bytes(ply_bytes(header, binary_body(10) + struct.pack("<I", 2**32 - 1) + b"\x00" * 8))
    (pts, cols), peak = peak_bytes(lambda: read_ply_points(path))
    assert pts.shape == (10, 3) and np.array_equal(pts[:, 0], np.arange(10)) and (cols[:, 0] == 7).all()
    assert peak < 2 * MiB


@pytest.mark.parametrize("header, words", [
    (["format binary_little_endian 1.0", "element vertex -5", *XYZRGB], "negative count"),
    (["format binary_little_endian 1.0", "element camera 1000000000000", "element vertex 1", *XYZRGB],
     "no properties"),
    (["format binary_little_endian 1.0", "element vertex 1", "property float x", "property float x",
      "property float y", "property float z", "property uchar red", "property uchar green", "property uchar blue"],
     "same name"),
    (["format binary_little_endian 1.0", "element vertex 1", "property list uchar float x", *XYZRGB[1:]],
     "list properties"),
])
def test_malformed_ply_headers(tmp_path, header, words):
    path = tmp_path / "scene.ply"
    path.write_bytes(ply_bytes(header, binary_body(4)))
    with pytest.raises(PointCloudError) as err:
        read_ply_points(path)
    one_line_error(err.value, str(path), words)


def test_ply_without_end_header_is_not_read_whole(tmp_path):
    path = tmp_path / "scene.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\n" + b"comment " + b"x" * (4 * MiB))
    err, peak = peak_bytes(lambda: read_ply_points(path))
    one_line_error(err, "no end_header")
    assert peak < 2 * MiB


@pytest.mark.parametrize("row, words", [(b"0 0 0 300 0 0", "'red' is uint8 but holds 300"),
                                        (b"0 0 0 1.5 0 0", "holds 1.5"),
                                        (b"0 0 nan 1 2 3", "inf/NaN coordinates"),
                                        (b"0 0 0 100 200", "header says 1 of 6"),
                                        (b"0 0 0 1 2 \xff", "unreadable ascii PLY")])
def test_ascii_values_must_fit_their_declared_types(tmp_path, row, words):
    path = tmp_path / "scene.ply"
    path.write_bytes(ply_bytes(["format ascii 1.0", "element vertex 1", *XYZRGB], row + b"\n"))
    with pytest.raises(PointCloudError) as err:
        read_ply_points(path)
    one_line_error(err.value, words)


def test_float_colours_with_nan_are_refused(tmp_path):
    path = tmp_path / "scene.ply"
    header = ["format ascii 1.0", "element vertex 2", "property float x", "property float y", "property float z",
              "property float red", "property float green", "property float blue"]
    path.write_bytes(ply_bytes(header, b"0 0 0 0.5 0.5 0.5\n1 1 1 nan 0 0\n"))
    with pytest.raises(PointCloudError, match="colours hold inf or NaN"):
        read_ply_points(path)


# -- images ------------------------------------------------------------------------------------------------------


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, "PNG")
    return buf.getvalue()


def test_8bit_depth_png_is_refused(tmp_path):
    path = tmp_path / "0.png"
    path.write_bytes(png_bytes(np.full((6, 8), 100, np.uint8)))
    for read in (lambda: image_size(path, "depth"), lambda: decode_image(path, "depth")):
        with pytest.raises(FrameError) as err:
            read()
        one_line_error(err.value, str(path), "16-bit", "8-bit")


def test_depth_must_be_png(tmp_path):
    path = tmp_path / "0.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path, "JPEG")
    with pytest.raises(FrameError, match="got a JPEG image"):
        image_size(path, "depth")


def test_16bit_image_is_not_a_colour_image(tmp_path):
    path = tmp_path / "0.png"
    path.write_bytes(png_bytes(np.zeros((6, 8), np.uint16)))
    with pytest.raises(FrameError, match="colour image must be RGB .* got mode I;16"):
        image_size(path, "colour")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA"])
def test_colour_images_convertible_to_rgb_are_read(tmp_path, mode):
    path = tmp_path / "0.png"
    path.write_bytes(png_bytes(np.full((6, 8, 3), 90, np.uint8), mode))
    assert image_size(path, "colour") == (8, 6)
    rgb = decode_image(path, "colour")
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8


def test_png_header_claiming_more_pixels_than_the_file_holds(tmp_path):
    png = png_bytes(np.zeros((6, 8), np.uint16))
    ihdr = bytearray(png[12:29])
    ihdr[4:12] = struct.pack(">II", 9_000, 9_000)  # 162 MB of uint16 from a 70-byte file
    path = tmp_path / "0.png"
    path.write_bytes(png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:])
    err, peak = peak_bytes(lambda: decode_image(path, "depth"))
    one_line_error(err, str(path), "9000x9000", "more than a")
    assert peak < 2 * MiB


def test_damaged_png_chunk_length_does_not_allocate_it(tmp_path):
    # found by fuzzing: Pillow skips the rest of a chunk with read(claimed length); from a file object that
    # allocated the claimed 16 MiB (up to 2 GiB) up front
    png = bytearray(png_bytes(np.zeros((1, 1), np.uint8), "L"))
    idat = png.index(b"IDAT") - 4
    png[idat:idat + 4] = struct.pack(">I", 0x0100000A)
    path = tmp_path / "0.jpg"
    path.write_bytes(bytes(png[: idat + 12]))
    out, peak = peak_bytes(lambda: decode_image(path, "colour"))
    assert peak < 2 * MiB, peak


def test_bad_depth_fails_when_the_scan_is_read(synth_scans, tmp_path):
    """The check runs in read_scan (image headers only), before any proposer or feature stage."""
    scan = tmp_path / "eightbit"
    shutil.copytree(synth_scans[0], scan)
    depth = sorted((scan / "depth").iterdir())[0]
    depth.write_bytes(png_bytes(np.full((6, 8), 100, np.uint8)))
    with pytest.raises(FrameError) as err:
        read_scan(scan)
    one_line_error(err.value, str(depth), "16-bit")


# -- text files ---------------------------------------------------------------------------------------------------


def test_scan_json_damage(tmp_path):
    for raw, words in [(b"[" * 100_000, "unreadable JSON"),  # RecursionError in json
                       (b'{"depth_scale": ' + b"9" * 5000 + b"}", "unreadable JSON"),  # int digit limit
                       (b'{"depth_scale": ' + b"9" * 400 + b"}", "'depth_scale' must be a positive number"),
                       (b'{"name": "two\\nlines"}', "'name' must be a non-empty one-line string"),
                       (b" " * (2 * MiB), "larger than")]:
        (tmp_path / "scan.json").write_bytes(raw)
        with pytest.raises(ScanMetaError) as err:
            read_scan_meta(tmp_path)
        one_line_error(err.value, "scan.json", words)


def test_pose_file_far_too_large(tmp_path):
    path = tmp_path / "0.txt"
    path.write_bytes(b"1 0 0 0\n" * 20_000)
    with pytest.raises(FrameError, match="larger than .* not a pose matrix"):
        read_pose(path)


def test_empty_pose_file(tmp_path):
    path = tmp_path / "0.txt"
    path.write_bytes(b"")
    with pytest.raises(FrameError, match="pose must be 4x4"):
        read_pose(path)


# -- mask files ---------------------------------------------------------------------------------------------------


def npy_claiming(shape: tuple[int, ...], payload: bytes = b"\x00" * 12, descr: str = "<u4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def npz_with(path: Path, **members: bytes) -> Path:
    good = MaskSet.from_lists([np.array([0, 2])], None, 4)
    buf = io.BytesIO()
    np.save(buf, good.offsets)
    arrays = {"offsets": buf.getvalue()}
    for k, v in (("point_indices", good.point_indices), ("scores", good.scores), ("num_points", np.int64(4))):
        buf = io.BytesIO()
        np.save(buf, v)
        arrays[k] = buf.getvalue()
    arrays.update(members)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in arrays.items():
            zf.writestr(f"{k}.npy", v)
    return path


def test_npz_member_claiming_a_huge_array(tmp_path):
    path = npz_with(tmp_path / "m.npz", point_indices=npy_claiming((10**12,)))
    err, peak = peak_bytes(lambda: load_mask_file(path))
    assert isinstance(err, MaskFileError)
    one_line_error(err, str(path), "point_indices.npy claims shape")
    assert peak < 2 * MiB  # np.load allocated 4 TB here


def test_npz_helper_writes_a_valid_file(tmp_path):
    ms = load_mask_file(npz_with(tmp_path / "m.npz"))
    assert ms.num_points == 4 and ms[0].tolist() == [0, 2]


@pytest.mark.parametrize("member, value, words", [
    ("num_points", np.array([4, 5]), "num_points must be one integer"),
    ("num_points", np.array(4.5), "num_points must be one integer"),
    ("point_indices", np.array([0.0, 2.0]), "point_indices must be a 1-D integer array"),
    ("point_indices", np.array([-1, 2]), "outside [0, num_points)"),
    ("scores", np.array(["a"]), "scores must be a 1-D numeric array"),
])
def test_npz_arrays_of_the_wrong_kind(tmp_path, member, value, words):
    buf = io.BytesIO()
    np.save(buf, value)
    path = npz_with(tmp_path / "m.npz", **{member: buf.getvalue()})
    with pytest.raises(MaskFileError) as err:
        load_mask_file(path)
    one_line_error(err.value, str(path), words)


def test_npz_object_array_is_refused(tmp_path):
    path = npz_with(tmp_path / "m.npz", scores=npy_claiming((1,), payload=b"\x00" * 64, descr="|O"))
    with pytest.raises(MaskFileError, match="holds Python objects"):
        load_mask_file(path)


def test_pt_tensor_with_zero_strides_is_refused(tmp_path):
    import torch

    path = tmp_path / "m.pt"
    torch.save(torch.ones(1).as_strided((10**9, 10**9), (0, 0)), path)
    with pytest.raises(MaskFileError, match="not backed by its own data"):
        load_mask_file(path)


def test_pt_matrix_without_points(tmp_path):
    import torch

    path = tmp_path / "m.pt"
    torch.save(torch.zeros(0, 10**9), path)
    with pytest.raises(MaskFileError, match="covers no points"):
        load_mask_file(path)


def test_pt_dtype_numpy_lacks(tmp_path):
    import torch

    path = tmp_path / "m.pt"
    torch.save(torch.zeros(3, 2).to(torch.float8_e4m3fn), path)
    with pytest.raises(MaskFileError, match="numeric 0/1 matrix"):
        load_mask_file(path)


def test_legacy_pt_with_a_damaged_length_is_read_from_memory(tmp_path):
    # found by fuzzing: a damaged pickle string length in a legacy torch file made the unpickler ask the
    # file for the claimed length (allocated up front)
    import torch

    buf = io.BytesIO()
    torch.save(np.zeros((2, 2), np.float16), buf, _use_new_zipfile_serialization=False)
    data = bytearray(buf.getvalue())
    at = data.index(b"protocol_version") - 4
    data[at:at + 4] = struct.pack("<I", 0x01000010)
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(data))
    err, peak = peak_bytes(lambda: load_mask_file(path))
    one_line_error(err, str(path))
    assert peak < 2 * MiB


def test_safe_torch_load_maps_every_failure_to_the_given_error(tmp_path):
    import torch

    path = tmp_path / "w.pth"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(WeightsFileError, match="not a PyTorch checkpoint"):
        safe_torch_load(path)
    with pytest.raises(MaskFileError, match="not a PyTorch checkpoint"):
        safe_torch_load(path, MaskFileError)
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(safe_torch_load(path)["w"], torch.ones(2))


# -- catalog mask blobs -------------------------------------------------------------------------------------------


def test_mask_blob_errors_are_typed_and_bounded():
    blob = encode_indices(np.arange(0, 100, 3))
    with pytest.raises(MaskBlobError) as err:
        decode_indices(blob[:-3])
    assert isinstance(err.value, ValueError) and isinstance(err.value, ScenegrepError)
    # a header promising 2 indices followed by 50 MiB of inflated zeros: refused after inflating 6 bytes
    bomb = struct.pack("<BBBI", 0xA7, 1, 1, 2) + zlib.compress(b"\x00" * (50 * MiB), 9)
    err, peak = peak_bytes(lambda: decode_indices(bomb))
    assert isinstance(err, MaskBlobError) and peak < 2 * MiB
    with pytest.raises(MaskBlobError, match="exactly"):
        decode_indices(blob + b"trailing")


# -- through the CLI ----------------------------------------------------------------------------------------------


def test_index_reports_a_bad_ply_in_one_line_and_indexes_the_good_scan(home, synth_scans, tiny_clip_model, tmp_path):
    good = synth_scans[0]
    bad = tmp_path / "bad_scan"
    shutil.copytree(synth_scans[1], bad)
    ply = next(bad.glob("*.ply"))
    data = ply.read_bytes()
    head_end = data.index(b"end_header")
    head = data[:head_end].decode()
    n = next(int(ln.split()[2]) for ln in head.splitlines() if ln.startswith("element vertex"))
    ply.write_bytes(head.replace(f"element vertex {n}", "element vertex 3000000000").encode() + data[head_end:])

    res = CliRunner().invoke(cli, ["index", str(good), str(bad), "--clip-model", tiny_clip_model, "-q"],
                             catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "MemoryError" not in res.output
    failed = [ln for ln in res.output.splitlines() if str(ply) in ln]
    assert len(failed) == 1 and "3000000000 vertices" in failed[0], res.output
    listed = CliRunner().invoke(cli, ["scans", "--json"], catch_exceptions=False)
    assert [s["name"] for s in json.loads(listed.stdout)] == [good.name]
