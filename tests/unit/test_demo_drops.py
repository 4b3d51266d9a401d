"""The demo upstream's daily drops: each day once, and nothing read when all are there."""

from __future__ import annotations

import gzip
import io
from datetime import date

import pandas as pd
import pytest

from riverlake.demo import data as demo_data
from riverlake.demo import drops
from riverlake.settings import get_settings


def test_each_day_is_dropped_once_and_a_delivered_window_reads_no_data(tmp_path, monkeypatch):
    s = get_settings(drops_url=str(tmp_path / "drops"), home=tmp_path)
    got = drops.deliver_drops(s, date(2013, 2, 28), date(2013, 3, 1))
    assert [p.rsplit("/", 1)[1] for p in got] == ["flights-2013-02-28.csv.gz",
                                                  "flights-2013-03-01.csv.gz"]  # fmt: skip
    day = pd.read_csv(io.BytesIO(gzip.decompress((tmp_path / "drops" / "flights-2013-03-01.csv.gz")
                                                 .read_bytes())))  # fmt: skip
    src = demo_data.load("flights")
    assert len(day) == int(((src["month"] == 3) & (src["day"] == 1)).sum()) > 0
    assert len(drops.deliver_drops(s, date(2013, 12, 31), date(2013, 12, 31))) == 1
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "drops").iterdir()}

    def no_read(name):
        raise AssertionError(f"the demo data ({name}) was read")

    monkeypatch.setattr(demo_data, "load", no_read)
    assert drops.deliver_drops(s, date(2013, 2, 28), date(2013, 3, 1)) == []
    assert drops.deliver_drops(s, date(2013, 12, 31), date(2014, 1, 9)) == []  # clipped
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "drops").iterdir()} == before
    with pytest.raises(AssertionError, match="was read"):  # a missing day is read
        drops.deliver_drops(s, date(2013, 3, 1), date(2013, 3, 2))


def test_a_day_made_once_is_copied_to_another_drop_folder_without_reading_the_data(
    tmp_path, monkeypatch
):
    first = get_settings(drops_url=str(tmp_path / "a"), home=tmp_path / "home")
    got = drops.deliver_drops(first, date(2013, 3, 5), date(2013, 3, 6))
    assert len(got) == 2

    def no_read(name):
        raise AssertionError(f"the demo data ({name}) was read")

    monkeypatch.setattr(demo_data, "load", no_read)
    other = get_settings(drops_url=str(tmp_path / "b"), home=tmp_path / "home")
    assert [p.rsplit("/", 1)[1] for p in drops.deliver_drops(other, date(2013, 3, 5),
                                                             date(2013, 3, 5))] == [
        "flights-2013-03-05.csv.gz"]  # fmt: skip
    a, b = (tmp_path / x / "flights-2013-03-05.csv.gz" for x in "ab")
    assert a.read_bytes() == b.read_bytes() and len(gzip.decompress(b.read_bytes())) > 10_000
    assert sorted(p.name for p in (tmp_path / "home" / "demo" / "drops").iterdir()) == [
        "flights-2013-03-05.csv.gz",
        "flights-2013-03-06.csv.gz",
    ]  # fmt: skip, no temporaries
    with pytest.raises(AssertionError, match="was read"):  # a day not made yet is read
        drops.deliver_drops(other, date(2013, 3, 7), date(2013, 3, 7))
