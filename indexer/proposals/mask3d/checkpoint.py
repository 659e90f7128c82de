"""Read a Mask3D checkpoint file into plain tensors and plain data, without running code from the file.

Official Mask3D checkpoints (``scannet200_val.ckpt``, ``scannet200_model.ckpt``) are PyTorch-Lightning 1.7
files written with torch 1.12, hydra-core 1.0.5 and omegaconf 2.0.x. Besides the tensors they pickle the
OmegaConf training config (``hyper_parameters["config"]``) and, in files that keep the training state, a
torch-1.12 ``OneCycleLR`` state whose ``anneal_func`` is a bound method, which pickles the scheduler and
its ``AdamW`` optimizer as objects. A plain ``torch.load`` would import omegaconf and torch.optim and run
their unpickling code; a malicious file could run anything.

So the file is read with ``torch.load(weights_only=True)`` and exactly the globals such files need
(:data:`ALLOW_LIST`) are allow-listed *by name* and mapped to small inert stand-ins defined here: the
unpickler builds :class:`PickledObject` records (constructor arguments and state, nothing else) instead
of the real classes, so omegaconf need not be installed and none of its code runs. The config records
are then turned into plain dicts and lists (:func:`config_to_plain`) and OmegaConf's ``${...}``
interpolations resolved (:func:`resolve_interpolations`). Any other global makes the load fail with a
:class:`Mask3DCheckpointError` naming it.

torch's weights-only unpickler cannot read the OneCycleLR state at all: the self-referencing bound method
pickles as ``REDUCE, POP, GET`` and that unpickler has no POP. Only for that case (an unsupported stack
opcode in a zip file) the file is read again through :class:`_RestrictedUnpickler`, Python's pure-Python
unpickler cut down to the same allow-list and the same rules, plus POP, POP_MARK and DUP.

Accepted layouts: a Lightning checkpoint (``{"state_dict": ..., "hyper_parameters": ..., ...}``), a
``{"state_dict": ...}`` dict, and a bare state dict (a dict of tensors). Zip-format files (every
``torch.save`` since torch 1.6) are memory-mapped, so a large file's tensors are not copied into RAM.
"""

from __future__ import annotations

import _compat_pickle
import copy
import logging
import pickle
import re
import struct
import types
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from scenegrep.indexer.weights import WeightsFileError, check_torch_file, safe_torch_load, sha256_file

log = logging.getLogger(__name__)


class Mask3DCheckpointError(WeightsFileError):
    """A file that cannot be read as a Mask3D checkpoint; ``str()`` is one line naming the file."""


# -- inert stand-ins for the allow-listed globals ------------------------------------------------------------


class PickledObject:
    """An inert record of an object the file pickled: the constructor arguments and the state, nothing else.

    The weights-only unpickler creates these with ``__new__(cls, *args)`` (pickle's NEWOBJ) and fills them
    with ``__setstate__(state)`` (BUILD); no method of the original class is ever looked up or run.

    Attributes:
        global_name: (class attribute) the pickled global this class stands in for.
        args: the NEWOBJ arguments (``()`` for every object Mask3D files hold).
        state: the BUILD state (for omegaconf and torch.optim objects: their ``__dict__``), or None.
    """

    global_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.global_name}>"


class PickledDictConfig(PickledObject):
    """omegaconf DictConfig: ``state["_content"]`` is a dict of child nodes, None, or an interpolation string."""

    global_name = "omegaconf.dictconfig.DictConfig"


class PickledListConfig(PickledObject):
    """omegaconf ListConfig: ``state["_content"]`` is a list of child nodes, None, or an interpolation string."""

    global_name = "omegaconf.listconfig.ListConfig"


class PickledAnyNode(PickledObject):
    """omegaconf AnyNode (an untyped leaf): ``state["_val"]`` is the value."""

    global_name = "omegaconf.nodes.AnyNode"


def _record_class(name: str) -> type[PickledObject]:
    """A PickledObject subclass for an allow-listed class whose content is never needed."""
    return type(f"Pickled{name.rsplit('.', 1)[1]}", (PickledObject,), {"global_name": name})


@dataclass(frozen=True)
class PickledGlobal:
    """A reference to a type that the file stores as a value (omegaconf's ``ref_type``, ``key_type``...).

    Not callable, so the unpickler cannot construct anything through it.
    """

    name: str


