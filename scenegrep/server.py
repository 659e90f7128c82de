"""The HTTP face: a JSON API over :class:`scenegrep.Collection` and the search page (``scenegrep serve``).

Like the CLI, this module holds no policy: it parses a request, makes one call of the public API and turns
the result into JSON or bytes. :func:`create_app` opens the home read-only once and keeps it (and the
catalog's encoder, loaded at start-up) for the life of the process; every API request first follows what
a concurrent ``scenegrep index`` committed (:meth:`Collection.refresh`), so no restart is needed.

Concurrency: FastAPI runs these sync endpoints on a thread pool, but a Collection (its SQLite session,
FAISS segments and torch encoder) is not meant to be shared between threads. :class:`_Service` serialises
every call into the library with one lock, so the library only ever sees one request at a time (and FAISS
and torch use their own threads inside that call); concurrent requests queue for it. Requests that need no
library call (the page and its static files, ``/healthz``) never wait for the lock.

Safety: every input is bounded (k, query length, list lengths, ``max_points``, upload size) and rejected
with a 4xx JSON body ``{"error": "<message>"}``; the page's files are served by name from a table of the
package's fixed ``static/`` folder built at start-up, so no request string ever reaches the file system;
instance ids and scan names are looked up in the catalog by the library. A library error becomes a 4xx
(or 503 when the home itself is unusable) and an unexpected exception a 500 whose body says it is a bug:
never a traceback. With a token (``--token`` / ``SCENEGREP_TOKEN``) every ``/api`` call needs it, as
``Authorization: Bearer <token>`` or ``?token=<token>``.
"""

from __future__ import annotations

import hmac
import logging
import math
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import scenegrep
from scenegrep.errors import ScenegrepError, SettingsError, one_line

__all__ = ["create_app", "encode_points", "decode_points", "MAX_K", "MAX_QUERY_CHARS", "MAX_UPLOAD_BYTES",
           "MAX_DISPLAY_POINTS", "POINTS_MAGIC"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Most hits one request may ask for (the library allows more; a page never shows that many).
MAX_K = 1000
#: Longest text query, in characters (the library's own limit).
MAX_QUERY_CHARS = 1000
#: Largest request body (the photo of ``POST /api/search/image`` plus its multipart framing).
MAX_UPLOAD_BYTES = 20 * 2**20
#: Most points ``/api/scans/{name}/points`` sends at once (``max_points`` above this is refused).
MAX_DISPLAY_POINTS = 5_000_000
#: Most values of a repeatable filter (``scan``, ``tag``) and the longest such value.
MAX_LIST = 100
MAX_NAME = 256
#: Scan clouds kept encoded in memory for the page (each is ~19 bytes a point).
SCAN_CACHE_ENTRIES = 4

STATIC_DIR = Path(__file__).resolve().parent / "static"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                  ".ico": "image/x-icon", "": "text/plain; charset=utf-8"}

# -- the page's binary point format ---------------------------------------------------------------------

#: First bytes of the ``bin`` point format.
POINTS_MAGIC = b"SGPT"
_POINTS_VERSION = 1
_POINTS_HEADER = struct.Struct("<4sIII")  # magic, version, n, total


def encode_points(xyz: np.ndarray, rgb: np.ndarray, indices: np.ndarray, total: int) -> bytes:
    """The compact ``bin`` format the page reads (all little-endian; every array 4-byte aligned)::

        offset 0   4 bytes   b"SGPT"
               4   uint32    version (1)
               8   uint32    n, the points that follow
              12   uint32    total, the points of the source (a scan's N; n for an instance)
              16   float32   xyz[n][3]
        16 + 12n   uint8     rgb[n][3], then zero bytes up to a multiple of 4
                   uint32    index[n], each point's index in its scan (sorted ascending)
    """
    n = len(indices)
    if xyz.shape != (n, 3) or rgb.shape != (n, 3):
        raise ValueError(f"xyz {xyz.shape} and rgb {rgb.shape} must be ({n}, 3)")
    rgb_bytes = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return b"".join([
        _POINTS_HEADER.pack(POINTS_MAGIC, _POINTS_VERSION, n, int(total)),
        np.ascontiguousarray(xyz, dtype="<f4").tobytes(),
        rgb_bytes, bytes(-len(rgb_bytes) % 4),
        np.ascontiguousarray(indices, dtype="<u4").tobytes(),
    ])


