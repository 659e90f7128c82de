"""Importing scenegrep.storage (and its errors / records) stays cheap: no SQLAlchemy, FAISS, SciPy or torch."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "faiss", "scipy", "torch")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_light_modules_import_nothing_heavy():
    code = "import scenegrep.storage, scenegrep.storage.errors, scenegrep.storage.records, scenegrep.storage.fileio"
    assert _loaded_after(code) == []


def test_lazy_exports_still_work():
    # asking for the Store loads its machinery (but never torch)
    assert _loaded_after("from scenegrep.storage import Store, EncoderIdentity, StoreError, VectorIndex") == [
        "sqlalchemy",
        "faiss",
    ]


def test_every_export_resolves():
    import scenegrep.storage as storage

    for name in storage.__all__:
        assert getattr(storage, name).__name__ == name
    assert set(storage.__all__) <= set(dir(storage))
