"""A merged month must join as a whole rebuild would: ``joins_changed`` (flows.pipeline)
looks up the month's own join keys in the joined table at the version the month was built
with and at the current one. A real local Delta table at several versions, no mocks."""

from __future__ import annotations

import pandas as pd
import pytest

from riverlake import lake, pipelines
from riverlake.analytics import declared
from riverlake.flows.pipeline import joins_changed

pytestmark = pytest.mark.unit

PLANES = pd.DataFrame({"tailnum": ["N1", "N2"], "year": [2001, 2002],
                       "manufacturer": ["BOEING", "AIRBUS"], "seats": [150, 180]})  # fmt: skip
HELD = pd.DataFrame({"tailnum": ["N1", "N3", None]})  # N3 matched nothing when built


def versions(settings, *frames: pd.DataFrame) -> list[int]:
    """Table planes at one version per frame (each replaces the whole table)."""
    out = []
    for f in frames:
        lake.write_table("planes", f, mode="overwrite_partitions", app_id=None, settings=settings)
        out.append(lake.table("planes", settings).version)
    return out


def check(settings, then: int, now: int, held=HELD) -> str | None:
    p = pipelines.pipeline("flights")
    others = {s.join: 0 for s in p.curated.steps if getattr(s, "join", None)}
    table = declared.to_frame(lake.table("planes", settings, version=now).to_arrow())
    # every other joined table is where it was: only planes is looked at
    return joins_changed(p, held, {**others, "planes": then}, {**others, "planes": now},
                         {"planes": table})  # fmt: skip


def test_rows_for_other_keys_change_nothing_the_month_holds(settings):
    v0, v1 = versions(settings, PLANES, pd.concat([PLANES, PLANES.assign(tailnum="N9")]))
    assert check(settings, v0, v1) is None
    assert check(settings, v1, v1) is None  # same version: not even read


def test_a_changed_or_new_match_for_a_held_key_rebuilds_the_month(settings):
    changed = PLANES.assign(manufacturer=["BOEING CO", "AIRBUS"])  # N1's maker renamed
    new_match = pd.concat([PLANES, PLANES.head(1).assign(tailnum="N3")])  # N3 now matches
    removed = PLANES.tail(1)  # N1 is gone
    v0, v1, v2, v3 = versions(settings, PLANES, changed, new_match, removed)
    for now in (v1, v2, v3):
        why = check(settings, v0, now)
        assert why is not None and why.startswith(f"'planes' changed (version {v0} -> {now})")


def test_a_month_that_cannot_be_checked_is_rebuilt(settings):
    v0, v1 = versions(settings, PLANES, PLANES.assign(seats=[151, 180]))
    assert "is not kept" in check(settings, v0, v1, held=HELD.rename(columns={"tailnum": "t"}))
    p = pipelines.pipeline("flights")
    table = declared.to_frame(lake.table("planes", settings).to_arrow())
    now = {s.join: 0 for s in p.curated.steps if getattr(s, "join", None)} | {"planes": v1}
    then = {k: v for k, v in now.items() if k != "planes"}
    assert "no record of the version" in joins_changed(p, HELD, then, now, {"planes": table})
