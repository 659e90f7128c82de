"""Shared fixtures: a tiny random-weight open_clip model in local-dir format, synthetic scans, temp homes.

Nothing here touches the user's folders: every home is a temp dir and SCENEGREP_HOME points at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repo (design notes, real data, parity fixtures); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared ({SHARED}) is not present: tests on real scans and parity fixtures need it")
    return SHARED


@pytest.fixture(scope="session")
def openmask3d_fixture(shared_dir):
    """(scan, masks, expected) of ../shared/fixtures/openmask3d-features (OpenMask3D's own outputs)."""
    import numpy as np
    from plyfile import PlyData

    from scenegrep.indexer.proposals.base import MaskSet
    from scenegrep.indexer.scans import Frame, Scan

    root = shared_dir / "fixtures" / "openmask3d-features"
    if not (root / "expected.npz").is_file():
        pytest.skip(f"{root / 'expected.npz'} is not present (OpenMask3D's own feature outputs)")
    scene = root / "scene"
    v = PlyData.read(str(scene / "scene.ply"))["vertex"]
    pts = np.column_stack([v["x"], v["y"], v["z"]])
    cols = np.column_stack([v["red"], v["green"], v["blue"]])
    K = np.loadtxt(scene / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    frames = [Frame(i, scene / "color" / f"{i}.jpg", scene / "depth" / f"{i}.png",
                    np.loadtxt(scene / "pose" / f"{i}.txt"), K, K, (320, 240), (320, 240), 1000.0)
              for i in range(12)]
    scan = Scan("openmask3d-fixture", scene, "scannet", pts, cols, frames)
    with np.load(root / "expected.npz") as z:
        expected = {k: z[k] for k in z.files}
    return scan, MaskSet.load_npz(scene / "masks.npz"), expected


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random-weight open_clip ViT (embed dim 64, 64 px) saved in open_clip's local-dir format."""
    from scenegrep.testing import write_local_dir_model

    return write_local_dir_model(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="session")
def tiny_clip_model(tiny_clip_dir) -> str:
    """The --clip-model value that loads the tiny model through the user's code path."""
    return f"local-dir:{tiny_clip_dir}"


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_model):
    from scenegrep.indexer.features.encoders import load_encoder

    return load_encoder(tiny_clip_model, None, device="cpu")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """Two small seeded synthetic scans (ScanNet layout with ground truth), shared read-only by tests."""
    from scenegrep.indexer.synthetic import generate_scans

    out = tmp_path_factory.mktemp("synth")
    generate_scans(out, 2, seed=7, preset="small")
    return out


@pytest.fixture(scope="session")
def synth_scans(synth_dir) -> list[Path]:
    return sorted(p for p in synth_dir.iterdir() if p.is_dir())


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh scenegrep home; SCENEGREP_HOME points at it so no test touches ./scenegrep-home."""
    h = tmp_path / "home"
    monkeypatch.setenv("SCENEGREP_HOME", str(h))
    return h


@dataclass(frozen=True)
class Mask3DParity:
    """../shared/fixtures/mask3d-parity (the original Mask3D code's outputs): its folder and the arrays of
    inputs.npz and expected.npz."""

    folder: Path
    inputs: dict
    expected: dict


@pytest.fixture(scope="session")
def mask3d_parity(shared_dir) -> Mask3DParity:
    import numpy as np

    folder = shared_dir / "fixtures" / "mask3d-parity"
    with np.load(folder / "inputs.npz") as i, np.load(folder / "expected.npz") as e:
        return Mask3DParity(folder, {k: i[k] for k in i.files}, {k: e[k] for k in e.files})


# -- the catalog on PostgreSQL -------------------------------------------------------------------------

CATALOG_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL cluster for the whole run (tests/pgserver.py); skip with the reason when
    the driver is missing or no server can start here."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    from pgserver import PgUnavailable, start_server

    try:
        server = start_server()
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can start here: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_catalog_template(pg_server) -> str:
    """A database holding the current catalog schema (migrated once): copying it is cheaper than
    migrating each test's database."""
    from scenegrep.storage.catalog import Catalog

    name = pg_server.create_database("template")
    Catalog.open(pg_server.url(name)).close()
    return name


@pytest.fixture()
def pg_empty_url(pg_server) -> str:
    """The URL of a new, empty database of its own (so tests never see each other's catalogs)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture()
def pg_url(pg_server, pg_catalog_template) -> str:
    """The URL of a new database of its own holding an empty catalog at the current schema."""
    name = pg_server.create_database(template=pg_catalog_template)
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_backend(request) -> str:
    """Each catalog database in turn: "sqlite", "postgresql"."""
    return request.param


@pytest.fixture()
def storage_home(request, catalog_backend, tmp_path) -> Path:
    """A path for a new home, once with the default SQLite catalog and once created with a PostgreSQL
    catalog (``home.json`` names a fresh database holding an empty catalog)."""
    home = tmp_path / "home"
    if catalog_backend == "postgresql":
        from scenegrep.storage.homeconfig import record_catalog_url

        url = request.getfixturevalue("pg_url")
        home.mkdir()
        record_catalog_url(home, url)
    return home

