"""Helpers of the server tests: one indexed home shared by the test modules of a session, and a live
uvicorn server on a free loopback port (for the browser and the concurrent-load tests)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import scenegrep


def indexed_home(tmp_path_factory: Any, scans: list[Path], clip_model: str) -> Path:
    """A home with ``scans`` indexed by ``clip_model``, built once per test session (the server tests only
    read it; a test that writes copies it first)."""
    root = tmp_path_factory.getbasetemp() / "served-home"
    done = root / "indexed"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        with scenegrep.open(root / "home", write=True) as col:
            outcomes = col.index(scans, clip_model=clip_model)
        assert all(o.status == "indexed" for o in outcomes), outcomes
        done.touch()
    return root / "home"


def renamed_scan(src: Path, dest: Path, name: str, tags: list[str]) -> Path:
    """A copy of the scan folder ``src`` as scan ``name`` with ``tags`` (its scan.json rewritten)."""
    shutil.copytree(src, dest)
    meta_file = dest / "scan.json"
    meta = json.loads(meta_file.read_text())
    meta.update(name=name, tags=tags)
    meta_file.write_text(json.dumps(meta))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``with LiveServer(app) as url:`` serves ``app`` with uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
