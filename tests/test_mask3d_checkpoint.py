"""scenegrep.indexer.proposals.mask3d.checkpoint: reading Mask3D checkpoint files safely into tensors and plain data."""

from __future__ import annotations

import _compat_pickle
import gc
import hashlib
import importlib.util
import io
import json
import logging
import os
import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from scenegrep.indexer.proposals.mask3d.checkpoint import (
    ALLOW_LIST,
    Mask3DCheckpointError,
    read_checkpoint,
    resolve_interpolations,
)
from scenegrep.indexer.weights import WeightsFileError

DATA = Path(__file__).resolve().parent / "data" / "mask3d"
COMMITTED = DATA / "lightning17_omegaconf206.ckpt"
FALLBACK_LOG = "reading it with the restricted unpickler"


def _maker():
    """tests/data/mask3d/make_lightning17_checkpoint.py as a module (its builders make the Lightning layout)."""
    spec = importlib.util.spec_from_file_location("make_lightning17", DATA / "make_lightning17_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_default_globals() -> set[str]:
    from torch._weights_only_unpickler import _get_allowed_globals

    return set(_get_allowed_globals())


def _unpickler_names(raw_globals: list[str]) -> set[str]:
    """Protocol-2 GLOBAL names (``__builtin__.long``) -> the names unpicklers look up (``builtins.int``)."""
    out = set()
    for g in raw_globals:
        module, name = g.rsplit(".", 1)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        out.add(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")
    return out


def _assert_one_line_error(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, WeightsFileError)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for fragment in fragments:
        assert fragment in msg, msg


def _zip_checkpoint(path: Path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint whose data.pkl is exactly ``data_pkl`` (for hand-made pickles)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    return path


# -- good files ------------------------------------------------------------------------------------------------


def test_parity_fixture_checkpoint_loads(shared_dir):
    path = shared_dir / "fixtures" / "mask3d-parity" / "checkpoint.ckpt"
    if not path.is_file():
        pytest.skip("mask3d-parity fixture not present")
    ckpt = read_checkpoint(path)
    # The fixture holds only plain data, so torch's own weights-only load is an exact oracle.
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert len(ckpt.state_dict) == 278
    assert list(ckpt.state_dict) == list(ref["state_dict"])
    assert "model.backbone.conv0p1s1.kernel" in ckpt.state_dict and "criterion.empty_weight" in ckpt.state_dict
    for key, tensor in ref["state_dict"].items():
        assert ckpt.state_dict[key].dtype == tensor.dtype and torch.equal(ckpt.state_dict[key], tensor), key
    assert ckpt.hyper_parameters == ref["hyper_parameters"] == ckpt.raw_hyper_parameters
    assert ckpt.hyper_parameters["config"]["model"]["num_queries"] == 16
    assert (ckpt.layout, ckpt.epoch, ckpt.global_step, ckpt.unresolved) == ("lightning", 0, 0, ())
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt.size_bytes == path.stat().st_size and ckpt.memory_mapped


@pytest.mark.parametrize("with_scheduler", [False, True], ids=["weights-only", "onecycle-fallback"])
def test_lightning_checkpoint_with_real_dictconfig(tmp_path, monkeypatch, caplog, with_scheduler):
    """A Lightning-1.7-style file pickling a real DictConfig (installed omegaconf) comes back as plain data,
    without omegaconf being imported or any of its unpickling code running."""
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf (the test extra) is not installed")
    from omegaconf import OmegaConf, open_dict

    maker = _maker()
    cfg = maker.build_config()
    if not omegaconf.__version__.startswith("2.0."):
        with open_dict(cfg):
            cfg.model.query_dim = "${.hidden_dim}"          # relative interpolations: omegaconf >= 2.1
            cfg.model.missing_value = "???"
    sd = maker.build_state_dict(seed=3)
    ckpt_dict = maker.build_checkpoint(cfg, sd)
    if not with_scheduler:
        del ckpt_dict["lr_schedulers"]
    path = tmp_path / "mask3d.ckpt"
    torch.save(ckpt_dict, path)
    expected_raw = {"config": OmegaConf.to_container(cfg, resolve=False)}
    expected = {"config": OmegaConf.to_container(cfg, resolve=True)}

    def refuse(*args, **kwargs):
        raise AssertionError("omegaconf code ran while loading")

    for cls in (omegaconf.DictConfig, omegaconf.ListConfig, omegaconf.nodes.AnyNode):
        monkeypatch.setattr(cls, "__setstate__", refuse, raising=False)
    for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
        monkeypatch.setitem(sys.modules, name, None)   # any import of omegaconf now fails
    with caplog.at_level(logging.INFO, logger="scenegrep.indexer.proposals.mask3d.checkpoint"):
        ckpt = read_checkpoint(path)

    assert (FALLBACK_LOG in caplog.text) == with_scheduler
    assert ckpt.raw_hyper_parameters == expected_raw
    assert ckpt.hyper_parameters == expected and ckpt.unresolved == ()
    model = ckpt.hyper_parameters["config"]["model"]
    # stored as "${general.num_targets}" and "${data.voxel_size}"
    assert (model["num_classes"], model["voxel_size"]) == (201, 0.02)
    assert list(ckpt.state_dict) == list(sd)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in sd.items())
    assert (ckpt.layout, ckpt.epoch, ckpt.global_step, ckpt.lightning_version) == ("lightning", 549, 659_999, "1.7.2")
    assert set(ckpt.other_keys) == {"loops", "callbacks", "optimizer_states", "hparams_name"} | (
        {"lr_schedulers"} if with_scheduler else set())
    # Every global the file needs beyond torch's defaults is in the allow-list.
    assert _unpickler_names(maker.pickle_globals(path)) - _torch_default_globals() <= {g.name for g in ALLOW_LIST}


def test_committed_omegaconf206_checkpoint():
    """The tiny file written with omegaconf 2.0.6 (Mask3D's version) matches what omegaconf itself said."""
    expected = json.loads(COMMITTED.with_suffix(".json").read_text())
    assert expected["omegaconf_version"].startswith("2.0.")
    ckpt = read_checkpoint(COMMITTED)
    assert ckpt.sha256 == expected["sha256"]
    assert ckpt.raw_hyper_parameters == expected["hyper_parameters_raw"]
    assert ckpt.hyper_parameters == expected["hyper_parameters_resolved"] and ckpt.unresolved == ()
    assert ckpt.hyper_parameters["config"]["general"]["save_dir"] == "saved/validation"
    assert list(ckpt.state_dict) == list(expected["state_dict"])
    for key, want in expected["state_dict"].items():
        got = ckpt.state_dict[key]
        assert (str(got.dtype), list(got.shape)) == (f"torch.{want['dtype']}", want["shape"]), key
        assert got.flatten().tolist() == want["values"], key
    assert (ckpt.epoch, ckpt.global_step, ckpt.lightning_version) == (
        expected["epoch"], expected["global_step"], expected["lightning_version"])
    assert set(ckpt.other_keys) == set(expected["other_keys"])
    # The allow-list is exactly what this file needs beyond torch's defaults: no entry is unused.
    needed = _unpickler_names(expected["pickle_globals"]) - _torch_default_globals()
    assert needed == {g.name for g in ALLOW_LIST}


@pytest.mark.parametrize("layout", ["bare", "state_dict", "legacy"])
def test_other_layouts(tmp_path, layout):
    sd = {"model.a.kernel": torch.arange(6.0).reshape(2, 3), "criterion.empty_weight": torch.ones(2)}
    path = tmp_path / "w.pt"
    if layout == "bare":
        torch.save(sd, path)
    elif layout == "state_dict":
        torch.save({"state_dict": sd}, path)
    else:   # torch's pre-1.6 non-zip format: readable, but not memory-mapped
        torch.save({"state_dict": sd, "epoch": 2}, path, _use_new_zipfile_serialization=False)
    ckpt = read_checkpoint(path)
    assert list(ckpt.state_dict) == list(sd) and all(torch.equal(ckpt.state_dict[k], v) for k, v in sd.items())
    assert ckpt.hyper_parameters is None and ckpt.raw_hyper_parameters is None
    assert ckpt.layout == {"bare": "bare", "state_dict": "state_dict", "legacy": "lightning"}[layout]
    assert ckpt.memory_mapped == (layout != "legacy")
    assert ckpt.epoch == (2 if layout == "legacy" else None)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc/self/maps (Linux)")
def test_zip_files_are_memory_mapped(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000, 100)}}, path)

    def mapped() -> bool:
        return str(path) in Path("/proc/self/maps").read_text()

    ckpt = read_checkpoint(path)
    assert ckpt.memory_mapped and mapped()
    del ckpt
    gc.collect()
    copied = read_checkpoint(path, mmap=False)
    assert not copied.memory_mapped and not mapped()