@dataclass(frozen=True)
class PickledAttribute:
    """What ``getattr(owner, name)`` was pickled for (a bound method), recorded instead of looked up."""

    owner: Any
    name: str


def _plain_defaultdict(default_factory: Any = None) -> dict:
    """``collections.defaultdict(factory)`` -> a plain dict: the factory is never called, and the weights-only
    unpickler only fills exact dicts (SETITEMS), which a real defaultdict is not."""
    return {}


@dataclass(frozen=True)
class AllowedGlobal:
    """One entry of the allow-list.

    Attributes:
        name: the global as the unpickler reports it (``module.qualname``, after pickle's Python 2 name
            mapping, so protocol 2's ``__builtin__ long`` is ``builtins.int``).
        standin: what the unpickler gets for it instead of the real object.
        why: where Mask3D files use it.
    """

    name: str
    standin: Any
    why: str


#: Exactly the globals Mask3D checkpoints pickle beyond what torch's weights-only loader allows by default
#: (tensors, OrderedDict, torch.device/dtypes). Measured with pickletools on Lightning-style checkpoints
#: holding real DictConfigs from omegaconf 2.0.6 and 2.4.0 (the same 10 config globals in both), and on a
#: torch-1.12-style OneCycleLR state dict (torch 1.12's ``lr_scheduler.py``: ``anneal_func`` is a bound method).
ALLOW_LIST: tuple[AllowedGlobal, ...] = (
    AllowedGlobal("omegaconf.dictconfig.DictConfig", PickledDictConfig,
                  "hyper_parameters['config'] and every nested mapping of it"),
    AllowedGlobal("omegaconf.listconfig.ListConfig", PickledListConfig, "every list in the config"),
    AllowedGlobal("omegaconf.nodes.AnyNode", PickledAnyNode, "every leaf value of the config"),
    AllowedGlobal("omegaconf.base.ContainerMetadata", _record_class("omegaconf.base.ContainerMetadata"),
                  "the _metadata of each DictConfig/ListConfig (dropped)"),
    AllowedGlobal("omegaconf.base.Metadata", _record_class("omegaconf.base.Metadata"),
                  "the _metadata of each leaf node (dropped)"),
    AllowedGlobal("typing.Any", PickledGlobal("typing.Any"), "metadata ref_type / key_type / element_type"),
    AllowedGlobal("builtins.dict", PickledGlobal("builtins.dict"),
                  "metadata ref_type/object_type of mappings; the factory of the defaultdicts below"),
    AllowedGlobal("builtins.list", PickledGlobal("builtins.list"), "ListConfig metadata object_type"),
    AllowedGlobal("builtins.int", PickledGlobal("builtins.int"), "ListConfig metadata key_type"),
    AllowedGlobal("collections.defaultdict", _plain_defaultdict,
                  "metadata resolver_cache; AdamW.state inside the pickled scheduler"),
    AllowedGlobal("builtins.getattr", PickledAttribute,
                  "lr_schedulers[i]['anneal_func']: torch 1.12 OneCycleLR's bound method _annealing_cos"),
    AllowedGlobal("torch.optim.lr_scheduler.OneCycleLR", _record_class("torch.optim.lr_scheduler.OneCycleLR"),
                  "the scheduler object that bound method belongs to"),
    AllowedGlobal("torch.optim.adamw.AdamW", _record_class("torch.optim.adamw.AdamW"),
                  "that scheduler's optimizer, pickled with it"),
)

_SAFE_GLOBALS = [(g.standin, g.name) for g in ALLOW_LIST]


# -- the fallback unpickler ----------------------------------------------------------------------------------

#: POP, POP_MARK, DUP: harmless stack opcodes that torch's weights-only unpickler does not implement.
_STACK_OPCODES = frozenset(op[0] for op in (pickle.POP, pickle.POP_MARK, pickle.DUP))
#: Exactly the opcodes torch's weights-only unpickler implements (torch 2.14), plus _STACK_OPCODES. Every
#: opcode that can create or call something is re-implemented in _RestrictedUnpickler with torch's rules.
_PLAIN_OPCODES = frozenset(op[0] for op in (
    pickle.PROTO, pickle.STOP, pickle.MARK, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3,
    pickle.NONE, pickle.NEWFALSE, pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT,
    pickle.EMPTY_SET, pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.LONG1, pickle.BINFLOAT,
    pickle.BINUNICODE, pickle.SHORT_BINSTRING, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT,
    pickle.LONG_BINPUT, pickle.BINPERSID, pickle.GLOBAL)) | _STACK_OPCODES


