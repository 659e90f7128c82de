"""The catalog in PostgreSQL: home.json, the advisory writer lock, migrations, errors that hide passwords,
and the CLI's --catalog-url. Each test gets its own database on a throwaway server (tests/pgserver.py);
the storage suites (tests/test_storage_*.py) also run whole against PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from scenegrep.cli import cli
from scenegrep.storage import CatalogError, Store, StoreError, StoreLockedError
from scenegrep.storage import catalog as catalog_module
from scenegrep.storage.catalog import Base, Catalog
from scenegrep.storage.homeconfig import CatalogUrlMismatchError, HomeConfigError

from pgserver import catalog_sql
from test_storage_store import ENC, QUERIES, make_scan

SECRET = "s3cret-Pa55"


def test_a_postgresql_home_records_its_url_and_every_open_reads_it(tmp_path, pg_empty_url):
    home = tmp_path / "home"
    with Store.open(home, catalog_url=pg_empty_url) as writer:  # an empty database: the writer migrates it
        writer.add_scans([make_scan("a", 1)], ENC)
        want = writer.search(QUERIES, 5)
    assert json.loads((home / "home.json").read_text()) == {"format": 1, "catalog_url": pg_empty_url}
    assert not (home / "catalog.sqlite").exists() and not (home / ".lock").exists()
    with Store.open(home, read_only=True) as reader:  # no URL given: home.json names the database
        assert reader.search(QUERIES, 5) == want
        assert reader.stats()["bytes_catalog"] > 0  # the database's own size
    with Store.open(home, catalog_url=pg_empty_url.replace("scenegrep@", f"scenegrep:{SECRET}@")) as again:
        assert again.search(QUERIES, 5) == want  # the same catalog with the password spelled out
    assert catalog_sql(home, "SELECT MAX(version) FROM schema_version") == [(catalog_module.SCHEMA_VERSION,)]


def test_one_writer_at_a_time_across_processes(tmp_path, pg_url):
    home = tmp_path / "home"
    writer = Store.open(home, catalog_url=pg_url)
    probe = textwrap.dedent(
        """
        import sys
        from scenegrep.storage import Store, StoreLockedError
        try:
            Store.open(sys.argv[1]).close()
        except StoreLockedError as exc:
            print("locked:", exc)
        else:
            print("opened")
        """
    )
    # another process (it could be another machine): the advisory lock refuses it
    out = subprocess.run([sys.executable, "-c", probe, str(home)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("locked:") and "advisory lock" in out.stdout, out.stdout + out.stderr
    with pytest.raises(StoreLockedError, match="another scenegrep process"):
        Store.open(home)  # a second connection of this process is refused as well
    with Store.open(home, read_only=True) as reader:  # readers take no lock and follow the writer
        writer.add_scans([make_scan("a", 1)], ENC)
        assert reader.vector_count() == 11
    writer.close()
    out = subprocess.run([sys.executable, "-c", probe, str(home)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "opened", out.stdout + out.stderr


def test_a_writer_that_lost_its_lock_commits_nothing(tmp_path, pg_url):
    """The lock's connection ends (a server restart, a network cut): another writer may now hold the lock,
    so the old writer's next commit is refused inside its own transaction, and nothing of it is visible."""
    home = tmp_path / "home"
    with Store.open(home, catalog_url=pg_url) as writer:
        writer.add_scans([make_scan("a", 1)], ENC)  # the fence lets a writer holding its lock commit
        catalog_sql(home, "SELECT pg_terminate_backend(:pid)", {"pid": writer._lock.pid})
        with Store.open(home) as other:  # the lock is free again: another writer takes it and commits
            other.add_scans([make_scan("b", 2)], ENC)
        with pytest.raises(StoreLockedError, match="lost the writer lock"):
            writer.add_scans([make_scan("c", 3)], ENC)
    assert catalog_sql(home, "SELECT name FROM scans WHERE status = 'indexed' ORDER BY name") == [("a",), ("b",)]
    with Store.open(home) as again:  # the refused write's leftovers are recovered like a crash's
        assert [s.name for s in again.scans()] == ["a", "b"] and again.verify() == []


