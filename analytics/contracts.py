"""Data contracts (pandera) and the split of a batch into good and quarantined rows.

A contract (built from a pipeline's declaration by
:func:`riverlake.analytics.declared.contract`) declares types, nullability, ranges,
allowed values and key uniqueness. :func:`split` checks every row of a pandas
partition (on dask, run it per partition with ``map_partitions``): rows that break a
check leave the batch with the name of the first check they failed; the others go on.
:func:`quality_report` counts, per check, the rows that passed and failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # imported where a contract is checked: a run with no data work skips it
    import pandera.pandas as pa


def contract_checks(schema: pa.DataFrameSchema) -> list[str]:
    """Every check of a contract, named as in the quarantine (``column:check``)."""
    names = []
    for col, c in schema.columns.items():
        names.append(f"{col}:dtype")
        if not c.nullable:
            names.append(f"{col}:not_nullable")
        names += [f"{col}:{check.error or check.name}" for check in c.checks]
    if schema.unique:
        names.append(f"{'+'.join(schema.unique)}:unique")
    return names


@dataclass
class Split:
    good: pd.DataFrame
    bad: pd.DataFrame  # the failed rows, plus a ``failed_check`` column
    failures: dict[str, int]  # check -> rows failed (a row counts once per check it fails)


def _check_name(row: pd.Series, unique: list[str]) -> str:
    if row["check"] == "multiple_fields_uniqueness":
        return f"{'+'.join(unique)}:unique"
    check = row["check"]
    if str(check).startswith("dtype("):
        check = "dtype"
    return f"{row['column']}:{check}"


def split(df: pd.DataFrame, schema: pa.DataFrameSchema) -> Split:
    """Check every row of ``df``; return the good rows and the failed rows with their check.

    A column-level failure (a wrong dtype, a missing column) fails every row: the
    batch is not what the contract describes.
    """
    from pandera.errors import SchemaErrors

    df = df.reset_index(drop=True)
    try:
        schema.validate(df, lazy=True)
        return Split(df, df.iloc[:0].assign(failed_check=pd.Series(dtype="string")), {})
    except SchemaErrors as exc:
        cases = exc.failure_cases
    unique = list(schema.unique or [])
    cases = cases.assign(name=cases.apply(_check_name, axis=1, unique=unique))
    failures = cases.groupby("name").size().astype(int).to_dict()
    whole = cases[cases["index"].isna()]
    first: dict[int, str] = {}
    if len(whole):
        first = dict.fromkeys(range(len(df)), whole["name"].iloc[0])
        failures = {n: len(df) for n in whole["name"]} | failures
    for idx, name in zip(cases["index"], cases["name"], strict=True):
        if pd.notna(idx):
            first.setdefault(int(idx), name)
    bad_idx = sorted(first)
    mask = df.index.isin(bad_idx)
    bad = df[mask].assign(failed_check=pd.Series([first[i] for i in bad_idx], index=bad_idx,
                                                 dtype="string"))  # fmt: skip
    return Split(df[~mask].reset_index(drop=True), bad.reset_index(drop=True), failures)


def quality_report(
    checked: int, failures: dict[str, int], schema: pa.DataFrameSchema
) -> pd.DataFrame:
    """Per check: rows checked, passed and failed (also for checks nothing failed)."""
    names = contract_checks(schema)
    names += [n for n in failures if n not in names]
    failed = [int(failures.get(n, 0)) for n in names]
    return pd.DataFrame(
        {
            "check": pd.array(names, dtype="string"),
            "rows_checked": checked,
            "rows_failed": failed,
            "rows_passed": [checked - f for f in failed],
        }
    )
