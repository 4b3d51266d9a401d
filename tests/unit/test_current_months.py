"""Which months a run with nothing new may skip: those built from exactly their landed
files, grouped by the batch that built them (flows.pipeline.current_months, pure)."""

from __future__ import annotations

import pytest

from riverlake.flows.pipeline import current_months, file_identity, landing_order, plan_month

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


# ------------------------------------------------ which months curate only their new files

M = "s3://lake/landing/flights/year=2013/month=01"


def files(*names_sizes: tuple[str, int]) -> dict[str, int]:
    return {f"{M}/{n}": s for n, s in names_sizes}


BUILT_JAN = {"files": "fp", "batch": "B1", "landed": {"2013-01-01.csv": 10, "2013-01-02.csv": 12},
             "joins": {"weather": 3}}  # fmt: skip


def plan(built=BUILT_JAN, landed=None, quarantined="fp", row_wise=True, declaration=None):
    landed = landed or files(("2013-01-01.csv", 10), ("2013-01-02.csv", 12),
                             ("2013-01-03.csv", 9))  # fmt: skip
    return plan_month(built, landed, quarantined, row_wise, declaration)


def test_a_month_with_only_new_files_after_the_built_ones_curates_just_those():
    p = plan()
    assert p.new == [f"{M}/2013-01-03.csv"] and len(p.files) == 3
    # numbers sort by value: update-10 comes after update-9
    built = {**BUILT_JAN, "landed": {"d.update-9.csv": 5}}
    p = plan(built, files(("d.update-9.csv", 5), ("d.update-10.csv", 4)))
    assert p.new == [f"{M}/d.update-10.csv"]


def test_a_month_with_nothing_new_is_left_as_it_is():
    p = plan(landed=files(("2013-01-01.csv", 10), ("2013-01-02.csv", 12)))
    assert p.new == [] and "nothing new" in p.why


@pytest.mark.parametrize(
    ("case", "kwargs", "why"),
    [
        ("never built", {"built": None}, "never built"),
        ("built before file lists", {"built": {"files": "fp", "batch": "B0"}}, "no list"),
        ("steps not row-wise", {"row_wise": False}, "not row-wise"),
        ("quarantine out of step", {"quarantined": "other"}, "quarantine"),
        ("quarantine never written", {"quarantined": None}, "quarantine"),
        ("a built file changed", {"landed": files(("2013-01-01.csv", 11), ("2013-01-02.csv", 12),
                                                  ("2013-01-03.csv", 9))}, "changed"),
        ("a built file is gone", {"landed": files(("2013-01-02.csv", 12),
                                                  ("2013-01-03.csv", 9))}, "gone"),
        ("the declaration changed", {"declaration": "other"}, "declaration"),
        ("a new file sorts before a built one", {"landed": files(
            ("2013-01-01.csv", 10), ("2013-01-02.csv", 12), ("2013-01-01b.csv", 3))}, "sorts"),
    ],
)  # fmt: skip
def test_a_month_is_rebuilt_whole_when_merging_could_differ(case, kwargs, why):
    p = plan(**kwargs)
    assert p.new is None, case
    assert why in p.why, (case, p.why)
    assert len(p.files) == len(kwargs.get("landed") or plan().files)


def test_equal_numbers_in_names_sort_by_name_the_same_way_every_time():
    built = {**BUILT_JAN, "landed": {"f1.csv": 5}}
    p = plan(built, files(("f1.csv", 5), ("f01.csv", 4)))  # f01 == f1 by number
    assert p.new is None and "sorts before" in p.why  # the name decides: f01 first
    assert p.files == [f"{M}/f01.csv", f"{M}/f1.csv"]  # the order a whole rebuild reads
    assert landing_order("a1.csv") < landing_order("a1.csv2")  # no int-to-text comparison


def test_a_file_corrected_to_the_same_size_is_another_file():
    before = {"size": 120, "ETag": '"9b2cf535f27731c974343645a3985328"'}
    after = {"size": 120, "ETag": '"5d41402abc4b2a76b9719d911017c592"'}
    assert file_identity(before) == "120:9b2cf535f27731c974343645a3985328"
    assert file_identity(before) != file_identity(after)
    built = {**BUILT_JAN, "landed": {"d.csv": file_identity(before)}}
    p = plan(built, {f"{M}/d.csv": file_identity(after)})
    assert p.new is None and "changed" in p.why
    assert file_identity({"size": 3, "mtime": 17.5}) == "3:17.5"  # a local lake