# -- bad files -------------------------------------------------------------------------------------------------


def _write_bad(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.ckpt"
    good = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(4)}}, good)
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("model.backbone.conv0p1s1.kernel: [1, 2, 3]\n")
    elif case == "ply":
        path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nend_header\n" + bytes(36))
    elif case == "truncated_zip":
        path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    elif case == "truncated_legacy":
        torch.save({"state_dict": {"w": torch.zeros(4)}}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == "plain_pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    elif case == "list":
        torch.save([torch.zeros(2)], path)
    elif case == "no_state_dict":
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    elif case == "non_tensor_value":
        torch.save({"state_dict": {"w": torch.zeros(2), "b": [1.0, 2.0]}}, path)
    elif case == "empty_state_dict":
        torch.save({"state_dict": {}}, path)
    elif case == "state_dict_not_dict":
        torch.save({"state_dict": [torch.zeros(2)]}, path)
    elif case == "global_outside_allow_list":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"p": Path("x")}}, path)
    elif case == "type_in_hyper_parameters":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"t": dict}}, path)
    return path


BAD_CASES = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "is empty",
    "text": "is not a PyTorch checkpoint (neither a zip archive nor a pickle",
    "ply": "it starts with b'ply\\nformat",
    "truncated_zip": "is not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed",
    "truncated_legacy": "is not a readable PyTorch checkpoint",
    "plain_pickle": "is a pickle but not a PyTorch checkpoint",
    "list": "holds a list, not a checkpoint dict",
    "no_state_dict": "has no state_dict (top-level keys: 'model', 'epoch')",
    "non_tensor_value": "state_dict entry 'b' is a list, not a tensor",
    "empty_state_dict": "state_dict is empty",
    "state_dict_not_dict": "state_dict is a list, not a dict of tensors",
    "global_outside_allow_list": "outside the Mask3D checkpoint allow-list: pathlib.PosixPath",
    "type_in_hyper_parameters": "hyper_parameters hold a pickled builtins.dict, not configuration data",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_files_give_one_clear_error(tmp_path, case):
    if case == "global_outside_allow_list" and os.name != "posix":
        pytest.skip("pathlib's concrete class is PosixPath only on POSIX")
    path = _write_bad(tmp_path, case)
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, BAD_CASES[case])