class _OpcodeTable(dict):
    """pickle._Unpickler's dispatch table; an opcode not in it is refused (torch's wording, so the
    error reads the same from both unpicklers)."""

    def __missing__(self, opcode: int) -> Any:
        raise pickle.UnpicklingError(f"Unsupported operand {opcode}")


def _fallback_globals() -> dict[str, Any]:
    """What torch's weights-only unpickler allows by default (tensor rebuilding, OrderedDict, dtypes...)
    plus :data:`ALLOW_LIST`: the same set the first attempt used."""
    from torch._weights_only_unpickler import _get_allowed_globals

    return {**_get_allowed_globals(), **{g.name: g.standin for g in ALLOW_LIST}}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, so single opcodes can be replaced
    """Python's unpickler reduced to torch's weights-only rules: globals only from :func:`_fallback_globals`;
    REDUCE / NEWOBJ only on those; BUILD only on tensors, OrderedDicts and :class:`PickledObject` records;
    item and append opcodes only on exact dicts and lists; any other opcode is refused."""

    dispatch = _OpcodeTable({op: fn for op, fn in pickle._Unpickler.dispatch.items() if op in _PLAIN_OPCODES})

    def __init__(self, file: Any, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._globals = _fallback_globals()
        self._allowed_ids = {id(v) for v in self._globals.values()}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:   # protocol 2's Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = self._globals.get(f"{module}.{name}", _MISSING)
        if found is _MISSING:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name} was not an allowed global")
        return found

    def _check_allowed(self, obj: Any, what: str) -> None:
        if id(obj) not in self._allowed_ids:
            raise pickle.UnpicklingError(f"refusing to {what} {type(obj).__name__} object {obj!r:.60}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self._check_allowed(self.stack[-1], "call")
        self.stack[-1] = self.stack[-1](*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_allowed(cls, "instantiate")
        self.append(torch.nn.Parameter(*args) if cls is torch.nn.Parameter else cls.__new__(cls, *args))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is torch.Tensor:
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter or isinstance(inst, PickledObject):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict:
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"refusing to BUILD a {type(inst).__name__} object")

    def _target(self, types: tuple[type, ...]) -> Any:
        if type(self.stack[-1]) not in types:
            raise pickle.UnpicklingError(f"refusing to add items to a {type(self.stack[-1]).__name__} object")
        return self.stack[-1]

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._target((dict, OrderedDict, Counter))[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, OrderedDict, Counter))
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,)).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,)).extend(items)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends


def _restricted_load_fn(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


#: The ``pickle_module`` torch.load gets for the fallback: only ``Unpickler`` and ``load`` are used.
_RESTRICTED_PICKLE = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=_restricted_load_fn,
                                           __name__="restricted_pickle")
_MISSING = object()


# -- the result ------------------------------------------------------------------------------------------------


@dataclass
class Mask3DCheckpointFile:
    """The parts of a Mask3D checkpoint file scenegrep uses.

    Attributes:
        path: the file.
        sha256: hex SHA-256 of the file's bytes.
        size_bytes: the file's size.
        layout: ``"lightning"`` (a PyTorch-Lightning checkpoint), ``"state_dict"`` (a dict with only a
            ``state_dict`` entry, possibly with ``hyper_parameters``) or ``"bare"`` (a dict of tensors).
        state_dict: every stored tensor under its stored key, in stored order (e.g.
            ``model.backbone.conv0p1s1.kernel``, ``criterion.empty_weight``); CPU, memory-mapped for zip files.
        hyper_parameters: ``hyper_parameters`` as plain dicts/lists/str/numbers/None with OmegaConf
            interpolations resolved (the values Mask3D saw), or None when the file has none.
        raw_hyper_parameters: the same data as stored, interpolation strings (``"${general.num_targets}"``)
            kept, like ``OmegaConf.to_container(cfg, resolve=False)``.
        unresolved: dotted paths in ``hyper_parameters`` of interpolations left as strings (custom resolvers
            such as ``${now:...}``, missing targets, cycles).
        epoch: Lightning's ``epoch`` or None.
        global_step: Lightning's ``global_step`` or None.
        lightning_version: ``pytorch-lightning_version`` or None.
        other_keys: top-level keys not read (``optimizer_states``, ``lr_schedulers``, ``callbacks``, ``loops``...).
        memory_mapped: whether the tensors are mapped from the file rather than read into memory.
    """

    path: Path
    sha256: str
    size_bytes: int
    layout: str
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: Any
    raw_hyper_parameters: Any
    unresolved: tuple[str, ...]
    epoch: int | None
    global_step: int | None
    lightning_version: str | None
    other_keys: tuple[str, ...]
    memory_mapped: bool


