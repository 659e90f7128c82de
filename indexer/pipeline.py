"""The indexing job: scan folders -> masks -> mask features -> one committed store generation.

Each stage is a function of data (``read_scan``, ``Proposer.propose``, ``extract_features``); this
module only wires them, turns per-scan failures into outcomes (one bad scan never stops the others) and
batches finished scans so the vector index is rewritten once per batch, not once per scan.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from scenegrep.choices import DEFAULT_VOXEL_SIZE
from scenegrep.indexer.features.crops import MaskRefiner, ProjectedPointsRefiner
from scenegrep.indexer.features.encoders import ClipEncoder, EncoderSpec
from scenegrep.indexer.features.extractor import FeatureConfig, InstanceFeatures, extract_features
from scenegrep.indexer.proposals import make_proposer
from scenegrep.indexer.proposals.base import MaskFileError, MaskSet, Proposer
from scenegrep.indexer.scans import Scan, ScanError, detect_layout, read_scan
from scenegrep.storage.records import EncoderIdentity, InstanceEntry, ScanEntry

if TYPE_CHECKING:
    from scenegrep.indexer.settings import EncoderChoice, IndexSettings
    from scenegrep.storage.store import Store

log = logging.getLogger(__name__)

#: progress(scan_name, stage, done, total); stages: "read", "propose", "features", "store".
ProgressFn = Callable[[str, str, int, int], None]

#: Errors that make one scan fail without stopping the others: bad input, not bugs.
SCAN_ERRORS: tuple[type[Exception], ...] = (ScanError, MaskFileError)


@dataclass
class IndexOptions:
    """What ``index`` does for every scan.

    Attributes:
        proposer: a registered proposer name: "geometric" (default, no weights), "file" (import masks),
            "mask3d" (``proposer_options`` carry its checkpoint), ...
        masks: for "file": a mask file (one scan) or a folder holding ``<scan>.npz``,
            ``<scan>_masks.npz`` or ``<scan>_masks.pt`` per scan.
        proposer_options: extra keyword options for the proposer factory.
        features: the mask-feature settings (frame step, top-k, crop levels, ...).
        refiner: the 2D mask refiner, built once for the whole job (e.g. SAM, see :func:`build_refiner`);
            None = the projected visible pixels' box.
        preset: name of the feature preset the settings came from (recorded only).
        seed: the seed of the refiner's sampling (recorded; the refiner was built with it).
        force: re-index scans whose content hash is unchanged (replacing them).
        batch_size: scans committed together as one vector-index generation.
        voxel_size: metres; voxel of the cloud back-projected from 7-Scenes style frames (part of the
            scan's content hash, recorded in the catalog).
        depth_check: 7-Scenes style frames: keep only pixels a neighbouring frame's depth confirms.
    """

    proposer: str = "geometric"
    masks: Path | None = None
    proposer_options: dict = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    refiner: MaskRefiner | None = None
    preset: str | None = None
    seed: int = 0
    force: bool = False
    batch_size: int = 8
    voxel_size: float = DEFAULT_VOXEL_SIZE
    depth_check: bool = True


@dataclass
class ScanOutcome:
    """What happened to one input path.

    Attributes:
        path: the folder given by the user.
        name: the scan's name (None if it could not be read).
        status: "indexed", "unchanged" (same content hash, skipped) or "failed".
        instances: masks stored for the scan.
        searchable: masks that got a vector (visible in at least one frame).
        error: one-line reason when failed.
        note: extra information for the user (e.g. a scan without frames gets no vectors).
        seconds: wall time per stage.
    """

    path: Path
    name: str | None = None
    status: str = "failed"
    instances: int = 0
    searchable: int = 0
    error: str | None = None
    note: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def encoder_identity(spec: EncoderSpec) -> EncoderIdentity:
    """The storage layer's view of an encoder (storage never imports torch or open_clip)."""
    return EncoderIdentity(
        name=spec.model,
        pretrained=spec.pretrained,
        checkpoint_sha256=spec.checkpoint_sha256,
        dim=spec.dim,
        random_weights=spec.random_weights,
        details=spec.identity(),
    )


def proposer_for(scan: Scan, options: IndexOptions) -> Proposer:
    """The proposer ``options`` ask for, with ``--masks`` resolved to this scan's file for "file"."""
    if options.proposer != "file":
        return make_proposer(options.proposer, **options.proposer_options)
    if options.masks is None:
        raise MaskFileError(scan.root, "--proposer file needs --masks FILE_OR_FOLDER")
    path = Path(options.masks)
    if path.is_dir():
        for cand in (f"{scan.name}.npz", f"{scan.name}_masks.npz", f"{scan.name}_masks.pt",
                     f"{scan.root.name}.npz", f"{scan.root.name}_masks.pt"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise MaskFileError(path, f"no mask file for scan {scan.name!r} (looked for {scan.name}.npz, "
                                      f"{scan.name}_masks.npz, {scan.name}_masks.pt)")
    return make_proposer("file", path=path, **options.proposer_options)


def build_refiner(sam_model: str | None, sam_checkpoint: Path | str | None, *, device: str = "cpu",
                  precision: str = "fp32", seed: int = 0, rounds: int = 10, points: int = 5) -> MaskRefiner | None:
    """The job's 2D mask refiner: SAM from ``sam_checkpoint`` (loaded once here, reused for every scan),
    or None (the projected-points box) without a checkpoint.

    Raises:
        ValueError: a checkpoint without a model name.
        scenegrep.indexer.weights.WeightsFileError: the checkpoint cannot be used (one line naming the file).
    """
    if sam_checkpoint is None:
        return None
    if sam_model is None:
        raise ValueError(f"{sam_checkpoint}: a SAM checkpoint needs its model name (vit_b, vit_l or vit_h)")
    from scenegrep.indexer.features.sam import load_sam_refiner  # imports segment_anything and torch

    return load_sam_refiner(sam_model, sam_checkpoint, device=device, precision=precision, seed=seed,
                            rounds=rounds, points=points)


def load_job(settings: "IndexSettings", choice: "EncoderChoice",
             encoder: ClipEncoder | None = None) -> tuple[ClipEncoder, IndexOptions]:
    """The models and options of a job, loaded once (by :meth:`scenegrep.Collection.index`, and by every
    Ray worker).

    SAM is loaded first, so a bad SAM checkpoint fails in a second, before CLIP (possibly ViT-L); CLIP is
    ``choice`` (:meth:`IndexSettings.encoder_choice`), unless ``encoder`` already is that model.

    Raises:
        WeightsFileError / EncoderWeightsError: a checkpoint or CLIP's weights are unusable.
    """
    from scenegrep.indexer.features.encoders import load_encoder

    refiner = build_refiner(settings.sam_model, settings.sam_checkpoint, device=settings.device,
                            precision=settings.precision, seed=settings.seed,
                            rounds=settings.preset.sam_rounds, points=settings.preset.sam_points)
    if encoder is None or (encoder.spec.model, encoder.spec.pretrained) != (choice.model, choice.pretrained):
        encoder = load_encoder(choice.model, choice.pretrained, device=settings.device,
                               allow_random_weights=choice.allow_random_weights, precision=settings.precision)
    options = IndexOptions(proposer=settings.proposer, masks=settings.masks,
                           proposer_options=settings.proposer_options(sam_refiner=refiner),
                           features=settings.feature_config(), refiner=refiner, preset=settings.preset.name,
                           seed=settings.seed, force=settings.force, batch_size=settings.batch_size,
                           voxel_size=settings.voxel_size, depth_check=settings.depth_check)
    return encoder, options


def _jsonable(value: Any) -> Any:
    """``value`` with paths, tuples and numpy scalars turned into JSON types (catalog info is JSON)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def component_identity(obj: Any) -> dict[str, Any]:
    """What the catalog records about a proposer or refiner: its ``identity()`` when it has one, else its
    name."""
    ident = obj.identity() if callable(getattr(obj, "identity", None)) else {}
    return _jsonable({"name": getattr(obj, "name", type(obj).__name__), **ident})


def job_info(options: IndexOptions, encoder: Any, proposer: Any | None = None) -> dict[str, Any]:
    """The per-job part of every scan's catalog info: how its masks and vectors were made."""
    refiner = options.refiner or ProjectedPointsRefiner()
    info: dict[str, Any] = {  # "mask_method_2d" itself is written by build_entries
        "mask_method_2d_identity": component_identity(refiner),
        "preset": options.preset,
        "features": _jsonable(asdict(options.features)),
        "precision": getattr(encoder, "precision", "fp32"),
        "device": str(getattr(encoder, "device", "cpu")),
        "seed": int(options.seed),
        "voxel_size": float(options.voxel_size),
        "depth_check": bool(options.depth_check),
    }
    if proposer is not None:
        info["proposer_identity"] = component_identity(proposer)
    return info


def build_entries(scan: Scan, masks: MaskSet, feats: InstanceFeatures, proposer: str,
                  encoder: EncoderSpec, mask_method: str,
                  extra_info: Mapping[str, Any] | None = None) -> tuple[ScanEntry, list[InstanceEntry]]:
    """Turn one scan's results into storage records (vectors only for visible masks).

    Vectors are stored as unit directions: with ``renormalize=False`` (OpenMask3D's raw mean, norm < 1)
    the direction is what cosine search and OpenMask3D's own scoring use. ``extra_info`` (e.g.
    :func:`job_info`) is merged into the scan's catalog info.
    """
    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v.astype(np.float64))).astype(np.float32)

    instances = [
        InstanceEntry(
            point_indices=masks[i],
            score=float(masks.scores[i]),
            vector=unit(feats.vectors[i]) if feats.valid[i] else None,
            thumbnail=feats.thumbnails[i],
            best_frame=int(feats.best_frame[i]) if feats.best_frame[i] >= 0 else None,
        )
        for i in range(len(masks))
    ]
    entry = ScanEntry(
        name=scan.name,
        source_path=str(scan.root.resolve()),
        content_hash=scan.content_hash,
        layout=scan.layout,
        points=scan.points,
        colors=scan.colors,
        frame_count=len(scan.frames),
        tags=list(scan.tags),
        info={
            **(extra_info or {}),
            "proposer": proposer,
            "mask_method_2d": mask_method,
            "frames_used": int(feats.stats.get("frames_used", 0)),
            "clip_crops": int(feats.stats.get("clip_crops", 0)),
            "sam_image_encodings": int(feats.stats.get("sam_image_encodings", 0)),
            "sam_fallbacks": int(feats.stats.get("sam_fallbacks", 0)),
            "encoder": encoder.model,
            # which proposer made each mask (a union's members), in mask order
            **({"mask_sources": [str(s) for s in masks.sources]} if getattr(masks, "sources", None) is not None
               else {}),
        },
    )
    return entry, instances