# -- malicious files -------------------------------------------------------------------------------------------


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsExec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _torch112_scheduler_state() -> dict:
    """A torch-1.12-style OneCycleLR state: forces the restricted-unpickler fallback (REDUCE, POP, GET)."""
    maker = _maker()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return maker.torch112_onecycle_state(opt, total_steps=10, step=3)


@pytest.mark.parametrize("payload", ["os.system", "exec"])
@pytest.mark.parametrize("via_fallback", [False, True], ids=["weights-only", "fallback"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, via_fallback):
    marker = tmp_path / "PWNED"
    evil = _RunsShell(marker) if payload == "os.system" else _RunsExec(marker)
    pickle.loads(pickle.dumps(_RunsExec(tmp_path / "control")))   # the payload is live under a plain unpickle
    assert (tmp_path / "control").exists()

    obj = {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"config": evil}}
    if via_fallback:
        obj = {"lr_schedulers": [_torch112_scheduler_state()], **obj}   # scheduler first: the POP comes earlier
    path = tmp_path / "evil.ckpt"
    torch.save(obj, path)
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, "refusing to unpickle it",
                           "posix.system" if payload == "os.system" else "builtins.exec")
    assert not marker.exists()


def test_malicious_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsExec(marker), protocol=2))
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, "builtins.exec")
    assert not marker.exists()


# Hand-made pickles that abuse allow-listed names. "0" (POP) after "N" (NONE) up front makes torch's
# weights-only unpickler give up, so the restricted fallback has to refuse them too.
_GETATTR_CALL = (b"\x80\x02" b"c__builtin__\ngetattr\n" b"c__builtin__\ndict\n"
                 b"X\x08\x00\x00\x00fromkeys" b"\x86R" b"]X\x01\x00\x00\x00xa\x85R" b".")
_BUILD_ON_CLASS = (b"\x80\x02" b"ccollections\nOrderedDict\n"
                   b"N}X\x05\x00\x00\x00itemsN" b"s\x86b" b".")
_SETITEM_ON_TENSOR_CLASS = b"\x80\x02" b"ctorch\nTensor\n" b"K\x00K\x01s" b"."


@pytest.mark.parametrize("data_pkl,refusal", [
    (_GETATTR_CALL, "call"), (_BUILD_ON_CLASS, "BUILD"), (_SETITEM_ON_TENSOR_CLASS, "add items")],
    ids=["call-getattr-result", "build-on-class", "setitem-on-class"])
