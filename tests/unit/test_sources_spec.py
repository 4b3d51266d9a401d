"""Source specs and connector helpers as data: no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pyarrow as pa
import pytest

from riverlake import pipelines
from riverlake.errors import RiverlakeError
from riverlake.settings import get_settings
from riverlake.sources import spec
from riverlake.sources.base import batch_id, conform
from riverlake.sources.files import landed_name
from riverlake.sources.http import retry_after

pytestmark = pytest.mark.unit


def test_every_pipeline_source_parses_with_placeholders_filled():
    s = get_settings(lake_url="s3://b/lake", api_url="http://api:1", sql_url="sqlite:///x.db")
    specs = {x.name: x for x in pipelines.pipeline_sources("flights", s)}
    assert set(specs) == {"flight_drops", "weather", "planes", "airports", "airlines"}
    assert specs["flight_drops"].url == "s3://b/lake/drops/flights/*.csv.gz"
    assert specs["weather"].url == "http://api:1/weather"
    assert specs["planes"].url == "sqlite:///x.db" and specs["planes"].split_column == "id"
    (events,) = pipelines.pipeline_sources("flight_events", s)
    assert events.kind == "stream" and "stream_seq" in events.arrow_schema().names
    flights = pipelines.pipeline("flights", s)
    assert (flights.profile, flights.freshness) == ("standard", timedelta(days=1))
    assert pipelines.expected_interval("flight_events", s) == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "sql", "source_table": "planes; drop table x"}, "plain SQL identifier"),
        ({"kind": "http", "schema": {"a": "int7"}}, "unknown type 'int7'"),
        ({"kind": "ftp"}, "kind"),
        ({"kind": "http", "schema": None}, "needs a schema"),
        ({"kind": "http", "cursor_field": "a"}, "an http source with a cursor_field needs a key"),
    ],
)
def test_bad_specs_are_refused_in_one_line_naming_the_source(raw, message):
    base = {"name": "src", "table": "t", "url": "u", "schema": {"a": "int64"}}
    with pytest.raises(RiverlakeError, match=r"^source 'src' is misconfigured: ") as e:
        spec.parse_source({**base, **raw}, get_settings())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_env_placeholders_need_the_variable(monkeypatch):
    raw = {"name": "w", "kind": "http", "table": "t", "url": "${env:API_HOST}/x",
           "schema": {"a": "int64"}}  # fmt: skip
    with pytest.raises(RiverlakeError, match="API_HOST is not set"):
        spec.parse_source(raw, get_settings())
    monkeypatch.setenv("API_HOST", "http://h")
    assert spec.parse_source(raw, get_settings()).url == "http://h/x"


def test_retry_after_seconds_and_http_dates():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after(later) <= 30


def test_landed_names_keep_late_updates_after_the_day():
    day = landed_name("s3://b/drops/flights-2013-06-01.csv.gz")
    late = landed_name("/d/flights-2013-06-01.update-1.csv.zst")
    assert (day, late) == ("flights-2013-06-01.csv", "flights-2013-06-01.update-1.csv")
    assert sorted([late, day]) == [day, late]


def test_conform_quarantines_only_the_rows_that_do_not_cast():
    table = pa.table({"id": ["1", "x", "3"], "v": ["1.5", "2", "z"]})
    good, bad = conform(table, pa.schema([("id", pa.int64()), ("v", pa.float64())]), "f.csv")
    assert good.to_pylist() == [{"id": 1, "v": 1.5}]
    assert [b.original for b in bad] == [b'{"id": "x", "v": "2"}', b'{"id": "3", "v": "z"}']


def test_batch_ids_depend_on_state_and_plan():
    assert batch_id("s", {"c": 1}, [1]) == batch_id("s", {"c": 1}, [1])
    assert batch_id("s", {"c": 1}, [1]) != batch_id("s", {"c": 2}, [1])
    assert batch_id("s", None, [1]) != batch_id("s", None, [2])


def test_a_record_without_a_declared_field_is_quarantined_never_loaded_with_a_null():
    from riverlake.sources.base import records_to_table

    schema = pa.schema([("id", pa.int64()), ("v", pa.float64())])
    good, bad = records_to_table([{"id": 1, "v": 1.5}, {"id": 2}], schema, "page1")
    assert good.to_pylist() == [{"id": 1, "v": 1.5}]
    assert [(b.reason, b.original) for b in bad] == [("missing field 'v'", b'{"id": 2}')]
    table, bad = conform(pa.table({"id": ["1", "2"]}), schema, "f.csv")
    assert table.num_rows == 0 and [b.reason for b in bad] == ["missing field 'v'"] * 2


def test_http_clients_share_one_tls_context_per_thread_and_certificate_setting(
    tmp_path, monkeypatch
):
    import threading

    import certifi

    from riverlake.sources import http

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    src = spec.parse_source({"name": "w", "kind": "http", "url": "https://example.test/w",
                             "table": "w", "schema": {"id": "int64"}}, get_settings())  # fmt: skip
    monkeypatch.setattr(http, "_TLS", threading.local())
    made = []
    monkeypatch.setattr(http.httpx, "create_ssl_context",
                        lambda real=http.httpx.create_ssl_context: made.append(real()) or made[-1])  # fmt: skip
    for _ in range(3):
        http._client(src).close()
    assert len(made) == 1  # one per thread ...
    other = threading.Thread(target=lambda: http._client(src).close())
    other.start()
    other.join()
    assert len(made) == 2 and made[0] is not made[1]  # ... each its own
    bundle = tmp_path / "ca.pem"  # another certificate file: another context
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    http._client(src).close()
    assert len(made) == 3 and made[2].verify_mode.name == "CERT_REQUIRED"
