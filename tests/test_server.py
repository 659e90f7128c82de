"""The search server (scenegrep.server) through FastAPI's test client over a small indexed home: every
endpoint against the library's own answers, bad input -> the documented 4xx JSON, the token, and
searches from concurrent clients while ``index`` commits a new scan."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from plyfile import PlyData

import scenegrep
from scenegrep.server import MAX_K, MAX_UPLOAD_BYTES, create_app, decode_points, encode_points
from server_home import LiveServer, indexed_home, renamed_scan


@pytest.fixture(scope="module")
def served(tmp_path_factory, synth_scans, tiny_clip_model) -> Path:
    return indexed_home(tmp_path_factory, synth_scans, tiny_clip_model)


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served)) as c:
        yield c


@pytest.fixture(scope="module")
def col(served):
    with scenegrep.open(served) as c:
        yield c


def _ok(response, status=200):
    assert response.status_code == status, response.text
    return response


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


def _photo(scan: Path) -> bytes:
    """A crop of one of the scan's colour frames, as PNG bytes (what a user would drop)."""
    with Image.open(scan / "color" / "0.jpg") as im:
        w, h = im.size
        crop = im.convert("RGB").crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    return buf.getvalue()


# -- searching ------------------------------------------------------------------------------------------


def test_text_search_matches_the_library(client, col):
    body = _ok(client.get("/api/search", params={"q": "a red chair", "k": 5})).json()
    hits = body["hits"]
    assert body["query"] == "a red chair" and body["took_ms"] > 0
    assert [h["id"] for h in hits] == [h.id for h in col.search("a red chair", k=5)]
    assert len(hits) == 5 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert set(h) == {"id", "scan", "score", "relevance", "n_points", "bbox", "mask_score", "thumbnail_url",
                          "points_url", "folded"}
        assert h["points_url"] == f"/api/instances/{h['id']}/points" and len(h["bbox"]) == 6
    jpeg = _ok(client.get(hits[0]["thumbnail_url"]))
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"


def test_filters_are_applied(client, col):
    scans = sorted(s.name for s in col.scans())
    only = _ok(client.get("/api/search", params={"q": "a table", "k": 20, "scan": scans[1]})).json()["hits"]
    assert only and {h["scan"] for h in only} == {scans[1]}
    sized = _ok(client.get("/api/search", params={"q": "a table", "k": 20, "min_points": 200,
                                                 "max_points": 2000})).json()["hits"]
    assert sized and all(200 <= h["n_points"] <= 2000 for h in sized)
    small = _ok(client.get("/api/search", params={"q": "a table", "k": 20, "max_extent": 0.5})).json()["hits"]
    assert small and all(max(np.subtract(h["bbox"][3:], h["bbox"][:3])) <= 0.5 + 1e-3 for h in small)
    tagged = _ok(client.get("/api/search", params={"q": "a table", "tag": "synthetic"})).json()["hits"]
    assert tagged
    assert _ok(client.get("/api/search", params={"q": "a table", "tag": "no-such-tag"})).json()["hits"] == []
    unfolded = _ok(client.get("/api/search", params={"q": "a table", "k": 20, "all": "true"})).json()["hits"]
    assert len(unfolded) == 20 and all(h["folded"] == [] for h in unfolded)
    assert [h["id"] for h in unfolded] == [h.id for h in col.search("a table", k=20, all=True)]


def test_like_searches_by_example(client, col):
    first = col.search("a chair", k=1)[0]
    hits = _ok(client.get("/api/search", params={"like": first.id, "k": 8})).json()["hits"]
    assert first.id not in {h["id"] for h in hits}
    assert [h["id"] for h in hits] == [h.id for h in col.like(first.id, k=8)]


def test_image_search(client, col, synth_scans):
    photo = _photo(synth_scans[0])
    r = _ok(client.post("/api/search/image", params={"k": 6}, files={"photo": ("crop.png", photo, "image/png")}))
    hits = r.json()["hits"]
    assert r.json()["query"] == "photo"
    assert [h["id"] for h in hits] == [h.id for h in col.search_image(photo, k=6)]
    filtered = _ok(client.post("/api/search/image", params={"k": 6, "scan": synth_scans[1].name},
                               files={"photo": ("crop.png", photo, "image/png")})).json()["hits"]
    assert filtered and {h["scan"] for h in filtered} == {synth_scans[1].name}