def decode_points(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(xyz (n,3) float32, rgb (n,3) uint8, indices (n,) uint32, total) of :func:`encode_points`' bytes."""
    magic, version, n, total = _POINTS_HEADER.unpack_from(data)
    if magic != POINTS_MAGIC or version != _POINTS_VERSION:
        raise ValueError(f"not scenegrep points v{_POINTS_VERSION}: {magic!r} v{version}")
    at = _POINTS_HEADER.size
    xyz = np.frombuffer(data, "<f4", 3 * n, at).reshape(n, 3)
    at += 12 * n
    rgb = np.frombuffer(data, np.uint8, 3 * n, at).reshape(n, 3)
    at += 3 * n + (-3 * n) % 4
    return xyz, rgb, np.frombuffer(data, "<u4", n, at), total


def subsample(n: int, m: int | None) -> np.ndarray | None:
    """Sorted indices of ``m`` of ``n`` points, the same every time (None: keep them all)."""
    if m is None or m >= n:
        return None
    return np.sort(np.random.default_rng(0).choice(n, size=m, replace=False)).astype(np.uint32)


# -- response records (the OpenAPI schema) --------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every error: a one-line message (never a traceback)."""

    error: str


class HitOut(BaseModel):
    id: int = Field(description="instance id (stable; never reused)")
    scan: str = Field(description="the scan the instance belongs to")
    score: float = Field(description="cosine similarity of the query and the instance, in [-1, 1]")
    relevance: float | None = Field(description="the score calibrated to [0, 1]; null in tiny collections")
    n_points: int = Field(description="points in the instance")
    bbox: list[float] = Field(description="[min_x, min_y, min_z, max_x, max_y, max_z], metres")
    mask_score: float = Field(description="the proposer's confidence in the mask")
    thumbnail_url: str | None = Field(description="JPEG crop of the best view; null without one")
    points_url: str = Field(description="the instance's exact points (add ?format=ply|npz|bin)")
    folded: list[int] = Field(description="ids of near-duplicates folded under this hit")


class SearchOut(BaseModel):
    query: str = Field(description="what was searched: the text, 'like ID' or 'photo'")
    hits: list[HitOut]
    took_ms: float = Field(description="server time for the search, milliseconds")


class InstanceOut(BaseModel):
    id: int
    scan: str
    n_points: int
    bbox: list[float]
    mask_score: float
    searchable: bool = Field(description="has a vector (can be found by search)")
    best_frame: int | None
    mask_index: int
    scan_source: str | None = Field(description="the scan folder it was indexed from")
    proposer: str | None
    mask_method_2d: str | None
    thumbnail_url: str | None
    points_url: str


class ScanOut(BaseModel):
    name: str
    status: str
    instances: int
    searchable: int
    points: int
    frames: int
    layout: str
    source: str
    indexed_at: str | None
    tags: list[str]
    proposer: str | None
    mask_method_2d: str | None
    preset: str | None
    points_url: str


class HealthOut(BaseModel):
    status: Literal["ok"]


# -- errors ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request that cannot be served: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = one_line(message)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


_ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (400, "a query the library rejects (one line saying why)"),
    (401, "a token is configured and the request does not carry it"),
    (404, "unknown instance, scan or route"),
    (411, "a request body without a Content-Length"),
    (413, "request body larger than the upload limit"),
    (422, "a parameter out of its bounds or of the wrong type"),
    (503, "the home cannot be read (damaged or not indexed)"),
)}
_BINARY = {"content": {"application/octet-stream": {}}, "description": "binary"}


# -- the service: one collection, one lock --------------------------------------------------------------


