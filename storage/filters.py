"""Which instances a search may return: :class:`InstanceFilter`, and the set-based SQL that lists them.

A filter is applied inside FAISS (storage/query.py turns the ids into one ``IDSelectorBatch`` per
segment), never by post-filtering a short list, so a filtered query returns k hits whenever k exist.
The ids come from one Core statement over the covering index ``ix_instances_filter`` (scan, searchable,
segment, point count, extent), fetched at once as scalars: no ORM rows.

Imports SQLAlchemy but not FAISS; the dataclass itself is plain.
"""

from __future__ import annotations

import math
from itertools import chain
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import JSON, Select, cast, func, select
from sqlalchemy.orm import Session

from scenegrep.storage.catalog import STATUS_INDEXED, InstanceRow, ScanRow

__all__ = ["InstanceFilter", "filtered_ids", "fetch_ints"]

_I = InstanceRow.__table__
_S = ScanRow.__table__


def _names(value: Iterable[str] | str | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # one name, not its characters
        value = (value,)
    out = tuple(dict.fromkeys(str(v) for v in value))
    if any(not v for v in out):
        raise ValueError(f"{what} must be non-empty strings")
    return out


def _bound(value: float | int | None, what: str, integer: bool) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number, got {value!r}")
    number = int(value) if integer else float(value)
    if integer and number != value:
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True)
class InstanceFilter:
    """Conditions an instance must meet to be searched; every given condition must hold (AND).

    Attributes:
        scans: only instances of these indexed scans (an unknown name is a NotFoundError); None: all;
            an empty tuple: none.
        tags: only instances whose scan carries ALL of these tags (``scan.json``'s tags); empty: any.
        min_points, max_points: bounds (inclusive) on the instance's point count.
        min_extent, max_extent: bounds (inclusive, metres) on the largest side of its bounding box.
        proposer: only instances of scans whose info records this ``proposer`` name (e.g. "mask3d").
    """

    scans: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    min_points: int | None = None
    max_points: int | None = None
    min_extent: float | None = None
    max_extent: float | None = None
    proposer: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once here
        set_(self, "scans", _names(self.scans, "scan names"))
        set_(self, "tags", _names(self.tags, "tags") or ())
        set_(self, "min_points", _bound(self.min_points, "min_points", True))
        set_(self, "max_points", _bound(self.max_points, "max_points", True))
        set_(self, "min_extent", _bound(self.min_extent, "min_extent", False))
        set_(self, "max_extent", _bound(self.max_extent, "max_extent", False))
        if self.proposer is not None and not str(self.proposer):
            raise ValueError("proposer must be a non-empty string")
        for lo, hi in (("min_points", "max_points"), ("min_extent", "max_extent")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is above {hi} ({b})")

    @property
    def is_empty(self) -> bool:
        """True when the filter allows every searchable instance."""
        return self == InstanceFilter()

    def with_scans(self, scans: Iterable[str] | None) -> InstanceFilter:
        """This filter further restricted to ``scans`` (None: unchanged; both given: their intersection,
        which may be empty: then nothing passes)."""
        names = _names(scans, "scan names")
        if names is None:
            return self
        if self.scans is not None:
            names = tuple(n for n in self.scans if n in set(names))
        return replace(self, scans=names)


def _statement(s: Session, f: InstanceFilter) -> Select:
    # imported here: reads imports this module's users, never the other way round
    from scenegrep.storage.reads import indexed_scan_ids

    stmt = (
        select(_I.c.id, _I.c.segment_id)
        .join(_S, _S.c.id == _I.c.scan_id)
        .where(_S.c.status == STATUS_INDEXED, _I.c.searchable.is_(True), _I.c.segment_id.is_not(None))
    )
    if f.scans is not None:
        stmt = stmt.where(_I.c.scan_id.in_(list(indexed_scan_ids(s, f.scans).values()) if f.scans else []))
    postgresql = s.get_bind().dialect.name == "postgresql"  # the JSON functions differ; the rest is shared
    if f.tags:
        if postgresql:
            each = func.json_array_elements_text(cast(_S.c.tags_json, JSON)).table_valued("value")
        else:
            each = func.json_each(_S.c.tags_json).table_valued("value")
        have = select(func.count(func.distinct(each.c.value))).where(each.c.value.in_(f.tags)).scalar_subquery()
        stmt = stmt.where(have == len(f.tags))
    if f.proposer is not None:
        if postgresql:
            stmt = stmt.where(cast(_S.c.info_json, JSON)["proposer"].as_string() == f.proposer)
        else:
            stmt = stmt.where(func.json_extract(_S.c.info_json, "$.proposer") == f.proposer)
    if f.min_points is not None:
        stmt = stmt.where(_I.c.point_count >= f.min_points)
    if f.max_points is not None:
        stmt = stmt.where(_I.c.point_count <= f.max_points)
    if f.min_extent is not None:
        stmt = stmt.where(_I.c.extent >= f.min_extent)
    if f.max_extent is not None:
        stmt = stmt.where(_I.c.extent <= f.max_extent)
    return stmt


def filtered_ids(s: Session, f: InstanceFilter) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, segment_ids)``: (n,) int64 each, the live searchable instances ``f`` allows and their segments.

    Raises:
        NotFoundError: ``f.scans`` names a scan that is not indexed.
    """
    arr = fetch_ints(s, _statement(s, f), 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def fetch_ints(s: Session, stmt: Select, width: int) -> np.ndarray:
    """(n, width) int64 rows of an all-integer SELECT, fetched at once on the session's own DB-API
    connection: SQLAlchemy's Row objects cost more than SQLite itself for 10^5 ids."""
    conn = s.connection()
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    # SQLite's driver takes positional "?" parameters, psycopg named "%(name)s" ones
    if compiled.positional:
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    else:
        params = compiled.params
    cursor = conn.connection.driver_connection.execute(str(compiled), params)
    try:
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return np.fromiter(chain.from_iterable(rows), np.int64, count=width * len(rows)).reshape(-1, width)