# -- reading ---------------------------------------------------------------------------------------------------

_LIGHTNING_KEYS = {"pytorch-lightning_version", "epoch", "global_step", "loops", "callbacks", "optimizer_states",
                   "lr_schedulers", "hparams_name"}


def read_checkpoint(path: Path | str, *, mmap: bool = True) -> Mask3DCheckpointFile:
    """Read a Mask3D checkpoint (or a bare state dict) safely: weights-only unpickling with :data:`ALLOW_LIST`.

    Args:
        path: the ``.ckpt`` / ``.pt`` / ``.pth`` file.
        mmap: memory-map zip-format files instead of reading every tensor into memory.

    Raises:
        Mask3DCheckpointError: the file is missing, a directory, empty, not a PyTorch checkpoint, damaged,
            needs a global outside the allow-list (named), has no state dict, or a state-dict value that
            is not a tensor.
    """
    path = Path(path)
    is_zip = check_torch_file(path, Mask3DCheckpointError)
    obj = _safe_load(path, mmap=mmap and is_zip)
    layout, sd, top = _split(path, obj)
    stored = top.get("hyper_parameters")
    try:
        raw = config_to_plain(stored, path)
        resolved, unresolved = _resolve_hyper_parameters(stored, raw)
    except RecursionError:   # the unpickler itself is iterative, so a file can nest data arbitrarily deep
        raise Mask3DCheckpointError(path, "hyper_parameters are nested too deeply for configuration data") from None
    if unresolved:
        log.info("%s: %d hyper-parameter interpolation(s) left as strings: %s", path, len(unresolved),
                 ", ".join(unresolved[:5]))
    used = {"state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version"}
    ckpt = Mask3DCheckpointFile(
        path=path, sha256=sha256_file(path), size_bytes=path.stat().st_size, layout=layout, state_dict=sd,
        hyper_parameters=resolved, raw_hyper_parameters=raw, unresolved=tuple(unresolved),
        epoch=_int_or_none(top.get("epoch")), global_step=_int_or_none(top.get("global_step")),
        lightning_version=v if isinstance(v := top.get("pytorch-lightning_version"), str) else None,
        other_keys=tuple(str(k) for k in top if k not in used), memory_mapped=mmap and is_zip,
    )
    log.debug("%s: %s checkpoint, %d tensors, sha256 %s", path, layout, len(sd), ckpt.sha256[:12])
    return ckpt


def _safe_load(path: Path, *, mmap: bool) -> Any:
    """:func:`safe_torch_load` with the allow-list mapped to the stand-ins; errors -> one line.

    Falls back to :class:`_RestrictedUnpickler` (same allow-list, same rules) only when torch's
    weights-only unpickler stops at a stack opcode it does not implement (POP, POP_MARK, DUP), as it
    does on a torch<2.3 OneCycleLR state (a self-referencing bound method pickles as REDUCE, POP, GET).
    """

    def fallback(e: pickle.UnpicklingError, is_zip: bool):
        m = re.search(r"Unsupported operand (\d+)", str(e))
        if not (m and int(m.group(1)) in _STACK_OPCODES and is_zip):
            return None
        log.info("%s: torch's weights-only unpickler lacks pickle opcode %r (as a torch<2.3 OneCycleLR "
                 "state needs); reading it with the restricted unpickler", path, bytes([int(m.group(1))]))
        return lambda: torch.load(str(path), map_location="cpu", weights_only=False, mmap=mmap,
                                  pickle_module=_RESTRICTED_PICKLE)

    return safe_torch_load(path, Mask3DCheckpointError, safe_globals=_SAFE_GLOBALS, mmap=mmap,
                           refused=lambda message, is_zip: _unpickling_problem(path, message, is_zip),
                           fallback=fallback)