def scan_folders(paths: Sequence[Path | str]) -> list[Path]:
    """The scan folders that ``paths`` name: a folder that is a scan is one scan; a folder that is not
    (a collection) stands for every scan folder directly inside it, in name order. Anything else is kept
    as given, so reading it reports what is wrong with it."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not _is_scan(path):
            children = sorted((c for c in path.iterdir() if c.is_dir() and _is_scan(c)), key=lambda c: c.name)
            if children:
                out.extend(children)
                continue
        out.append(path)
    return out


def nothing_to_index(paths: Sequence[Path | str]) -> list[ScanOutcome] | None:
    """One failed outcome per scan folder ``paths`` name when none of them is a scan (checked from the file
    names only, so a job of wrong paths fails before any model is loaded); None when at least one is."""
    folders = scan_folders(paths)
    failed = []
    for path in folders:
        try:
            detect_layout(path)
        except ScanError as e:
            failed.append(ScanOutcome(path=path, error=str(e)))
    return failed if len(failed) == len(folders) else None


def _is_scan(folder: Path) -> bool:
    try:
        detect_layout(folder)
    except ScanError:
        return False
    return True


class ScanIndexer:
    """The per-scan work of a job, with its models loaded once: read a scan folder, propose masks, extract
    their features and turn them into storage records.

    The sequential :func:`index_paths` runs one; every Ray worker (:mod:`scenegrep.indexer.distributed`)
    holds one, so both paths compute a scan the same way, bit for bit. It never touches the store: what to
    index and when to commit is the job's one writer's (:class:`ScanCommitter`).

    Args:
        encoder: the loaded CLIP encoder.
        options: the job; a model proposer loads its checkpoint here, once.
    """

    def __init__(self, encoder: ClipEncoder, options: IndexOptions):
        self.encoder = encoder
        self.options = options
        # "file" resolves a mask file per scan; every other proposer is one object for the whole job.
        self.shared_proposer = (None if options.proposer == "file"
                                else make_proposer(options.proposer, **options.proposer_options))
        self.refiner = options.refiner or ProjectedPointsRefiner()
        self.base_info = job_info(options, encoder, self.shared_proposer)

    def read(self, path: Path, progress: ProgressFn | None = None) -> tuple[Scan, float]:
        """(the scan at ``path``, seconds it took). Raises ScanError for bad input."""
        report = progress or ignore_progress
        t0 = time.perf_counter()
        report(path.name, "read", 0, 1)
        scan = read_scan(path, voxel_size=self.options.voxel_size, depth_check=self.options.depth_check)
        report(scan.name, "read", 1, 1)
        return scan, time.perf_counter() - t0

    def process(self, scan: Scan, progress: ProgressFn | None = None) -> "ScanResult":
        """Propose and featurise one read scan. Raises ScanError / MaskFileError for bad input."""
        report = progress or ignore_progress
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        proposer = self.shared_proposer if self.shared_proposer is not None else proposer_for(scan, self.options)
        report(scan.name, "propose", 0, 1)
        masks = proposer.propose(scan)
        seconds["propose"] = time.perf_counter() - t0
        report(scan.name, "propose", 1, 1)

        t0 = time.perf_counter()
        feats = extract_features(
            scan, masks, self.encoder, self.options.features,
            progress=lambda stage, done, total, _n=scan.name: report(_n, f"features:{stage}", done, total),
            refiner=self.refiner,
        )
        seconds["features"] = time.perf_counter() - t0

        info = self.base_info
        if self.shared_proposer is None:
            info = {**self.base_info, "proposer_identity": component_identity(proposer)}
        entry, instances = build_entries(scan, masks, feats, proposer.name, self.encoder.spec,
                                         mask_method=self.refiner.name, extra_info=info)
        searchable = int(np.count_nonzero(feats.valid))
        note = None
        if not scan.frames:
            note = "no RGB-D frames: masks stored but not searchable until views exist"
        elif searchable < len(instances):
            note = f"{len(instances) - searchable} masks never visible: not searchable"
        return ScanResult(entry, instances, searchable, note, seconds)


@dataclass
class ScanResult:
    """One scan read, proposed and featurised: what its commit needs (numpy arrays, bytes and plain values,
    so a Ray worker can hand it to the driver).

    Attributes:
        entry: the scan's record (points, colours, catalog info).
        instances: one record per mask, in mask order.
        searchable: masks that got a vector.
        note: extra information for the user (see :attr:`ScanOutcome.note`).
        seconds: wall time of "propose" and "features".
    """

    entry: ScanEntry
    instances: list[InstanceEntry]
    searchable: int
    note: str | None
    seconds: dict[str, float]


#: The ``scan`` argument of the job-wide progress event ``progress(ALL_SCANS, "scans", done, total)``,
#: sent each time a scan is finished (indexed, unchanged or failed). No scan has an empty name.
ALL_SCANS = ""


class ScanCommitter:
    """The one writer of a job: decides which read scans need indexing and commits finished ones.

    A scan name seen twice fails the second one;
    a scan whose content hash is unchanged is skipped (unless ``force``); finished scans are committed
    with :meth:`Store.add_scans` in batches of ``options.batch_size`` (one commit point per batch, so a scan
    is visible whole or not at all).

    Args:
        store: the open, writable store.
        identity: the job's encoder (checked against the catalog by the caller); None until known (a Ray
            job learns it from its first worker), but set before the first commit.
        options: the job (``force``, ``batch_size``).
        folders: the job's scan folders (:func:`scan_folders`); :attr:`outcomes` has one per folder.
        progress: the job's progress callback.
    """

    def __init__(self, store: "Store", identity: EncoderIdentity | None, options: IndexOptions,
                 folders: Sequence[Path], progress: ProgressFn | None = None):
        self.store = store
        self.identity = identity
        self.options = options
        self.report = progress or ignore_progress
        #: one per folder, in input order (failed until proven otherwise)
        self.outcomes: list[ScanOutcome] = [ScanOutcome(path=p) for p in folders]
        self._pending: list[tuple[ScanOutcome, ScanResult, bool]] = []
        self._replace: dict[str, bool] = {}
        self._seen: set[str] = set()
        self._done = 0

    def admit(self, outcome: ScanOutcome, scan_name: str, content_hash: str) -> bool:
        """Whether the read scan ``scan_name`` needs indexing; False = unchanged (``outcome`` says so).

        Raises:
            ScanError: the name was already given in this job.
        """
        outcome.name = scan_name
        if scan_name in self._seen:
            raise ScanError(outcome.path, f"scan name {scan_name!r} given twice in one run")
        self._seen.add(scan_name)
        existing = self.store.find_scan(scan_name)
        # the store also says 'changed' when the scan's stored point file is damaged: re-indexing repairs it
        if existing is not None and self.store.is_unchanged(scan_name, content_hash) and not self.options.force:
            outcome.status = "unchanged"
            outcome.instances, outcome.searchable = existing.instances, existing.searchable
            outcome.note = "unchanged since last index (use --force to re-index)"
            self._finished()
            return False
        self._replace[scan_name] = existing is not None
        return True

    def release(self, outcome: ScanOutcome) -> None:
        """Forget that ``outcome``'s scan was admitted (it is read again by another try)."""
        if outcome.name is not None:
            self._seen.discard(outcome.name)
            self._replace.pop(outcome.name, None)
        outcome.name = None
        outcome.seconds.clear()

    def add(self, outcome: ScanOutcome, result: ScanResult) -> None:
        """Queue a finished scan; commit the batch once it is full."""
        outcome.seconds.update(result.seconds)
        outcome.instances = len(result.instances)
        outcome.searchable = result.searchable
        outcome.note = result.note
        self._pending.append((outcome, result, self._replace[outcome.name or ""]))
        if len(self._pending) >= self.options.batch_size:
            self.flush()

    def fail(self, outcome: ScanOutcome, error: Exception | str) -> None:
        """Mark one scan failed (the others go on)."""
        outcome.status = "failed"
        outcome.error = str(error)
        log.warning("%s", outcome.error)
        self._finished()

    def flush(self) -> None:
        """Commit the queued scans."""
        if not self._pending:
            return
        assert self.identity is not None, "the job's encoder is known before anything is committed"
        # Replacements and fresh scans go in separate batches: add_scans takes one replace flag.
        for replace in (False, True):
            group = [p for p in self._pending if p[2] == replace]
            if not group:
                continue
            t0 = time.perf_counter()
            self.store.add_scans([(r.entry, r.instances) for _, r, _ in group], self.identity, replace=replace)
            dt = time.perf_counter() - t0
            for outcome, _, _ in group:
                outcome.status = "indexed"
                outcome.seconds["store"] = dt / len(group)
                self.report(outcome.name or "", "store", 1, 1)
                self._finished()
        self._pending.clear()

    def _finished(self) -> None:
        self._done += 1
        self.report(ALL_SCANS, "scans", self._done, len(self.outcomes))


