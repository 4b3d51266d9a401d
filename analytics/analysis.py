"""The analysis API: the same calls on pandas and dask DataFrames.

For flows, apps and notebooks. Every function takes a pandas or a dask frame and
returns the same kind (except where the result is small by construction and is
returned as pandas, which the docstring says). Exact results: quantiles are computed
per group after a shuffle, never approximated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from riverlake.analytics.filters import FILTER_OPS, Filter


def is_dask(df: Any) -> bool:
    return hasattr(df, "map_partitions") and hasattr(df, "npartitions")


def filter_rows(df, filters: Sequence[Filter]):
    """Rows matching every ``(column, op, value)``; ops: = != < <= > >= in, not in, between."""
    for col, op, value in filters:
        if op not in FILTER_OPS:
            raise ValueError(f"unknown filter operator {op!r}")
        df = df[FILTER_OPS[op](df[col], value)]
    return df


def aggregate(df, by: Sequence[str], metrics: Mapping[str, tuple[str, str]]):
    """Named aggregations per group: ``metrics={"name": (column, "sum"|"mean"|...)}``."""
    out = df.groupby(list(by), observed=True, dropna=False).agg(**metrics)
    return out.reset_index()


def group_stats(
    df, by: Sequence[str], column: str, quantiles: Sequence[float] = (0.5, 0.9, 0.99)
) -> pd.DataFrame:
    """count, mean, std and exact quantiles of ``column`` per group (pandas result).

    On dask, each partition is reduced to value counts per group, which are summed
    across partitions (a tree reduction, no shuffle); the statistics then come from the
    combined counts exactly, with pandas' linear interpolation between order statistics.
    Fast when values repeat (delays in whole minutes); exact always.
    """
    by = list(by)
    if not is_dask(df):
        g = df.groupby(by, observed=True)[column]
        out = pd.DataFrame({"count": g.count(), "mean": g.mean(), "std": g.std()})
        for q in quantiles:
            out[_qname(q)] = g.quantile(q)
        return out.reset_index().sort_values(by).reset_index(drop=True)
    counts = (
        df[[*by, column]].dropna(subset=[column])
        .groupby([*by, column], observed=True).size().compute()
    )  # fmt: skip
    rows = []
    for key, c in counts.groupby(level=list(range(len(by))), observed=True):
        values = c.index.get_level_values(len(by)).to_numpy(dtype="float64")
        order = np.argsort(values)
        values, n_of = values[order], c.to_numpy()[order]
        n = int(n_of.sum())
        mean = float((values * n_of).sum() / n)
        var = float((n_of * (values - mean) ** 2).sum() / (n - 1)) if n > 1 else np.nan
        cum = np.cumsum(n_of)
        rec = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rec.update(count=n, mean=mean, std=np.sqrt(var))
        for q in quantiles:
            h = (n - 1) * q
            lo, hi = int(np.floor(h)), int(np.ceil(h))
            v_lo = values[np.searchsorted(cum, lo, side="right")]
            v_hi = values[np.searchsorted(cum, hi, side="right")]
            rec[_qname(q)] = v_lo + (h - lo) * (v_hi - v_lo)
        rows.append(rec)
    cols = [*by, "count", "mean", "std", *map(_qname, quantiles)]
    return pd.DataFrame(rows, columns=cols).sort_values(by).reset_index(drop=True)


def _qname(q: float) -> str:
    return f"p{round(q * 100):g}"


def correlation(df, columns: Sequence[str]) -> pd.DataFrame:
    """Pearson correlation matrix of ``columns`` (pandas result)."""
    out = df[list(columns)].astype("float64").corr()
    return out.compute() if is_dask(out) else out


def resample(df, time_column: str, freq: str, metrics: Mapping[str, tuple[str, str]]):
    """Aggregate into fixed time bins (``freq`` like "h", "D", "7D") of ``time_column``.

    Bins are the floor of each timestamp, so no sorted index is needed on dask.
    """
    binned = df.assign(**{time_column: df[time_column].dt.floor(freq)})
    out = aggregate(binned, [time_column], metrics)
    if is_dask(out):
        return out
    return out.sort_values(time_column).reset_index(drop=True)


def rolling(
    series: pd.DataFrame, time_column: str, columns: Sequence[str], window: str, how: str = "mean"
) -> pd.DataFrame:
    """Time-based rolling window (e.g. "7D") over an already aggregated frame.

    A dask frame is computed first: rolling windows run on aggregated time series,
    which are small. Returns pandas, sorted by time.
    """
    if is_dask(series):
        series = series.compute()
    s = series.sort_values(time_column).set_index(time_column)
    rolled = getattr(s[list(columns)].rolling(window), how)()
    return rolled.add_suffix(f"_{how}_{window}").reset_index()