def test_a_killed_writer_leaves_no_lock_and_its_write_is_undone(tmp_path, pg_url):
    home = tmp_path / "home"
    Store.open(home, catalog_url=pg_url).close()
    script = textwrap.dedent(
        """
        import os, signal, sys
        sys.path.insert(0, sys.argv[2])
        from test_storage_store import ENC, make_scan
        from scenegrep.storage import Store
        from scenegrep.storage import commit

        store = Store.open(sys.argv[1])
        commit.write_batch_segment = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write
        store.add_scans([make_scan("a", 1)], ENC)
        """
    )
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", script, str(home), tests], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    assert catalog_sql(home, "SELECT COUNT(*) FROM scans WHERE status = 'pending'") == [(1,)]
    with Store.open(home) as store:  # the lock went with the connection; recovery runs
        assert store.scans() == [] and store.verify() == []
    assert catalog_sql(home, "SELECT COUNT(*) FROM scans") == [(0,)]
    assert list((home / "points").iterdir()) == []


def test_another_url_for_an_existing_home_is_refused(tmp_path, pg_url):
    sqlite_home = tmp_path / "sqlite-home"
    Store.open(sqlite_home).close()
    with pytest.raises(CatalogUrlMismatchError, match="chosen once") as err:
        Store.open(sqlite_home, catalog_url=pg_url.replace("scenegrep@", f"scenegrep:{SECRET}@"))
    assert SECRET not in str(err.value) and "***" in str(err.value)
    pg_home = tmp_path / "pg-home"
    Store.open(pg_home, catalog_url=pg_url).close()
    with pytest.raises(CatalogUrlMismatchError):
        Store.open(pg_home, catalog_url="postgresql+psycopg://someone@elsewhere/other")
    with pytest.raises(CatalogUrlMismatchError):
        Store.open(pg_home, read_only=True, catalog_url=f"sqlite:///{pg_home / 'catalog.sqlite'}")
    with pytest.raises(HomeConfigError, match="unsupported catalog database 'mysql'"):
        Store.open(tmp_path / "third", catalog_url="mysql://u@h/db")
    (pg_home / "home.json").write_text("{not json")
    with pytest.raises(HomeConfigError, match="not valid JSON") as err:
        Store.open(pg_home, read_only=True)
    assert str(err.value).startswith(str(pg_home / "home.json"))


def test_an_unreachable_database_is_a_one_line_catalog_error_without_the_password(tmp_path):
    home = tmp_path / "home"
    url = f"postgresql://scenegrep:{SECRET}@127.0.0.1:1/scenegrep"  # nothing listens on port 1
    with pytest.raises(CatalogError) as err:
        Store.open(home, catalog_url=url)
    msg = str(err.value)
    assert msg.startswith("postgresql+psycopg://scenegrep:***@127.0.0.1:1/scenegrep: ") and "\n" not in msg
    assert SECRET not in msg and "refused" in msg
    assert not home.exists()  # a home whose catalog never opened is not left behind, not even its folders
    Store.open(home).close()  # ... and can still become an SQLite home


