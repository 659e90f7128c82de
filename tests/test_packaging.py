"""One import name: the wheel installs only ``scenegrep``; each module has exactly one name; the layering
contracts (import-linter) hold on what is installed; ``python -m scenegrep`` and ``--version`` work."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("storage", "indexer", "search")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout without network access."""
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what git would commit (tracked + untracked-not-ignored files): a stale build/
    # folder or a leftover module in the checkout must not reach the wheel.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, cwd=src, capture_output=True)
    (whl,) = out.glob("scenegrep-*.whl")
    return whl


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    return root


def test_wheel_installs_only_scenegrep(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"scenegrep"}
    for layer in LAYERS:
        assert f"scenegrep/{layer}/__init__.py" in names
        assert not any(n.startswith(f"{layer}/") for n in names)
    assert "scenegrep/py.typed" in names and "scenegrep/__main__.py" in names


def test_every_source_package_is_in_the_wheel(wheel):
    """The explicit package list in pyproject.toml cannot silently miss a new subpackage."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for layer in LAYERS:
        for init in (REPO / layer).rglob("__init__.py"):
            rel = init.relative_to(REPO).as_posix()
            assert f"scenegrep/{rel}" in names, f"{rel} is not packaged: add it to [tool.setuptools] packages"
        for module in (REPO / layer).rglob("*.py"):
            rel = module.relative_to(REPO).as_posix()
            assert f"scenegrep/{rel}" in names, rel


def test_a_layer_folder_is_never_importable_under_its_bare_name():
    code = ("import scenegrep.storage, scenegrep.indexer, scenegrep.search, sys\n"
            "for bare in ('storage', 'indexer', 'search'):\n"
            "    try:\n"
            "        __import__(bare)\n"
            "    except ImportError as e:\n"
            "        assert 'scenegrep.' + bare in str(e), e\n"
            "    else:\n"
            "        raise SystemExit(bare + ' imported under a second name')\n"
            "    assert bare not in sys.modules\n"
            "print('ok')\n")
    # cwd = the repository root, where the bare folders are first on sys.path
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_import_linter_contracts_hold_on_the_installed_package(unpacked, tmp_path):
    code = ("import sys\nfrom importlinter.cli import lint_imports\n"
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}))\n")
    # run outside the checkout, so `scenegrep` is the unpacked wheel's tree (the layers under one root)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_python_dash_m_and_version():
    from importlib.metadata import version

    res = subprocess.run([sys.executable, "-m", "scenegrep", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"scenegrep {version('scenegrep')}"
    res = subprocess.run([sys.executable, "-m", "scenegrep", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "index" in res.stdout and "search" in res.stdout


def test_help_imports_no_heavy_module():
    """What keeps `scenegrep --help` fast (the timing itself is in BENCHMARKS.md, not a test)."""
    code = ("import sys\nfrom scenegrep.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='scenegrep')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('numpy', 'torch', 'sqlalchemy', 'faiss', 'scipy', 'open_clip', 'rich')\n"
            "               if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "Usage: scenegrep" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "HEAVY=", res.stdout
