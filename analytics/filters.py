"""The filter operators, on their own: no pandas, so the lake's readers and the run's
checks can use them without importing it."""

from __future__ import annotations

from typing import Any

Filter = tuple[str, str, Any]


def _isin(a: Any, values: Any) -> Any:
    """Membership for a pandas/dask Series, a pyarrow expression, or a plain value."""
    return a.isin(list(values)) if hasattr(a, "isin") else a in values


#: The filter operators, defined once: the apps' filters, the lake's partition pruning
#: (plain values), its row filters (pyarrow expressions) and frames (pandas, dask).
FILTER_OPS = {
    "=": lambda a, v: a == v,
    "==": lambda a, v: a == v,
    "!=": lambda a, v: a != v,
    "<": lambda a, v: a < v,
    "<=": lambda a, v: a <= v,
    ">": lambda a, v: a > v,
    ">=": lambda a, v: a >= v,
    "in": _isin,
    "not in": lambda a, v: ~_isin(a, v) if hasattr(a, "isin") else a not in v,
    "between": lambda a, v: (a >= v[0]) & (a <= v[1]),
}