def ignore_progress(scan: str, stage: str, done: int, total: int) -> None:
    """A :data:`ProgressFn` that draws nothing."""


def index_paths(
    paths: Sequence[Path | str],
    store: "Store",
    encoder: ClipEncoder,
    options: IndexOptions | None = None,
    progress: ProgressFn | None = None,
) -> list[ScanOutcome]:
    """Index every scan folder in ``paths`` into ``store``, one scan after the other; return one outcome
    per scan folder (a folder of scan folders stands for each of them, see :func:`scan_folders`).

    The encoder is checked against the catalog and the proposer is built (a model proposer loads its
    checkpoint once for the whole job) before any scan is read, so an
    :class:`scenegrep.storage.EncoderMismatchError` or a bad checkpoint's error propagates. A scan with bad input
    fails alone; finished scans are committed in batches of ``options.batch_size``.
    """
    options = options or IndexOptions()
    identity = encoder_identity(encoder.spec)
    store.check_encoder(identity)
    indexer = ScanIndexer(encoder, options)
    committer = ScanCommitter(store, identity, options, scan_folders(paths), progress)
    for outcome in committer.outcomes:
        try:
            scan, outcome.seconds["read"] = indexer.read(outcome.path, progress)
            if committer.admit(outcome, scan.name, scan.content_hash):
                committer.add(outcome, indexer.process(scan, progress))
        except SCAN_ERRORS as e:
            committer.fail(outcome, e)
    committer.flush()
    return committer.outcomes