@pytest.mark.parametrize("via_fallback", [False, True], ids=["weights-only", "fallback"])
def test_allow_listed_names_cannot_be_abused(tmp_path, data_pkl, refusal, via_fallback):
    if via_fallback:
        data_pkl = data_pkl[:2] + b"N0" + data_pkl[2:]
    path = _zip_checkpoint(tmp_path / "abuse.ckpt", data_pkl)
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, "cannot be unpickled safely")
    if via_fallback:
        assert f"refusing to {refusal}" in str(err.value)


def test_unsupported_opcode_in_fallback_is_refused(tmp_path):
    """The fallback only adds POP/POP_MARK/DUP: e.g. protocol-0 INST (which imports and calls) stays refused."""
    path = _zip_checkpoint(tmp_path / "inst.ckpt", b"\x80\x02N0" b"(X\x04\x00\x00\x00trueiposix\nsystem\n" b".")
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, f"pickle opcode {ord('i')} is not allowed")


# -- interpolations --------------------------------------------------------------------------------------------


def test_resolve_interpolations():
    config = {
        "general": {"n": 201, "name": "val", "dir": "saved/${general.name}/${general.n}", "gpus": None},
        "model": {"num_classes": "${general.n}", "sizes": [1, "${general.n}"], "first": "${model.sizes[0]}",
                  "also_first": "${model.sizes.0}", "sib": "${.num_classes}", "up": "${..general.name}",
                  "copy": "${general}", "chain": "${model.num_classes}"},
        "left": {"env": "${env:HOME}", "now": "${now:%Y}", "missing": "${nope.x}", "cyc_a": "${left.cyc_b}",
                 "cyc_b": "${left.cyc_a}", "todo": "???", "to_todo": "${left.todo}", "nested": "${a.${b}}",
                 "escaped": "\\${general.n}"},
    }
    resolved, unresolved = resolve_interpolations(config, "config")
    assert resolved["general"] == {"n": 201, "name": "val", "dir": "saved/val/201", "gpus": None}
    assert resolved["model"] == {"num_classes": 201, "sizes": [1, 201], "first": 1, "also_first": 1, "sib": 201,
                                 "up": "val", "copy": resolved["general"], "chain": 201}
    assert resolved["model"]["copy"] is not resolved["general"]   # a copy, not a shared object
    assert resolved["left"] == config["left"]
    assert sorted(unresolved) == sorted(f"config.left.{k}" for k in config["left"] if k != "todo")
    assert config["model"]["num_classes"] == "${general.n}"   # the input is not modified


def test_resolve_interpolations_stays_linear_and_bounded():
    """Doubling chains (a hostile config) resolve in linear time; strings past the size cap are left alone."""
    config = {"k0": "x", **{f"k{i}": f"${{k{i - 1}}}${{k{i - 1}}}" for i in range(1, 60)}}
    resolved, unresolved = resolve_interpolations(config)
    assert resolved["k16"] == "x" * 2 ** 16
    assert unresolved == [f"k{i}" for i in range(17, 60)]


def test_hyper_parameters_stored_as_a_dictconfig(tmp_path):
    """Lightning stores ``hparams`` itself (plus ``hparams_type``) when the module's hparams are a DictConfig."""
    pytest.importorskip("omegaconf", reason="omegaconf (the test extra) is not installed")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"general": {"n": 201}, "model": {"num_classes": "${general.n}", "levels": [0, 1]}})
    path = tmp_path / "hp.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": cfg, "hparams_type": type(cfg)}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.hyper_parameters == OmegaConf.to_container(cfg, resolve=True)
    assert ckpt.raw_hyper_parameters == OmegaConf.to_container(cfg, resolve=False)
    assert ckpt.other_keys == ("hparams_type",)


def test_deeply_nested_hyper_parameters_give_a_clear_error(tmp_path):
    """The unpickler is iterative, so a file can nest lists far deeper than Python's recursion limit."""
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": "PLACEHOLDER"}, buf)
    depth = 20_000
    path = tmp_path / "deep.ckpt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):   # the string "PLACEHOLDER" -> a list nested `depth` deep
                data = data.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", b"]" * depth + b"a" * (depth - 1))
            dst.writestr(name, data)
    with pytest.raises(Mask3DCheckpointError) as err:
        read_checkpoint(path)
    _assert_one_line_error(err, path, "nested too deeply")
