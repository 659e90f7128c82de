"""Indexing on Ray (issue 12, part 1): the same catalog as a sequential run, bit for bit; workers that die
mid-scan; one writer; progress; the CLI's --ray/--workers/--gpus-per-worker.

One local Ray instance serves the whole module (2 CPUs, no dashboard, a small object store) and is shut
down at the end, leaving no process behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from click.testing import CliRunner

import scenegrep
from scenegrep.cli import cli
from scenegrep.errors import SettingsError
from scenegrep.indexer.distributed import ScanWorker, index_paths_ray
from scenegrep.storage import Store

# The dying worker below is defined here: Ray's workers cannot import this test module, so its classes
# travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _ray_children() -> list[str]:
    """Command lines of this process's children that belong to Ray (raylet, GCS, workers)."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == me and "ray" in cmdline:
            out.append(cmdline)
    return out


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()
    assert not _ray_children(), "ray.shutdown() left processes behind"


def _catalog(home: Path) -> dict:
    """Everything a user can read back through the public API, keyed by scan name and mask index (ids
    depend on commit order, which is not part of the contract)."""
    out = {}
    with scenegrep.open(home) as col:
        for s in col.scans():
            info = {k: v for k, v in s.info.items()}
            xyz, rgb = col.scan_points(s.name)
            rows = []
            for inst in col.instances(s.name):
                d = col.instance(inst.id, vector=True)
                pts = col.points(inst.id)
                thumb = col.thumbnail(inst.id)
                rows.append((d.mask_index, d.n_points, d.mask_score, d.bbox, d.best_frame, d.proposer,
                             d.mask_method_2d, d.vector, pts.indices.tobytes(),
                             thumb.read_bytes() if thumb else None))
            out[s.name] = dict(content_hash=s.content_hash, points=(xyz.tobytes(), rgb.tobytes()),
                               instances=s.instances, searchable=s.searchable, tags=s.tags, info=info,
                               rows=rows)
    return out


def _summary(outcomes) -> list[tuple]:
    return [(str(o.path), o.name, o.status, o.instances, o.searchable, o.error, o.note, sorted(o.seconds))
            for o in outcomes]


@pytest.fixture(scope="module")
def both_ways(ray_local, synth_scans, tiny_clip_model, tmp_path_factory):
    """The two synthetic scans indexed sequentially and on Ray (2 workers), same settings:
    (sequential home, its outcomes, Ray home, its outcomes, the Ray run's progress events)."""
    root = tmp_path_factory.mktemp("both")
    options = dict(clip_model=tiny_clip_model, seed=3, batch_size=1)
    with scenegrep.open(root / "seq", write=True) as col:
        sequential = col.index(synth_scans, **options)
    events: list[tuple] = []
    with scenegrep.open(root / "ray", write=True) as col:
        on_ray = col.index(synth_scans, ray_address="local", workers=2, **options,
                           progress=lambda *e: events.append(e))
    return root / "seq", sequential, root / "ray", on_ray, events


def test_ray_gives_the_sequential_catalog_bit_for_bit(both_ways):
    seq_home, sequential, ray_home, on_ray, _ = both_ways
    assert [o.status for o in on_ray] == ["indexed", "indexed"]
    assert _summary(on_ray) == _summary(sequential)
    assert _catalog(ray_home) == _catalog(seq_home)


def test_progress_across_workers(both_ways):
    *_, on_ray, events = both_ways
    for o in on_ray:  # every scan through every stage, with its time per stage in the outcome
        mine = [(stage, done, total) for scan, stage, done, total in events if scan == o.name]
        stages = [stage for stage, done, total in mine if done == total and not stage.startswith("features:")]
        assert stages == ["read", "propose", "features", "store"], stages
        assert set(o.seconds) == {"read", "propose", "features", "store"}
        # the features stage's own steps come from inside the worker, between "propose" and its end
        names = [stage for stage, _, _ in mine]
        inner = [e for e in mine if e[0].startswith("features:")]
        steps = {e[0] for e in inner}
        assert len(steps) >= 2, names
        for step in steps:  # each step's first and last event always arrive, in order
            seq = [(d, t) for st, d, t in inner if st == step]
            assert seq[-1][0] == seq[-1][1] and [d for d, _ in seq] == sorted(d for d, _ in seq), (step, seq)
        inner_at = [i for i, e in enumerate(mine) if e[0].startswith("features:")]
        assert mine.index(("propose", 1, 1)) < inner_at[0] and inner_at[-1] < mine.index(("features", 1, 1)), mine
    job = [e for e in events if e[0] == ""]
    assert [e[2] for e in job] == [1, 2] and job[-1] == ("", "scans", 2, 2)