# -- instances and their points -------------------------------------------------------------------------


def test_instance_details(client, col):
    hit = col.search("a box", k=1)[0]
    body = _ok(client.get(f"/api/instances/{hit.id}")).json()
    expected = col.instance(hit.id).to_dict()
    expected.pop("thumbnail")
    assert {k: body[k] for k in expected} == expected
    assert body["thumbnail_url"] == f"/api/instances/{hit.id}/thumbnail"


def test_points_are_the_exported_points(client, col, tmp_path):
    hit = col.search("a chair", k=1)[0]
    r = _ok(client.get(f"/api/instances/{hit.id}/points", params={"format": "ply"}))
    assert f'instance-{hit.id}.ply' in r.headers["content-disposition"]
    exported = col.export(hit.id, tmp_path / "hit.ply")
    assert r.content == exported.read_bytes()
    vertex = PlyData.read(io.BytesIO(r.content))["vertex"]
    pts = col.points(hit.id)
    assert vertex.count == hit.n_points == len(pts.indices)
    np.testing.assert_array_equal(vertex["index"], pts.indices)

    npz = _ok(client.get(f"/api/instances/{hit.id}/points", params={"format": "npz"})).content
    assert zipfile.is_zipfile(io.BytesIO(npz))
    with np.load(io.BytesIO(npz)) as z:
        np.testing.assert_array_equal(z["indices"], pts.indices)
        np.testing.assert_array_equal(z["xyz"], pts.xyz)

    xyz, rgb, idx, total = decode_points(
        _ok(client.get(f"/api/instances/{hit.id}/points", params={"format": "bin"})).content)
    np.testing.assert_array_equal(idx, pts.indices)
    np.testing.assert_array_equal(xyz, pts.xyz)
    np.testing.assert_array_equal(rgb, pts.rgb)
    assert total == len(idx)


def test_bin_format_layout():
    xyz = np.arange(15, dtype=np.float32).reshape(5, 3)
    rgb = np.arange(15, dtype=np.uint8).reshape(5, 3)
    idx = np.array([1, 4, 9, 16, 25], np.uint32)
    data = encode_points(xyz, rgb, idx, total=30)
    assert data[:4] == b"SGPT" and len(data) == 16 + 12 * 5 + 15 + 1 + 4 * 5  # rgb padded to 16 bytes
    assert np.frombuffer(data, "<u4", 3, 4).tolist() == [1, 5, 30]
    back = decode_points(data)
    np.testing.assert_array_equal(back[0], xyz)
    np.testing.assert_array_equal(back[1], rgb)
    np.testing.assert_array_equal(back[2], idx)


def test_scans_and_their_clouds(client, col):
    scans = _ok(client.get("/api/scans")).json()
    assert sorted(s["name"] for s in scans) == sorted(s.name for s in col.scans())
    name = scans[0]["name"]
    full_xyz, full_rgb = col.scan_points(name)
    xyz, rgb, idx, total = decode_points(_ok(client.get(scans[0]["points_url"])).content)
    assert total == len(xyz) == len(full_xyz) == scans[0]["points"]
    np.testing.assert_array_equal(xyz, full_xyz)
    np.testing.assert_array_equal(rgb, full_rgb)
    small = _ok(client.get(f"/api/scans/{name}/points", params={"max_points": 1000})).content
    xyz, rgb, idx, total = decode_points(small)
    assert len(idx) == 1000 and total == len(full_xyz) and np.all(np.diff(idx.astype(np.int64)) > 0)
    np.testing.assert_array_equal(xyz, full_xyz[idx])
    np.testing.assert_array_equal(rgb, full_rgb[idx])
    assert _ok(client.get(f"/api/scans/{name}/points", params={"max_points": 1000})).content == small


def test_stats_health_and_schema(client, col):
    stats = _ok(client.get("/api/stats")).json()
    assert stats["scans"] == col.stats()["scans"] == 2 and stats["instances"] > 0
    assert _ok(client.get("/healthz")).json() == {"status": "ok"}
    paths = _ok(client.get("/openapi.json")).json()["paths"]
    assert {"/api/search", "/api/search/image", "/api/instances/{iid}", "/api/instances/{iid}/points",
            "/api/instances/{iid}/thumbnail", "/api/scans", "/api/scans/{name}/points", "/api/stats",
            "/healthz"} <= set(paths)