class _Service:
    """The open collection and the lock that serialises every call into it (see the module docstring)."""

    def __init__(self, collection: "scenegrep.Collection"):
        self.collection = collection
        self._lock = threading.Lock()
        self._scan_cache: OrderedDict[tuple, bytes] = OrderedDict()

    def call(self, fn: Callable[["scenegrep.Collection"], T]) -> T:
        """``fn(collection)`` under the lock, after following a concurrent writer's latest commit; library
        errors become :class:`ApiError`."""
        with self._lock:
            try:
                self.collection.refresh()
                return fn(self.collection)
            except ApiError:
                raise
            except scenegrep.NotFoundError as e:
                raise ApiError(404, str(e)) from None
            except SettingsError as e:
                raise ApiError(400, str(e)) from None
            except ScenegrepError as e:
                raise ApiError(503, str(e)) from None
            except Exception as e:  # noqa: BLE001 - the HTTP edge: log the traceback, answer one line
                log.exception("unexpected error serving a request")
                raise ApiError(500, f"unexpected {type(e).__name__}: {one_line(e)} "
                                    "(this is a bug in scenegrep; the server log has the traceback)") from None

    def scan_cloud(self, col: "scenegrep.Collection", name: str, max_points: int | None) -> bytes:
        """A scan's cloud in the ``bin`` format, subsampled to ``max_points``, cached per commit of it."""
        info = next((s for s in col.scans() if s.name == name), None)
        if info is None:
            raise scenegrep.NotFoundError(f"no scan {name!r}")
        if max_points is None and info.point_count > MAX_DISPLAY_POINTS:
            raise ApiError(422, f"scan {name!r} has {info.point_count} points, more than the display limit "
                                f"{MAX_DISPLAY_POINTS}: ask for max_points")
        key = (info.id, info.content_hash, max_points)
        data = self._scan_cache.get(key)
        if data is None:
            xyz, rgb = col.scan_points(name)
            keep = subsample(len(xyz), max_points)
            if keep is None:
                keep = np.arange(len(xyz), dtype=np.uint32)
            else:
                xyz, rgb = xyz[keep], rgb[keep]
            data = encode_points(xyz, rgb, keep, total=info.point_count)
            self._scan_cache[key] = data
            while len(self._scan_cache) > SCAN_CACHE_ENTRIES:
                self._scan_cache.popitem(last=False)
        self._scan_cache.move_to_end(key)
        return data


# -- request guards -------------------------------------------------------------------------------------


class _BodyLimit:
    """ASGI middleware: a request body must declare its length (411 otherwise) and be at most ``limit``
    bytes (413), checked before anything reads it, so an upload never fills memory or disk."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        problem = None
        if length is None:
            problem = (411, "a request body needs a Content-Length header")
        elif not length.isdigit():
            problem = (400, "Content-Length is not a number")
        elif int(length) > self.limit:
            problem = (413, f"the request body is {int(length)} bytes; at most {self.limit} "
                            f"({self.limit // 2**20} MiB) are accepted")
        if problem is not None:
            await _error(*problem)(scope, receive, send)
            return
        # uvicorn's HTTP framing never delivers more body than Content-Length declares
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False, description="the server's token (scenegrep serve --token)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token_guard(token: str) -> Callable[..., None]:
    def check(request: Request, credentials: Credentials) -> None:
        given = credentials.credentials if credentials is not None else request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "this server needs its token: Authorization: Bearer <token> or ?token=<token>")

    return check


def _static_files(folder: Path) -> dict[str, Path]:
    """Every file of the page, by its path relative to ``folder`` (the only names /static serves)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


# -- query parameters shared by the searches ------------------------------------------------------------

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
InstanceId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="instance id")]


class SearchParams(BaseModel):
    """k and the filters of a search (the library's ``search`` options)."""

    k: int
    scan: list[str]
    tag: list[str]
    min_points: int | None
    max_points: int | None
    min_extent: float | None
    max_extent: float | None
    proposer: str | None
    all: bool
    min_score: float | None

    def options(self) -> dict[str, Any]:
        return dict(k=self.k, scans=self.scan or None, tags=self.tag or None, min_points=self.min_points,
                    max_points=self.max_points, min_extent=self.min_extent, max_extent=self.max_extent,
                    proposer=self.proposer, all=self.all, min_score=self.min_score)


def _search_params(
    k: Annotated[int, Query(ge=1, le=MAX_K, description=f"hits wanted (1..{MAX_K})")] = 10,
    scan: Annotated[list[Name], Query(max_length=MAX_LIST, description="only these scans (repeatable)")] = [],  # noqa: B006
    tag: Annotated[list[Name], Query(max_length=MAX_LIST, description="only scans with all these tags")] = [],  # noqa: B006
    min_points: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    max_points: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    min_extent: Annotated[float | None, Query(ge=0, le=1e6, description="largest box side, metres")] = None,
    max_extent: Annotated[float | None, Query(ge=0, le=1e6, description="largest box side, metres")] = None,
    proposer: Annotated[Name | None, Query(description="only scans indexed by this proposer")] = None,
    all: Annotated[bool, Query(description="show near-duplicates as hits instead of folding them")] = False,
    min_score: Annotated[float | None, Query(ge=0, le=1, description="minimum calibrated relevance")] = None,
) -> SearchParams:
    return SearchParams(k=k, scan=scan, tag=tag, min_points=min_points, max_points=max_points,
                        min_extent=min_extent, max_extent=max_extent, proposer=proposer, all=all,
                        min_score=min_score)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# -- the app --------------------------------------------------------------------------------------------


