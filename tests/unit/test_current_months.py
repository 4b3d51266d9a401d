"""Which months a run with nothing new may skip: those built from exactly their landed
files, grouped by the batch that built them (flows.pipeline.current_months, pure)."""

from __future__ import annotations

import pytest

from riverlake.flows.pipeline import current_months

pytestmark = pytest.mark.unit

BUILT = {
    "2013-01": {"files": "a1", "batch": "B1"},
    "2013-02": {"files": "b1", "batch": "B1"},
    "2013-03": {"files": "c2", "batch": "B2"},
}


def test_months_built_from_the_same_files_are_current_by_their_batch():
    assert current_months(BUILT, {"2013-01": "a1"}) == {"B1": ["2013-01"]}
    assert current_months(BUILT, {"2013-02": "b1", "2013-03": "c2"}) == {
        "B1": ["2013-02"], "B2": ["2013-03"]}  # fmt: skip


def test_one_month_with_other_files_or_never_built_makes_nothing_current():
    assert current_months(BUILT, {"2013-01": "a1", "2013-02": "b2"}) == {}  # a late file
    assert current_months(BUILT, {"2013-01": "a1", "2013-04": "d1"}) == {}  # never built
    assert current_months({}, {"2013-01": "a1"}) == {}