# -- the page and its files -----------------------------------------------------------------------------


def test_page_and_static_files(client):
    page = _ok(client.get("/", params={"q": "a red chair", "k": 20}))
    assert page.headers["content-type"].startswith("text/html")
    assert '"three": "/static/vendor/three/three.module.min.js"' in page.text and "/static/app.js" in page.text
    for name in ("app.js", "viewer.js", "vendor/three/three.module.min.js", "vendor/three/three.core.min.js",
                 "vendor/three/OrbitControls.js"):
        assert _ok(client.get(f"/static/{name}")).headers["content-type"].startswith("text/javascript")
    assert "MIT License" in _ok(client.get("/static/vendor/three/LICENSE")).text
    for bad in ("/static/%2e%2e/server.py", "/static/..%2F..%2Fpyproject.toml", "/static/vendor/%2e%2e/app.js",
                "/static/%2Fetc%2Fpasswd", "/static/", "/static/vendor"):
        _error(client.get(bad), 404)


# -- bad input ------------------------------------------------------------------------------------------


def test_bad_input_gives_4xx_json_and_the_server_keeps_serving(client, col):
    known = col.search("a chair", k=1)[0].id
    assert "1000" in _error(client.get("/api/search", params={"q": "x", "k": MAX_K + 1}), 422)
    _error(client.get("/api/search", params={"q": "x", "k": 10**12}), 422)
    _error(client.get("/api/search", params={"q": "x", "k": 0}), 422)
    _error(client.get("/api/search", params={"q": "x", "k": "ten"}), 422)
    # (a 100,000-character query does not fit in httpx's URLs: see the live-server test)
    assert "1000 characters" in _error(client.get("/api/search", params={"q": "x" * 60_000}), 422)
    _error(client.get("/api/search", params={"q": "   "}), 400)  # the library refuses an empty query
    _error(client.get("/api/search"), 400)
    _error(client.get("/api/search", params={"q": "x", "like": known}), 400)
    _error(client.get("/api/search", params={"q": "x", "min_score": 2}), 422)
    _error(client.get("/api/search", params={"q": "x", "scan": ["s"] * 101}), 422)
    assert "99999999" in _error(client.get("/api/search", params={"like": 99999999}), 404)
    _error(client.get("/api/instances/99999999"), 404)
    _error(client.get("/api/instances/-1"), 422)
    _error(client.get("/api/instances/abc"), 422)
    _error(client.get(f"/api/instances/{2**70}"), 422)
    _error(client.get("/api/instances/99999999/points"), 404)
    _error(client.get("/api/instances/99999999/thumbnail"), 404)
    _error(client.get(f"/api/instances/{known}/points", params={"format": "obj"}), 422)
    _error(client.get("/api/scans/no-such-scan/points"), 404)
    _error(client.get("/api/scans/x/points", params={"max_points": 0}), 422)
    _error(client.get("/api/scans/x/points", params={"max_points": 10**9}), 422)
    _error(client.get("/api/nothing-here"), 404)
    _error(client.delete("/api/scans"), 405)
    _error(client.get("/docs"), 404)  # no Swagger UI: it would load from a CDN

    big = b"\0" * (MAX_UPLOAD_BYTES + 2**20)
    assert "MiB" in _error(client.post("/api/search/image", files={"photo": ("big.png", big, "image/png")}), 413)
    _error(client.post("/api/search/image", files={"photo": ("a.png", b"not an image", "image/png")}), 400)
    _error(client.post("/api/search/image", files={"photo": ("a.png", b"", "image/png")}), 400)
    _error(client.post("/api/search/image", data={"nothing": "1"}), 422)
    chunked = client.post("/api/search/image", content=iter([b"--x\r\n"]),
                          headers={"content-type": "multipart/form-data; boundary=x"})
    assert "Content-Length" in _error(chunked, 411)

    # still serving, and serving the same answers
    again = _ok(client.get("/api/search", params={"q": "a chair", "k": 1})).json()["hits"]
    assert again[0]["id"] == known