def _unpickling_problem(path: Path, message: str, is_zip: bool) -> str:
    """One line for a weights-only refusal, naming the global(s) outside the allow-list."""
    names: list[str] = []
    if is_zip:
        try:  # a static scan of the pickle names every offending global, not just the first one
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError, struct.error):
            names = []   # the scan fails on the same malformed pickles; fall back to the message
    if not names:
        m = (re.search(r"GLOBAL (\S+) was not an allowed global", message)
             or re.search(r"unsupported GLOBAL (\S+) whose module", message))
        if m:
            name = m.group(1)
            names = [name if "." in name else f"builtins.{name}"]   # torch drops the "builtins." prefix
    if names:
        return (f"refusing to unpickle it: it needs Python global(s) outside the Mask3D checkpoint allow-list: "
                f"{', '.join(names)}")
    m = re.search(r"Unsupported operand (\d+)", message)
    if m:
        opcode = int(m.group(1))
        return f"is not a PyTorch checkpoint that can be read safely (pickle opcode {opcode} is not allowed)"
    detail = message.split("WeightsUnpickler error:")[-1] if "WeightsUnpickler error:" in message else message
    detail = next((line.strip() for line in detail.splitlines() if line.strip()), "unknown unpickling error")
    return f"cannot be unpickled safely: {detail}"