def test_cli_index_on_ray_finds_the_scans_unchanged(both_ways, synth_dir, tiny_clip_model, monkeypatch):
    *_, ray_home, _, _ = both_ways
    monkeypatch.setenv("SCENEGREP_HOME", str(ray_home))
    # a bare --ray (a local Ray; the one this process joined is reused) followed by another option
    res = CliRunner().invoke(cli, ["index", str(synth_dir), "--clip-model", tiny_clip_model, "--seed", "3",
                                   "--json", "--ray", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert [o["status"] for o in json.loads(res.stdout)] == ["unchanged", "unchanged"]


class DyingWorker(ScanWorker):
    """Dies (the whole process, as a crash or an OOM kill would) in the middle of marked scans: always for
    the scans in ``always``, once for a scan whose marker file exists (the marker is consumed)."""

    always: frozenset[str] = frozenset()
    once: dict[str, str] = {}

    def process(self, events=None):
        name = self.scan.name
        marker = Path(self.once.get(name, "/nonexistent"))
        if name in self.always or marker.exists():
            if marker.exists():
                marker.unlink()
            os._exit(1)
        return super().process(events)


def test_a_dead_worker_is_replaced_and_its_scan_retried_then_failed(ray_local, synth_scans, tiny_clip_model,
                                                                   tmp_path):
    marker = tmp_path / "die-once"
    marker.touch()
    # a third scan (a copy under another name) that kills every worker that takes it
    doomed = tmp_path / "doomed"
    shutil.copytree(synth_scans[0], doomed)
    for f in doomed.glob(f"{synth_scans[0].name}*"):
        f.rename(doomed / f.name.replace(synth_scans[0].name, "doomed"))
    meta = json.loads((doomed / "scan.json").read_text())
    (doomed / "scan.json").write_text(json.dumps({**meta, "name": "doomed"}))
    not_a_scan = tmp_path / "empty"
    not_a_scan.mkdir()
    worker = type("Dying", (DyingWorker,), {"always": frozenset({"doomed"}),
                                           "once": {synth_scans[1].name: str(marker)}})
    settings = scenegrep.IndexSettings.create(clip_model=tiny_clip_model, ray_address="local", workers=2)
    with Store.open(tmp_path / "home") as store:
        out = index_paths_ray([synth_scans[0], synth_scans[1], doomed, not_a_scan], store, settings,
                              settings.encoder_choice(), max_attempts=2, worker_class=worker)
        assert [o.status for o in out] == ["indexed", "indexed", "failed", "failed"]
        assert not marker.exists()  # synth_001's first worker died; a fresh one indexed it
        assert "died on each of 2 tries" in out[2].error and str(doomed) in out[2].error
        assert str(not_a_scan) in out[3].error  # bad input fails alone, as in a sequential run
        # each scan committed exactly once, whole
        assert sorted(s.name for s in store.scans()) == sorted(p.name for p in synth_scans)
        assert [len(store.instances(o.name)) for o in out[:2]] == [o.instances for o in out[:2]]


@pytest.mark.parametrize("options, message", [
    (dict(workers=2), "--workers only applies with --ray"),
    (dict(gpus_per_worker=1), "--gpus-per-worker only applies with --ray"),
    (dict(ray_address="scans"), "'scans' is not a Ray address"),
    (dict(ray_address="local", workers=0), "--workers: must be >= 1"),
    (dict(ray_address="local", device="cuda", gpus_per_worker=0), "--device cuda on Ray needs"),
    (dict(ray_address="local", gpus_per_worker=1), "add --device cuda"),
])
def test_ray_options_are_checked_before_anything_runs(options, message):
    with pytest.raises(SettingsError, match=message):
        scenegrep.IndexSettings.create(**options)


def test_ray_settings_defaults_and_addresses():
    s = scenegrep.IndexSettings.create(ray_address="ray://head:10001", device="cuda")
    assert (s.ray_address, s.workers, s.gpus_per_worker) == ("ray://head:10001", None, 1.0)
    assert scenegrep.IndexSettings.create(ray_address="auto").gpus_per_worker == 0.0
    assert scenegrep.IndexSettings.create(ray_address="10.0.0.1:6379").ray_address == "10.0.0.1:6379"