def test_token_guards_the_api(served):
    with TestClient(create_app(served, token="s3cret", warm=False)) as c:
        r = c.get("/api/scans")
        assert "token" in _error(r, 401) and r.headers["www-authenticate"] == "Bearer"
        _error(c.get("/api/scans", headers={"Authorization": "Bearer wrong"}), 401)
        _error(c.get("/api/scans", params={"token": "s3cre"}), 401)
        assert _ok(c.get("/api/scans", headers={"Authorization": "Bearer s3cret"})).json()
        assert _ok(c.get("/api/scans", params={"token": "s3cret"})).json()
        _ok(c.get("/healthz"))
        _ok(c.get("/"))


def test_serve_command_warns_off_loopback_without_a_token(served, monkeypatch):
    import uvicorn

    from scenegrep.cli import cli

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    res = CliRunner().invoke(cli, ["--home", str(served), "serve", "--host", "0.0.0.0", "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert "without a token" in res.stderr and "http://0.0.0.0:8123/" in res.stdout
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["port"] == 8123
    res = CliRunner().invoke(cli, ["--home", str(served), "serve"], env={"SCENEGREP_TOKEN": "t"})
    assert res.exit_code == 0 and "WARNING" not in res.stderr and calls[-1]["host"] == "127.0.0.1"
    res = CliRunner().invoke(cli, ["--home", str(served), "serve", "--host", "::1", "--token", ""])
    assert res.exit_code == 0 and "WARNING" not in res.stderr


# -- load while a concurrent index commits --------------------------------------------------------------


def test_concurrent_searches_while_index_commits_a_new_scan(served, synth_scans, tiny_clip_model, tmp_path):
    """8 clients search (at least 200 searches in all, at most 800) while another process's writer indexes
    a new scan: every request succeeds, every hit id is a real instance, and the server sees the new scan
    without a restart."""
    import http.client
    import shutil

    import httpx

    home = shutil.copytree(served, tmp_path / "home")
    late = renamed_scan(synth_scans[0], tmp_path / "scans" / "late_scan", "late_scan", ["late"])
    queries = ["a red chair", "a wooden table", "a blue box", "a lamp", "a sofa", "a plant", "a shelf", "a cup"]
    indexed = threading.Event()
    failures: list[str] = []

    def index() -> None:
        try:
            with scenegrep.open(home, write=True) as writer:
                (outcome,) = writer.index([late], clip_model=tiny_clip_model)
                assert outcome.status == "indexed", outcome
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failures.append(f"index: {e!r}")
        finally:
            indexed.set()

    def client(n: int, url: str) -> list[int]:
        seen, done = [], 0
        with httpx.Client(base_url=url, timeout=60) as web:
            while done < 100 and (done < 25 or not indexed.is_set()):
                params = {"q": queries[(n + done) % len(queries)], "k": 10}
                if done % 3 == 1:
                    params["min_points"] = 50
                r = web.get("/api/search", params=params)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen += [h["id"] for h in r.json()["hits"]]
                done += 1
        return seen

    with LiveServer(create_app(home)) as url:
        writer = threading.Thread(target=index)
        writer.start()
        with ThreadPoolExecutor(8) as pool:
            ids = set().union(*pool.map(client, range(8), [url] * 8))
        writer.join(120)
        assert not failures, failures[:5]
        with httpx.Client(base_url=url, timeout=60) as web:
            for iid in sorted(ids):
                assert web.get(f"/api/instances/{iid}").status_code == 200, iid
            assert "late_scan" in {s["name"] for s in web.get("/api/scans").json()}
            hits = web.get("/api/search", params={"q": "a chair", "tag": "late"}).json()["hits"]
            assert hits and {h["scan"] for h in hits} == {"late_scan"}
        # a 100,000-character query (too long a URL for httpx, so sent by hand)
        conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
        conn.request("GET", "/api/search?k=5&q=" + "x" * 100_000)
        response = conn.getresponse()
        assert response.status == 422 and "1000 characters" in json.loads(response.read())["error"]
        conn.close()
        with httpx.Client(base_url=url, timeout=60) as web:
            assert web.get("/api/search", params={"q": "a chair"}).status_code == 200
