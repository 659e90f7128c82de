"""Indexing on Ray: scans fanned out to worker actors, committed by one writer (this process).

Each worker is a Ray actor holding one :class:`~scenegrep.indexer.pipeline.ScanIndexer`: it loads the
job's models once (CLIP, and SAM / Mask3D when the job asks for them, built from the picklable
:class:`~scenegrep.indexer.settings.IndexSettings`) and then indexes whole scans, one at a time: read,
propose, extract features. A finished scan travels back as its storage records (numpy arrays and bytes);
the driver is the job's only writer (:class:`~scenegrep.indexer.pipeline.ScanCommitter`), so a scan is
committed once, whole, in the same batches as a sequential run.

Per scan the driver asks the worker to read it first (name and content hash come back), decides as the
sequential path does (a name given twice fails; an unchanged scan is skipped), then asks the same worker
to finish it. A worker that dies (killed, out of memory, a crashed node) is replaced by a fresh one and
the scan it held goes back to the queue, up to ``max_attempts`` tries in all; then the scan fails with the
reason. A scan with bad input fails alone, as in a sequential run, and the outcomes have the same shape.

Progress: the driver reports each scan's stage boundaries as the workers' calls return ("read",
"propose", "features", "store"). The end of "propose" and the features stage's own events
("features:<step>", done, total: the same as a sequential run's) come from inside the workers through a
Ray queue that the driver drains between calls and at least every ``PROGRESS_EVERY`` seconds; a worker
sends the first and last event of each step and at most one in between per ``PROGRESS_EVERY``, and drops
events rather than wait when the queue is full.

``ray`` is imported only here, and only when a job asks for Ray.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from scenegrep.errors import ScenegrepError
from scenegrep.indexer.pipeline import (
    SCAN_ERRORS,
    IndexOptions,
    ProgressFn,
    ScanCommitter,
    ScanIndexer,
    ScanOutcome,
    ScanResult,
    ignore_progress,
    encoder_identity,
    load_job,
    scan_folders,
)
from scenegrep.indexer.scans import ScanError

if TYPE_CHECKING:
    from scenegrep.indexer.settings import EncoderChoice, IndexSettings
    from scenegrep.storage.records import EncoderIdentity
    from scenegrep.storage.store import Store

__all__ = ["RayIndexError", "ScanWorker", "index_paths_ray", "MAX_ATTEMPTS"]

log = logging.getLogger(__name__)

#: Tries per scan when workers die while holding it (the first try included).
MAX_ATTEMPTS = 3
#: Object store of a Ray instance started here: finished scans pass through it one at a time per worker.
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
#: Seconds: the driver drains the workers' progress events at least this often, and a worker sends at most
#: one intermediate event per feature step this often.
PROGRESS_EVERY = 0.5
#: Progress events the queue holds before workers drop theirs.
PROGRESS_QUEUE = 10_000


class RayIndexError(ScenegrepError):
    """A Ray job that cannot go on (Ray missing, no worker can start, workers disagree on the encoder)."""


@dataclass(frozen=True)
class _Failed:
    """A scan (or a worker's setup) that failed on purpose in a worker: the one-line reason."""

    error: str


@dataclass(frozen=True)
class _Header:
    """What the driver needs from a read scan to decide whether to index it."""

    name: str
    content_hash: str
    seconds: float


class ScanWorker:
    """The body of one Ray actor: the job's models, loaded once by :meth:`setup`, and the scan read last.

    Args:
        settings: the job (picklable; every model is built from it inside the actor).
        choice: the CLIP model the driver resolved (the home's own encoder when none was named).
    """

    def __init__(self, settings: "IndexSettings", choice: "EncoderChoice"):
        self.settings = settings
        self.choice = choice
        self.indexer: ScanIndexer | None = None
        self.scan: Any = None

    def setup(self) -> "EncoderIdentity | _Failed":
        """Load the models; returns the encoder's identity (the driver checks it against the catalog)."""
        import torch

        # Ray sets OMP_NUM_THREADS to the actor's CPUs; torch follows it explicitly, whatever it read first.
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        try:
            encoder, options = load_job(self.settings, self.choice)
            self.indexer = ScanIndexer(encoder, options)
        except ScenegrepError as e:  # sent as text: a typed error's own arguments need not survive pickling
            return _Failed(str(e))
        return encoder_identity(encoder.spec)

    def read(self, path: str) -> "_Header | _Failed":
        """Read the scan at ``path`` and keep it for :meth:`process`."""
        assert self.indexer is not None, "setup() first"
        self.scan = None
        try:
            self.scan, seconds = self.indexer.read(Path(path))
        except SCAN_ERRORS as e:
            return _Failed(str(e))
        return _Header(self.scan.name, self.scan.content_hash, seconds)

    def process(self, events: Any = None) -> "ScanResult | _Failed":
        """Propose and featurise the scan read last; returns its records. ``events``: the driver's progress
        queue (``ray.util.queue.Queue``), which gets the features stage's events (module doc)."""
        assert self.indexer is not None and self.scan is not None, "read() first"
        scan, self.scan = self.scan, None
        try:
            return self.indexer.process(scan, _Forward(events) if events is not None else None)
        except SCAN_ERRORS as e:
            return _Failed(str(e))


class _Forward:
    """A worker's progress callback: the end of "propose" and the features stage's events into the
    driver's queue, throttled per step (the first and last of each always), dropped when the queue is
    full; the other stage boundaries are the driver's to report."""

    def __init__(self, queue: Any):
        self.queue = queue
        self.last: dict[str, float] = {}

    def __call__(self, scan: str, stage: str, done: int, total: int) -> None:
        from ray.util.queue import Full

        if not (stage.startswith("features:") or (stage == "propose" and done == total)):
            return
        now = time.monotonic()
        if 0 < done < total and now - self.last.get(stage, -PROGRESS_EVERY) < PROGRESS_EVERY:
            return
        self.last[stage] = now
        try:
            self.queue.put_nowait((scan, stage, done, total))
        except Full:
            pass


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayIndexError("ray is not installed: pip install 'scenegrep[ray]'", "--ray") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Join or start Ray for ``address``; True when this call started it (and should shut it down).

    An already initialised Ray (a notebook, a test) is used as it is.
    """
    if ray.is_initialized():
        log.info("using the Ray instance this process already joined")
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    if address == "local":
        # a fresh instance on this machine (its CPUs and GPUs), never a cluster found by chance
        kwargs.update(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        kwargs["address"] = address
        kwargs.pop("include_dashboard")  # a setting of new instances only
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayIndexError(f"cannot join Ray: {e}", address) from None
    return True


@dataclass
class _Sizing:
    """How the actors are sized: how many, and what each reserves."""

    workers: int
    cpus: float
    gpus: float


def _sizing(ray: Any, settings: "IndexSettings", scans: int) -> _Sizing:
    """Workers and their reservations from the cluster's resources (never more workers than scans)."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    per_gpu = float(settings.gpus_per_worker or 0.0)
    if per_gpu > 0 and gpus < per_gpu:
        raise RayIndexError(f"each worker needs {per_gpu:g} GPU(s) but the Ray cluster has {gpus:g}",
                            "--gpus-per-worker")
    workers = settings.workers or (int(gpus // per_gpu) if per_gpu > 0 else int(cpus))
    workers = max(1, min(workers, scans))
    # On one machine the CPUs are split between the workers (torch threads follow); on a cluster one CPU
    # each, which every node can place.
    single_node = len([n for n in ray.nodes() if n.get("Alive")]) <= 1
    per_cpu = max(1, int(cpus // workers)) if single_node else 1
    return _Sizing(workers, float(per_cpu), per_gpu)


def _portable(settings: "IndexSettings", choice: "EncoderChoice") -> tuple["IndexSettings", "EncoderChoice"]:
    """Paths made absolute: a worker's working directory is not the driver's."""
    def absolute(p: Path | None) -> Path | None:
        return None if p is None else Path(p).expanduser().resolve()

    settings = dataclasses.replace(settings, masks=absolute(settings.masks),
                                   checkpoint=absolute(settings.checkpoint),
                                   sam_checkpoint=absolute(settings.sam_checkpoint))
    for prefix in ("local-dir:",):
        if choice.model.startswith(prefix):
            folder = Path(choice.model[len(prefix):]).expanduser().resolve()
            choice = dataclasses.replace(choice, model=f"{prefix}{folder}")
    return settings, choice


class _Driver:
    """The job on Ray: a pool of workers, a queue of scans, one committer."""

    def __init__(self, ray: Any, store: "Store", settings: "IndexSettings", choice: "EncoderChoice",
                 committer: ScanCommitter, sizing: _Sizing, worker_class: type, max_attempts: int,
                 progress: ProgressFn):
        self.ray = ray
        self.store = store
        self.committer = committer
        self.report = progress
        self.max_attempts = max_attempts
        self.actor_class = ray.remote(worker_class).options(num_cpus=sizing.cpus, num_gpus=sizing.gpus,
                                                            max_restarts=0, max_task_retries=0)
        self.args = (settings, choice)
        self.size = sizing.workers
        self.identity: EncoderIdentity | None = None
        self.queue: collections.deque[int] = collections.deque(range(len(committer.outcomes)))
        self.attempts: collections.Counter[int] = collections.Counter()
        self.inflight: dict[Any, tuple[str, Any, int]] = {}  # ref -> (call, actor, outcome index)
        self.idle: list[Any] = []
        self.actors: list[Any] = []
        self.setup_deaths = 0
        self.proposed: set[str] = set()  # scans whose worker reported the end of "propose"
        from ray.util.queue import Queue

        # num_cpus=0: an actor asks for one CPU to be scheduled, which the workers may all hold
        self.events = Queue(maxsize=PROGRESS_QUEUE, actor_options={"num_cpus": 0})

    # -- workers ---------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        actor = self.actor_class.remote(*self.args)
        self.actors.append(actor)
        self.inflight[actor.setup.remote()] = ("setup", actor, -1)

    def _retire(self, actor: Any) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Stop every worker (their models go with them)."""
        for actor in list(self.actors):
            self._retire(actor)
        self.events.shutdown()

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.size):
            self._spawn()
        while self.queue or any(call != "setup" for call, _, _ in self.inflight.values()):
            while self.queue and self.idle:
                self._submit_read(self.idle.pop(), self.queue.popleft())
            if not self.inflight:  # cannot happen: a dead worker is always replaced
                break
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=PROGRESS_EVERY)
            self._drain()  # before the call's result: a scan's feature events come before its "features" end
            if not ready:
                continue
            ref = ready[0]
            call, actor, index = self.inflight.pop(ref)
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as e:
                self._worker_died(call, actor, index, e)
                continue
            except self.ray.exceptions.RayTaskError as e:  # a bug in a worker: it surfaces, as it would here
                raise e.as_instanceof_cause() from None
            getattr(self, f"_on_{call}")(actor, index, value)

    def _drain(self) -> None:
        """Report the workers' queued progress events, oldest first."""
        waiting = self.events.qsize()
        if waiting:
            for event in self.events.get_nowait_batch(waiting):
                if event[1] == "propose":
                    self.proposed.add(event[0])
                self.report(*event)

    def _submit_read(self, actor: Any, index: int) -> None:
        outcome = self.committer.outcomes[index]
        self.attempts[index] += 1
        self.report(outcome.path.name, "read", 0, 1)
        # absolute: a worker's working directory is not this one
        path = str(Path(outcome.path).expanduser().absolute())
        self.inflight[actor.read.remote(path)] = ("read", actor, index)

    def _on_setup(self, actor: Any, index: int, value: "EncoderIdentity | _Failed") -> None:
        if isinstance(value, _Failed):
            raise RayIndexError(value.error)
        if self.identity is None:
            self.store.check_encoder(value)  # before any scan is read: EncoderMismatchError propagates
            self.identity = self.committer.identity = value
            if value.random_weights:
                log.warning("CLIP %s is running with RANDOM weights: vectors and scores are meaningless",
                            value.name)
        elif value != self.identity:
            raise RayIndexError(f"workers loaded different encoders: {self.identity.describe()} and "
                                f"{value.describe()} (the same weights must be at the same path on every node)")
        self.idle.append(actor)

    def _on_read(self, actor: Any, index: int, value: "_Header | _Failed") -> None:
        outcome = self.committer.outcomes[index]
        if isinstance(value, _Failed):
            self.committer.fail(outcome, value.error)
            self.idle.append(actor)
            return
        outcome.seconds["read"] = value.seconds
        self.report(value.name, "read", 1, 1)
        try:
            wanted = self.committer.admit(outcome, value.name, value.content_hash)
        except ScanError as e:
            self.committer.fail(outcome, e)
            wanted = False
        if not wanted:
            self.idle.append(actor)
            return
        self.report(value.name, "propose", 0, 1)
        self.inflight[actor.process.remote(self.events)] = ("process", actor, index)

    def _on_process(self, actor: Any, index: int, value: "ScanResult | _Failed") -> None:
        outcome = self.committer.outcomes[index]
        self.idle.append(actor)
        if isinstance(value, _Failed):
            self.committer.fail(outcome, value.error)
            return
        if (outcome.name or "") not in self.proposed:  # its event was dropped (queue full)
            self.report(outcome.name or "", "propose", 1, 1)
        self.report(outcome.name or "", "features", 1, 1)
        self.committer.add(outcome, value)

    def _worker_died(self, call: str, actor: Any, index: int, error: Exception) -> None:
        reason = _reason(error)
        self._retire(actor)
        if call == "setup":
            # loading the models killed the process (out of memory?): bounded, then the job stops
            self.setup_deaths += 1
            if self.setup_deaths >= self.max_attempts * self.size:
                raise RayIndexError(f"Ray workers died {self.setup_deaths} times while loading the models "
                                    f"(last: {reason})")
            log.warning("a Ray worker died while loading the models (%s); starting another", reason)
            if self.queue:
                self._spawn()
            return
        outcome = self.committer.outcomes[index]
        if self.attempts[index] < self.max_attempts:
            log.warning("%s: its Ray worker died (%s); retrying on a fresh worker (try %d of %d)",
                        outcome.path, reason, self.attempts[index] + 1, self.max_attempts)
            self.committer.release(outcome)  # read and admitted again by the next try
            self.queue.appendleft(index)
        else:
            self.committer.fail(outcome, ScanError(
                outcome.path, f"its Ray worker died on each of {self.attempts[index]} tries "
                              f"(last: {reason})"))
        if self.queue:  # a replacement only when there is work for it
            self._spawn()


def _reason(error: Exception) -> str:
    """One line on why an actor died (Ray's own message is a paragraph)."""
    text = " ".join(str(error).split())
    for marker in ("The actor died because", "The actor is dead because", "Worker exit type"):
        at = text.find(marker)
        if at >= 0:
            return text[at:at + 200].rstrip(". ")
    return f"{type(error).__name__}: {text[:200]}"


def index_paths_ray(
    paths: Sequence[Path | str],
    store: "Store",
    settings: "IndexSettings",
    choice: "EncoderChoice",
    progress: ProgressFn | None = None,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    worker_class: type = ScanWorker,
) -> list[ScanOutcome]:
    """Index every scan folder in ``paths`` into ``store`` on Ray workers; one outcome per scan folder,
    as :func:`scenegrep.indexer.pipeline.index_paths` returns them.

    Args:
        settings: the job; ``settings.ray_address`` says which Ray (``local``, ``auto``, ``ray://H:P``),
            ``workers`` and ``gpus_per_worker`` size the actors. An already initialised Ray is used as it is.
        choice: the CLIP model (:meth:`IndexSettings.encoder_choice`).
        progress: ``progress(scan, stage, done, total)`` for the stages as workers finish them
            ("read", "propose", "features", "store"), the features stage's steps from inside the workers
            ("features:<step>", module doc), and ``progress("", "scans", done, total)``.
        max_attempts: tries per scan when workers die while holding it.
        worker_class: :class:`ScanWorker` or a subclass (the tests use one that dies on a marked scan).

    Raises:
        RayIndexError: Ray is missing or cannot be joined, or no worker can start. Errors of the models'
        setup (weights, checkpoints) and :class:`scenegrep.storage.EncoderMismatchError` propagate, as in
        a sequential run.
    """
    ray = _import_ray()
    report = progress or ignore_progress
    folders = scan_folders(paths)
    settings, choice = _portable(settings, choice)
    started = _connect(ray, settings.ray_address or "local")
    t0 = time.perf_counter()
    driver = None
    try:
        sizing = _sizing(ray, settings, len(folders))
        log.info("indexing %d scans on %d Ray workers (%g CPUs, %g GPUs each)", len(folders), sizing.workers,
                 sizing.cpus, sizing.gpus)
        # the writer needs only force and batch_size: no model is built in this process
        writer_options = IndexOptions(force=settings.force, batch_size=settings.batch_size)
        committer = ScanCommitter(store, None, writer_options, folders, report)
        if folders:
            driver = _Driver(ray, store, settings, choice, committer, sizing, worker_class, max_attempts, report)
            driver.run()
            for index in driver.queue:
                committer.fail(committer.outcomes[index], ScanError(committer.outcomes[index].path,
                                                                    "no Ray worker left to index it"))
        committer.flush()
    finally:
        if driver is not None:
            driver.close()
        if started:
            ray.shutdown()
    _log_stages(committer.outcomes, time.perf_counter() - t0)
    return committer.outcomes


def _log_stages(outcomes: list[ScanOutcome], wall: float) -> None:
    """Per-stage time summed over the workers' scans, against the job's wall time."""
    totals: dict[str, float] = collections.defaultdict(float)
    for o in outcomes:
        for stage, sec in o.seconds.items():
            totals[stage] += sec
    done = sum(o.status == "indexed" for o in outcomes)
    log.info("Ray job: %d scans indexed in %.1f s wall; stage seconds summed over workers: %s", done, wall,
             ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))