def test_an_emptied_database_never_wipes_the_home(tmp_path, pg_url):
    home = tmp_path / "home"
    with Store.open(home, catalog_url=pg_url) as store:
        store.add_scans([make_scan("a", 1)], ENC)
    kept = sorted(p.name for sub in ("points", "vectors") for p in (home / sub).iterdir())
    catalog_sql(home, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    with pytest.raises(CatalogError, match="holds no scenegrep schema"):
        Store.open(home, read_only=True)
    with pytest.raises(CatalogError, match="empty catalog, yet 2 vector/point file") as err:
        Store.open(home)
    assert str(err.value).startswith("postgresql+psycopg://scenegrep@/")
    assert sorted(p.name for sub in ("points", "vectors") for p in (home / sub).iterdir()) == kept
    assert catalog_sql(home, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_migrations_from_v1_on_postgresql_match_the_models(pg_empty_url, monkeypatch):
    with monkeypatch.context() as m:  # a release-1 catalog holding one scan and one generation
        m.setattr(catalog_module, "MIGRATIONS", catalog_module.MIGRATIONS[:1])
        m.setattr(catalog_module, "SCHEMA_VERSION", 1)
        Catalog.open(pg_empty_url).close()
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_empty_url)
    with engine.begin() as con:
        con.execute(text("INSERT INTO encoders (name, dim, random_weights, details_json, created_at) "
                         "VALUES ('e', 8, false, '{}', now())"))
        con.execute(text("INSERT INTO scans (name, source_path, content_hash, layout, point_count, frame_count, "
                         "tags_json, info_json, status, encoder_id) VALUES ('s', '/s', 'h', 'x', 10, 1, '[]', '{}', "
                         "'indexed', 1)"))
        con.execute(text("INSERT INTO instances (scan_id, mask_index, point_count, min_x, min_y, min_z, max_x, max_y, "
                         "max_z, score, point_indices, searchable) VALUES (1, 0, 3, 0, 0, 0, 1, 5, 2, 0.5, "
                         "'\\x00', true)"))
        con.execute(text("INSERT INTO generations VALUES (7, now(), 'gen-7.faiss', 1, true)"))
    engine.dispose()
    catalog = Catalog.open(pg_empty_url)  # v2 onwards on PostgreSQL
    try:
        assert catalog.schema_version() == catalog_module.SCHEMA_VERSION == 4
        insp = inspect(catalog.engine)
        for table in Base.metadata.sorted_tables:
            assert {c["name"] for c in insp.get_columns(table.name)} == set(table.columns.keys()), table.name
            indexes = {i["name"] for i in insp.get_indexes(table.name) if "duplicates_constraint" not in i}
            assert indexes == {i.name for i in table.indexes}  # (a UNIQUE column's own index left out)
        types = {c["name"]: str(c["type"]) for c in insp.get_columns("segments")}
        assert types["crc32"] == "BIGINT" and types["size_bytes"] == "BIGINT"  # CRC-32s exceed INTEGER
        with catalog.engine.connect() as con:
            assert con.exec_driver_sql("SELECT extent FROM instances").scalar_one() == 5.0  # GREATEST of the sides
            assert con.exec_driver_sql("SELECT value FROM store_state WHERE key = 'commit'").scalar_one() == 7
            isolation = con.exec_driver_sql("SELECT current_setting('transaction_isolation')").scalar_one()
            assert isolation == "repeatable read"  # one read transaction sees one commit
    finally:
        catalog.close()


def test_cli_index_with_catalog_url_then_search(tmp_path, pg_url, synth_scans, tiny_clip_model):
    home = tmp_path / "home"

    def run(*args):
        return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)

    # few crops per mask: the catalog is what this test is about
    res = run("index", synth_scans[0], "--clip-model", tiny_clip_model, "-q", "--top-k", "1", "--crop-levels", "1",
              "--catalog-url", pg_url)
    assert res.exit_code == 0, res.output
    assert json.loads((home / "home.json").read_text())["catalog_url"] == pg_url
    stats = json.loads(run("stats", "--json").stdout)
    assert stats["scans"] == 1 and stats["vectors"] > 0
    hits = json.loads(run("search", "a chair", "-k", "3", "--json").stdout)
    assert len(hits) == 3 and np.isfinite([h["score"] for h in hits]).all()
    res = run("index", synth_scans[1], "-q", "--catalog-url", f"postgresql://u:{SECRET}@elsewhere/x")
    assert res.exit_code == 1 and "Error: " in res.output and "chosen once" in res.output
    assert SECRET not in res.output and "Traceback" not in res.output


def test_store_error_root():
    assert issubclass(CatalogUrlMismatchError, HomeConfigError) and issubclass(HomeConfigError, StoreError)