def create_app(home: Path | str, *, device: str = "cpu", token: str | None = None,
               collection: "scenegrep.Collection | None" = None, warm: bool = True) -> FastAPI:
    """The FastAPI app serving ``home`` (opened read-only) and the search page.

    Args:
        home: the scenegrep home folder.
        device: where the catalog's encoder runs ("cpu" or "cuda").
        token: when given, every ``/api`` call must carry it (Bearer header or ``?token=``).
        collection: an already open collection of ``home`` to serve instead of opening one (it is closed
            when the app shuts down).
        warm: load the catalog's encoder now, so the first query does not pay for it (an empty home is
            served anyway; its searches say that nothing is indexed yet).

    Raises:
        ScenegrepError: the home cannot be opened.
    """
    col = collection if collection is not None else scenegrep.open(home, device=device)
    service = _Service(col)
    if warm:
        try:
            t0 = time.perf_counter()
            col.embed_text("warm-up")
            log.info("encoder loaded in %.1f s", time.perf_counter() - t0)
        except ScenegrepError as e:
            log.warning("encoder not loaded yet: %s", e)
    static = _static_files(STATIC_DIR)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        col.close()

    # no /docs or /redoc: FastAPI's would load Swagger UI from a CDN (the schema is at /openapi.json)
    app = FastAPI(title="scenegrep", version=str(scenegrep.__version__), lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Semantic search across 3D scans: the JSON API of `scenegrep serve` (see README).")
    app.add_middleware(_BodyLimit, limit=MAX_UPLOAD_BYTES + 64 * 1024)

    # -- errors: always {"error": message} ----------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return _error(e.status, e.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _bug(_request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error serving a request")
        return _error(500, f"unexpected {type(e).__name__} (this is a bug in scenegrep; see the server log)")

    # -- the page -----------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static["index.html"], media_type=_CONTENT_TYPES[".html"],
                            headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name:path}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        path = static.get(name)  # by name from the table: the request never reaches the file system
        if path is None:
            raise ApiError(404, f"no static file {name[:MAX_NAME]!r}")
        cache = "public, max-age=86400" if name.startswith("vendor/") else "no-cache"
        return FileResponse(path, media_type=_CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                            headers={"Cache-Control": cache})

    @app.get("/healthz", response_model=HealthOut, tags=["server"])
    def healthz() -> HealthOut:
        """Liveness: the process answers (no token needed)."""
        return HealthOut(status="ok")

    # -- the API ------------------------------------------------------------------------------------------

    # the token's security scheme is in the schema only when there is a token
    api = APIRouter(prefix="/api", dependencies=[Depends(_token_guard(token))] if token else [],
                    responses={c: r for c, r in _ERRORS.items() if token or c != 401})

    def hit_out(h: Any) -> HitOut:
        return HitOut(id=h.id, scan=h.scan, score=_finite(h.score) or 0.0, relevance=_finite(h.relevance),
                      n_points=h.n_points, bbox=[float(x) for x in h.bbox], mask_score=float(h.mask_score),
                      thumbnail_url=f"/api/instances/{h.id}/thumbnail" if h.thumbnail else None,
                      points_url=f"/api/instances/{h.id}/points", folded=list(h.folded))

    def searched(query: str, run: Callable[["scenegrep.Collection"], list]) -> SearchOut:
        t0 = time.perf_counter()
        hits = service.call(run)
        return SearchOut(query=query, hits=[hit_out(h) for h in hits],
                         took_ms=round(1000 * (time.perf_counter() - t0), 3))

    @api.get("/search", response_model=SearchOut, tags=["search"])
    def search(
        params: Annotated[SearchParams, Depends(_search_params)],
        q: Annotated[str | None, Query(max_length=MAX_QUERY_CHARS, description="the text query")] = None,
        like: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="query by example: an instance id")] = None,
        templates: Annotated[bool, Query(description="average the text over prompt templates")] = False,
    ) -> SearchOut:
        """Rank instances across all scans by a text (`q`) or like a stored instance (`like`)."""
        opts = params.options()
        if (q is None) == (like is None):
            raise ApiError(400, "give exactly one of q (a text) or like (an instance id)")
        if like is not None:
            return searched(f"like {like}", lambda col: col.like(like, **opts))
        return searched(q, lambda col: col.search(q, templates=templates, **opts))

    @api.post("/search/image", response_model=SearchOut, tags=["search"])
    def search_image(params: Annotated[SearchParams, Depends(_search_params)],
                     photo: Annotated[UploadFile, File(description=f"JPEG/PNG, at most {MAX_UPLOAD_BYTES // 2**20} MiB")]
                     ) -> SearchOut:
        """Rank instances by a photo, embedded by the catalog encoder's image tower."""
        data = photo.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"the photo is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        if not data:
            raise ApiError(400, "the photo is empty")
        return searched("photo", lambda col: col.search_image(data, **params.options()))

    def details(col: "scenegrep.Collection", iid: int) -> InstanceOut:
        d = col.instance(iid)
        return InstanceOut(id=d.id, scan=d.scan, n_points=d.n_points, bbox=[float(x) for x in d.bbox],
                           mask_score=float(d.mask_score), searchable=d.searchable, best_frame=d.best_frame,
                           mask_index=d.mask_index, scan_source=d.scan_source, proposer=d.proposer,
                           mask_method_2d=d.mask_method_2d,
                           thumbnail_url=f"/api/instances/{d.id}/thumbnail" if d.thumbnail else None,
                           points_url=f"/api/instances/{d.id}/points")

    @api.get("/instances/{iid}", response_model=InstanceOut, tags=["instances"])
    def instance(iid: InstanceId) -> InstanceOut:
        """Everything the catalog knows about one instance (`scenegrep show --json`; the thumbnail as a URL)."""
        return service.call(lambda col: details(col, iid))

    @api.get("/instances/{iid}/points", tags=["instances"], response_class=Response, responses={200: _BINARY})
    def instance_points(iid: InstanceId,
                        format: Annotated[Literal["ply", "npz", "bin"], Query(description="file format")] = "ply",
                        ) -> Response:
        """The instance's exact points: `ply` and `npz` as `scenegrep export` writes them, `bin` in the
        page's compact format (README)."""
        def get(col: "scenegrep.Collection") -> bytes:
            pts = col.points(iid)
            if format == "bin":
                return encode_points(pts.xyz, pts.rgb, pts.indices, total=len(pts.indices))
            with tempfile.TemporaryDirectory(prefix="scenegrep-serve-") as tmp:
                return pts.save(Path(tmp) / f"instance-{iid}.{format}").read_bytes()

        return Response(service.call(get), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="instance-{iid}.{format}"'})

    @api.get("/instances/{iid}/thumbnail", tags=["instances"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG"}})
    def thumbnail(iid: InstanceId) -> Response:
        """The JPEG crop of the instance's best view (404 when it has none)."""
        def get(col: "scenegrep.Collection") -> bytes:
            path = col.thumbnail(iid)
            if path is None:
                raise ApiError(404, f"instance {iid} has no thumbnail")
            return path.read_bytes()

        return Response(service.call(get), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/scans", response_model=list[ScanOut], tags=["scans"])
    def scans() -> list[ScanOut]:
        """The indexed scans (`scenegrep scans --json`, without the indexing details)."""
        return [ScanOut(name=s.name, status=s.status, instances=s.instances, searchable=s.searchable,
                        points=s.point_count, frames=s.frame_count, layout=s.layout, source=s.source_path,
                        indexed_at=s.indexed_at.isoformat() if s.indexed_at else None, tags=list(s.tags),
                        proposer=s.info.get("proposer"), mask_method_2d=s.info.get("mask_method_2d"),
                        preset=s.info.get("preset"), points_url=f"/api/scans/{quote(s.name, safe='')}/points")
                for s in service.call(lambda col: col.scans())]

    @api.get("/scans/{name}/points", tags=["scans"], response_class=Response, responses={200: _BINARY})
    def scan_points(name: Annotated[str, PathParam(max_length=MAX_NAME, description="scan name")],
                    max_points: Annotated[int | None, Query(ge=1, le=MAX_DISPLAY_POINTS,
                                                            description="subsample to at most this many")] = None,
                    ) -> Response:
        """The scan's cloud in the `bin` format, subsampled (the same points every time) when it has more
        than `max_points`; a scan of more than the display limit needs `max_points`."""
        data = service.call(lambda col: service.scan_cloud(col, name, max_points))
        return Response(data, media_type="application/octet-stream")

    @api.get("/stats", tags=["server"])
    def stats() -> dict[str, Any]:
        """Counts (scans, instances, searchable, vectors), the encoder, segments, bytes on disk."""
        return _jsonable(service.call(lambda col: col.stats()))

    app.include_router(api)
    app.state.service = service
    return app


def _jsonable(o: Any) -> Any:
    """``o`` with numpy values, paths and dates as plain JSON values (non-finite floats as null)."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float):
        return _finite(o)
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if hasattr(o, "item"):
        return _jsonable(o.item())
    if hasattr(o, "tolist"):
        return _jsonable(o.tolist())
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)