def _split(path: Path, obj: Any) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(layout, state_dict, top-level dict) of a loaded object."""
    if not isinstance(obj, dict):
        raise Mask3DCheckpointError(path, f"holds a {_kind(obj)}, not a checkpoint dict")
    if "state_dict" in obj:
        layout = "lightning" if _LIGHTNING_KEYS & set(obj) else "state_dict"
        return layout, _check_state_dict(path, obj["state_dict"], "state_dict"), obj
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "bare", _check_state_dict(path, obj, "the file"), {}
    keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
    raise Mask3DCheckpointError(path, f"has no state_dict (top-level keys: {keys or 'none'})")


def _check_state_dict(path: Path, sd: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict):
        raise Mask3DCheckpointError(path, f"state_dict is a {_kind(sd)}, not a dict of tensors")
    if not sd:
        raise Mask3DCheckpointError(path, "state_dict is empty")
    for k, v in sd.items():
        if not isinstance(k, str):
            raise Mask3DCheckpointError(path, f"{where} has a non-string key {k!r}")
        if not isinstance(v, torch.Tensor):
            raise Mask3DCheckpointError(path, f"state_dict entry {k!r} is a {_kind(v)}, not a tensor")
    return dict(sd)


def _kind(obj: Any) -> str:
    return obj.global_name if isinstance(obj, PickledObject) else type(obj).__name__


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# -- config records -> plain data ------------------------------------------------------------------------------


def config_to_plain(obj: Any, path: Path | str = "<checkpoint>") -> Any:
    """Stand-in OmegaConf records -> plain dicts/lists/leaf values, like ``OmegaConf.to_container(resolve=False)``.

    Plain dicts, lists, tuples, tensors and scalars pass through (converted inside). Any other pickled
    object (an optimizer, a type reference) is an error: hyper-parameters are configuration data.
    """
    active: set[int] = set()

    def conv(x: Any) -> Any:
        if isinstance(x, (str, int, float, bool, type(None), bytes, torch.Tensor)):
            return x
        if id(x) in active:
            raise Mask3DCheckpointError(path, "hyper_parameters contain a reference cycle")
        active.add(id(x))
        try:
            if isinstance(x, PickledAnyNode):
                return conv(_state(x, path).get("_val"))
            if isinstance(x, (PickledDictConfig, PickledListConfig)):
                content = _state(x, path).get("_content")
                expected = dict if isinstance(x, PickledDictConfig) else list
                if isinstance(content, (dict, list)) and not isinstance(content, expected):
                    raise Mask3DCheckpointError(path, f"a pickled {x.global_name} holds a {type(content).__name__}")
                return conv(content)   # the dict/list of children, or None / "???" / "${...}"
            if isinstance(x, dict):
                return {conv(k): conv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [conv(v) for v in x]
            if isinstance(x, tuple):
                return tuple(conv(v) for v in x)
        finally:
            active.discard(id(x))
        name = x.global_name if isinstance(x, PickledObject) else getattr(x, "name", type(x).__name__)
        raise Mask3DCheckpointError(path, f"hyper_parameters hold a pickled {name}, not configuration data")

    return conv(obj)


def _state(node: PickledObject, path: Path | str) -> dict:
    if not isinstance(node.state, dict):
        raise Mask3DCheckpointError(path, f"a pickled {node.global_name} has no state dict")
    return node.state


# -- OmegaConf interpolations ----------------------------------------------------------------------------------

_INTERP = re.compile(r"\$\{([^${}\\]*)\}")
_CYCLE = object()
#: Longest string an embedded interpolation may produce (a hostile config could double it at every step).
_MAX_INTERPOLATED = 100_000


def resolve_interpolations(config: Any, name: str = "") -> tuple[Any, list[str]]:
    """Resolve OmegaConf node interpolations in one plain config (the root they are relative to).

    Returns (resolved copy, dotted paths left unresolved, prefixed with ``name``). Handled: ``${a.b}``,
    ``${a.0}`` / ``${a[0]}`` from the root, relative ``${.x}`` / ``${..x}`` (omegaconf >= 2.1), chains,
    and interpolations embedded in longer strings (``saved/${general.experiment_name}``, joined with
    ``str()``). Resolvers (``${now:...}``, ``${env:HOME}``), escapes, nested ``${a.${b}}``, ``???`` and
    missing targets, and cycles are left as the stored string.
    """
    unresolved: list[str] = []
    if not isinstance(config, (dict, list)):
        return config, unresolved
    return _resolve_root(config, name, unresolved), unresolved


def _resolve_hyper_parameters(stored: Any, raw: Any) -> tuple[Any, list[str]]:
    """Lightning stores ``dict(hparams)``: each DictConfig entry (Mask3D: ``config``) is its own root;
    a DictConfig stored whole (``hparams_type``) is one root."""
    if isinstance(stored, dict) and isinstance(raw, dict):
        out, unresolved = {}, []
        for k, v in raw.items():
            if isinstance(stored[k], (PickledDictConfig, PickledListConfig)):
                v, bad = resolve_interpolations(v, str(k))
                unresolved += bad
            out[k] = v
        return out, unresolved
    return resolve_interpolations(raw) if isinstance(stored, PickledObject) else (raw, [])


def _resolve_root(root: Any, name: str, unresolved: list[str]) -> Any:
    """Resolve every interpolation under ``root``, each node once (memoised, so shared targets and long
    chains stay linear), with cycle detection."""
    done: dict[tuple, Any] = {}
    bad: set[tuple] = set()
    active: set[tuple] = set()

    def value_at(path: tuple) -> Any:
        if path in done:
            return done[path]
        if path in active:
            return _CYCLE
        active.add(path)
        node = get(path)
        if isinstance(node, dict):
            value: Any = {k: value_at(path + (k,)) for k in node}
        elif isinstance(node, list):
            value = [value_at(path + (i,)) for i in range(len(node))]
        elif isinstance(node, str) and "${" in node:
            got = interpolate(node, path)
            value = node if got is None else got[0]
            if got is None:
                bad.add(path)
                unresolved.append(".".join(str(p) for p in ((name,) if name else ()) + path))
        else:
            value = node
        active.discard(path)
        done[path] = value
        return value

    def interpolate(s: str, where: tuple) -> tuple[Any] | None:
        """(value,) or None when ``s`` cannot be resolved here."""
        if "\\${" in s or len(_INTERP.findall(s)) != s.count("${"):
            return None   # escapes or nested interpolations: leave to OmegaConf
        pieces, last = [], 0
        for m in _INTERP.finditer(s):
            target = lookup(m.group(1).strip(), where)
            value = _CYCLE if target is None else value_at(target)
            if value is _CYCLE or target in bad or (isinstance(value, str) and value == "???"):
                return None
            if m.span() == (0, len(s)):
                return (copy.deepcopy(value),)   # a whole-string interpolation keeps the target's type
            pieces += [s[last:m.start()], str(value)]
            last = m.end()
        out = "".join(pieces + [s[last:]])
        return (out,) if len(out) <= _MAX_INTERPOLATED else None

    def lookup(ref: str, where: tuple) -> tuple | None:
        if ":" in ref or not ref.strip("."):
            return None   # a resolver call, or an empty key
        dots = len(ref) - len(ref.lstrip("."))
        if dots > len(where):
            return None
        base = where[: len(where) - dots] if dots else ()   # ${a}: from the root; ${.a}: a sibling
        node, target = get(base), list(base)
        for k in (k for k in re.split(r"\.|\[|\]", ref.lstrip(".")) if k):
            if isinstance(node, dict) and k in node:
                node, key = node[k], k
            elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
                node, key = node[int(k)], int(k)
            else:
                return None
            target.append(key)
        return tuple(target)

    def get(path: tuple) -> Any:
        node = root
        for k in path:
            node = node[k]
        return node

    return value_at(())
