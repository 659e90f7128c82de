""":class:`~scenegrep.storage.filters.InstanceFilter` as a Milvus boolean expression.

Each condition maps to one clause over the collection's scalar fields (storage/milvus.py), joined by
``and``; the same semantics as the catalog's SQL (storage/filters.py): scans by name, ALL tags, inclusive
point and extent bounds, the proposer by equality. Strings are written as double-quoted literals with
backslashes and quotes escaped, so no name or tag can change the expression's structure.
"""

from __future__ import annotations

from scenegrep.storage.filters import InstanceFilter

__all__ = ["milvus_expression", "quote", "NOTHING"]

NOTHING = "id < 0"  # matches no entity: instance ids are >= 1


def quote(value: str) -> str:
    """``value`` as a Milvus string literal."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def _number(value: float) -> str:
    # repr round-trips a double; Milvus parses exponents, but plain digits are the safest common form
    text = repr(float(value))
    return text if "e" not in text else format(float(value), ".330f").rstrip("0").rstrip(".")


def milvus_expression(f: InstanceFilter | None) -> str:
    """The expression selecting what ``f`` allows ("" for no condition, :data:`NOTHING` for an empty
    ``scans``). Does not check that the scans exist: the caller does, against the catalog."""
    if f is None or f.is_empty:
        return ""
    clauses: list[str] = []
    if f.scans is not None:
        if not f.scans:
            return NOTHING
        clauses.append(f"scan in [{', '.join(quote(n) for n in f.scans)}]")
    if f.tags:
        clauses.append(f"array_contains_all(tags, [{', '.join(quote(t) for t in f.tags)}])")
    if f.proposer is not None:
        clauses.append(f"proposer == {quote(f.proposer)}")
    if f.min_points is not None:
        clauses.append(f"points >= {int(f.min_points)}")
    if f.max_points is not None:
        clauses.append(f"points <= {int(f.max_points)}")
    if f.min_extent is not None:
        clauses.append(f"extent >= {_number(f.min_extent)}")
    if f.max_extent is not None:
        clauses.append(f"extent <= {_number(f.max_extent)}")
    return " and ".join(clauses)
