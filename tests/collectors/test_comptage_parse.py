"""The national Comptage des mobilités CSV parser, on the official examples and real counts."""

from __future__ import annotations

import io
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.comptage_parse import (
    classify_vehicles,
    parse_channels,
    parse_measures,
    parse_measures_stream,
    parse_sites,
)
from feed.errors import ParseError
from feed.model import ChannelRecord, MeasurementRecord, Quarantined, SiteRecord

DATA = Path(__file__).parent.parent / "data" / "comptage"
UTC = UTC
ST_ETIENNE_COLUMNS = {"code_pme": "channel_id", "horodate": "start_datetime", "debit": "count"}


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def split(items):
    good = [i for i in items if not isinstance(i, Quarantined)]
    bad = [i for i in items if isinstance(i, Quarantined)]
    return good, bad


# --------------------------------------------------------------------------- real samples


def test_official_site_example():
    items = parse_sites(read("site.exemple-valide.csv"), source="example")
    assert items.separator == ","
    assert list(items) == [
        SiteRecord(
            external_id="C01-Baix",
            name="Baix",
            insee="72010",
            lon=1.452323,
            lat=46.59698,
            metadata={
                "parent_site_id": "C-Baix",
                "external_ids": ["07022-AC-001"],
                "infrastructure_type": "GREENWAY",
            },
        )
    ]
    assert items.encoding == "utf-8" and items.notices == []


def test_eco_compteur_sites():
    sites = list(parse_sites(read("site.exemple-valide-eco-compteur.csv"), source="eco"))
    assert [(s.external_id, s.name, s.lon, s.lat) for s in sites] == [
        ("300014141", "Champtoceaux", -1.2684985, 47.33892),
        ("300014151", "Mauves sur Loire", -1.3744379, 47.28895),
        ("300014142", "Rue Gambetta", -1.551592, 47.213215),
    ]
    assert all(s.insee is None and s.metadata == {} for s in sites)


def test_official_channel_example():
    (channel,) = parse_channels(read("channel.exemple-valide.csv"), source="example")
    # mobility_type "E-SCOOTER,PEDESTRIAN": first value, lower-cased; mixed → all classes
    assert channel == ChannelRecord(
        site_external_id="C01-Baix",
        external_id="C-C-01-Baix",
        direction="SW",  # the compass direction wins over provider_direction_code "IN"
        direction_name="De Gare du Nord vers Gare de l'Est",  # provider_direction_name
        vehicle_class="all",
        mobility_type="e-scooter",
        time_step=900,
    )


def test_eco_compteur_channels():
    channels = list(parse_channels(read("channel.exemple-valide-eco-compteur.csv"), source="eco"))
    assert len(channels) == 10 and all(isinstance(c, ChannelRecord) for c in channels)
    assert {c.time_step for c in channels} == {86400}
    assert Counter(c.mobility_type for c in channels) == {"bike": 6, "pedestrian": 4}
    by_id = {c.external_id: c for c in channels}
    # no compass direction: provider_direction_code (IN/OUT)
    assert by_id["353226361"].direction == "IN" and by_id["353226361"].site_external_id == "300014141"
    assert by_id["353226417"].direction == "OUT" and by_id["353226417"].site_external_id == "300014151"


def test_official_measure_example():
    items = list(parse_measures(read("measure.exemple-valide.csv"), source="example"))
    assert len(items) == 9 and all(isinstance(m, MeasurementRecord) for m in items)
    first = items[0]
    assert (first.channel_external_id, first.start, first.length, first.count, first.quality) == (
        "C-C-01-Baix",
        datetime(2021, 9, 7, 13, 15, tzinfo=UTC),
        900,
        20,
        "observed",
    )
    # "C-C-01-Baix,C01-Baix,2021-09-07T13:45:00Z,2021-09-07T14:00:00Z," : no counting
    empty = items[6]
    assert (empty.channel_external_id, empty.count, empty.quality) == ("C-C-01-Baix", None, "missing")
    assert [m.count for m in items] == [20, 0, 3, 15, 2, 5, None, 2, 0]


def test_eco_compteur_measures_a_year_of_daily_counts():
    channels = parse_channels(read("channel.exemple-valide-eco-compteur.csv"), source="eco")
    steps = {c.external_id: c.time_step for c in channels}
    items = list(parse_measures(read("measure.exemple-valide-eco-compteur.csv"), source="eco", time_steps=steps))
    assert len(items) == 3650 and all(isinstance(m, MeasurementRecord) for m in items)
    totals = Counter()
    for m in items:
        totals[m.channel_external_id] += m.count
    assert totals["353226362"] == 1481424
    assert totals["353226397"] == 1064164
    assert totals["353226361"] == 3848
    # line 180: 353226361,CPTTEST2031,2022-06-28T00:00:00+02:00,2022-06-29T00:00:00+02:00,21
    m = items[178]
    assert m.start == datetime(2022, 6, 28, tzinfo=timezone(timedelta(hours=2))) and m.count == 21
    # the file gives 27 March 2022 (spring forward) as 23 hours: length is end - start
    lengths = Counter(m.length for m in items)
    assert lengths == {86400: 3640, 82800: 10}
    assert all(m.start.date().isoformat() == "2022-03-27" for m in items if m.length == 82800)


def test_st_etienne_hourly_flows_map_onto_measures():
    # header code_pme;horodate;debit: channel, naive local start, count; no end, no step
    with pytest.raises(ParseError) as err:
        parse_measures(read("st-etienne_debits-horaires_EXCERPT-first-2000-rows.csv"), source="ste")
    assert "channel_id, start_datetime, count" in err.value.reason

    items = parse_measures(
        read("st-etienne_debits-horaires_EXCERPT-first-2000-rows.csv"),
        source="ste",
        columns=ST_ETIENNE_COLUMNS,
        default_time_step=3600,
    )
    assert items.separator == ";"
    measures = list(items)
    assert len(measures) == 2000 and all(isinstance(m, MeasurementRecord) for m in measures)
    first = measures[0]  # MYL42.E1;2020-02-04 19:00:00;2041.0
    assert first.channel_external_id == "MYL42.E1"
    assert first.start == datetime(2020, 2, 4, 18, 0, tzinfo=UTC)  # Paris winter time, UTC+1
    assert (first.length, first.count, first.quality) == (3600, 2041, "observed")  # 2041.0 is whole
    assert Counter(m.channel_external_id for m in measures) == {
        "MYL42.E1": 264,
        "MYL42.E2": 253,
        "MYL42.Q2": 259,
        "MYR69.31": 264,
        "MYL42.51": 240,
        "MYL42.52": 240,
        "MYL42.Q1": 240,
        "MYR69.32": 240,
    }
    last = measures[-1]  # MYL42.E2;2020-02-14 12:00:00;2596.0
    assert (last.channel_external_id, last.start, last.count) == (
        "MYL42.E2",
        datetime(2020, 2, 14, 11, 0, tzinfo=UTC),
        2596,
    )


def test_streaming_from_chunks_and_files_matches_bytes():
    data = read("measure.exemple-valide-eco-compteur.csv")
    whole = list(parse_measures(data, source="eco", default_time_step=86400))
    chunks = (data[i : i + 997] for i in range(0, len(data), 997))
    assert list(parse_measures_stream(chunks, source="eco")) == whole
    assert list(parse_measures_stream(io.BytesIO(data), source="eco")) == whole


def test_parser_is_lazy():
    def chunks():
        yield read("measure.exemple-valide.csv")
        raise AssertionError("read past the data the caller asked for")

    items = parse_measures_stream(chunks(), source="lazy")
    assert next(items).count == 20


# --------------------------------------------------------------------------- encodings, separators


def test_bom_and_semicolons_and_decimal_commas():
    text = read("measure.exemple-valide.csv").decode().replace(",", ";")
    text = text.replace("13:45:00Z;15", "13:45:00Z;12,4")
    items = parse_measures(b"\xef\xbb\xbf" + text.encode(), source="fr")
    measures = list(items)
    assert items.separator == ";" and items.encoding == "utf-8"
    assert len(measures) == 9
    assert (measures[3].count, measures[3].quality) == (12, "estimated")  # a computed value, rounded


def test_latin1_bytes_in_a_utf8_file_are_read_and_reported(caplog):
    latin1 = read("channel.exemple-valide-eco-compteur.csv").decode("utf-8").encode("cp1252")
    assert "Piétons".encode("cp1252") in latin1
    with caplog.at_level(logging.WARNING, logger="collectors.comptage_parse"):
        items = parse_channels(latin1, source="lying")
        channels = list(items)
    assert len(channels) == 10 and all(isinstance(c, ChannelRecord) for c in channels)
    assert items.encoding == "utf-8+windows-1252"
    assert len(items.notices) == 1 and "Windows-1252" in items.notices[0] and "line 2" in items.notices[0]
    assert "not UTF-8" in caplog.text

    site = "site_id,site_name,xlong,ylat\nS1,Hérépian,3.1152,43.5961\n".encode("latin-1")
    (record,) = parse_sites(site, source="lying")
    assert record.name == "Hérépian"


def test_declared_windows_1252():
    data = "site_id;site_name;xlong;ylat\nS1;Pézenas;3,4240;43,4604\n".encode("cp1252")
    items = parse_sites(data, source="cp", encoding="windows-1252")
    assert [(s.name, s.lon, s.lat) for s in items] == [("Pézenas", 3.424, 43.4604)]
    assert items.encoding == "cp1252" and items.notices == []


def test_bytes_neither_utf8_nor_cp1252_quarantine_the_row():
    data = read("measure.exemple-valide.csv").replace(
        b"C-C-02-Baix,C02-Baix,2021-09-07T13:15", b"C-C-02\x81Baix,C02-Baix,2021-09-07T13:15"
    )
    good, bad = split(list(parse_measures(data, source="x")))
    assert len(good) == 8
    assert [(q.reason, q.record_ref) for q in bad] == [("bytes are neither UTF-8 nor Windows-1252", "line 3")]


def test_utf16_is_refused():
    data = read("site.exemple-valide.csv").decode().encode("utf-16")
    with pytest.raises(ParseError, match="UTF-16"):
        parse_sites(data, source="u16")


# --------------------------------------------------------------------------- bad rows


BAD_MEASURES = (
    "channel_id,counter_id,start_datetime,end_datetime,count\n"
    "C1,K1,2021-09-07T13:15:00Z,2021-09-07T13:30:00Z,20\n"  # 2 ok
    "C1,K1,2021-09-07 25:00,2021-09-07T13:45:00Z,3\n"  # 3 unparseable date
    "C1,K1,2021-09-07T13:45:00Z,2021-09-07T14:00:00Z,-3\n"  # 4 negative count
    ",K1,2021-09-07T14:00:00Z,2021-09-07T14:15:00Z,1\n"  # 5 missing channel
    "C1,K1,2021-09-07T14:15:00Z,2021-09-07T14:30:00Z,1,extra\n"  # 6 too many columns
    '"C1"x,K1,2021-09-07T14:30:00Z,2021-09-07T14:45:00Z,1\n'  # 7 broken quoting
    "C1,K1,2021-09-07T15:00:00Z,2021-09-07T14:45:00Z,1\n"  # 8 end before start
    "C1,K1,2021-09-07T15:00:00Z,2021-09-07T15:15:00Z,NaN\n"  # 9 not finite
    "\n"  # 10 blank: skipped
    "C1,K1,2021-09-07T15:15:00Z,2021-09-07T15:30:00Z,7\n"  # 11 ok
    "C1,K1,2021-09-07T15:30:00Z,2021-09-07T15:4"  # 12 truncated last line
)


def test_bad_rows_are_quarantined_and_the_others_kept():
    good, bad = split(list(parse_measures(BAD_MEASURES.encode(), source="bad")))
    assert [(m.start.hour, m.start.minute, m.count) for m in good] == [(13, 15, 20), (15, 15, 7)]
    refs = {q.record_ref: q for q in bad}
    assert list(refs) == ["line 3", "line 4", "line 5", "line 6", "line 7", "line 8", "line 9", "line 12"]
    assert "not an ISO 8601 date-time" in refs["line 3"].reason
    assert refs["line 3"].excerpt == "C1,K1,2021-09-07 25:00,2021-09-07T13:45:00Z,3"
    assert refs["line 4"].reason == "negative count -3"
    assert refs["line 5"].reason == "missing required value channel_id"
    assert refs["line 6"].reason == "expected 5 columns, found 6"
    assert refs["line 7"].reason.startswith("malformed CSV")
    assert "not after start_datetime" in refs["line 8"].reason
    assert "not a finite number" in refs["line 9"].reason
    assert refs["line 12"].excerpt == "C1,K1,2021-09-07T15:30:00Z,2021-09-07T15:4"
    assert refs["line 12"].reason == "expected 5 columns, found 4"


def test_unclosed_quote_at_end_of_file():
    data = read("measure.exemple-valide.csv") + b'\n"C-C-01-Baix,C01-Baix,2021-09-07T14:00:00Z,'
    good, bad = split(list(parse_measures(data, source="x")))
    assert len(good) == 9
    assert bad[0].record_ref == "line 11" and "malformed CSV" in bad[0].reason


def test_multiline_quoted_field_keeps_line_numbers():
    header, row = read("channel.exemple-valide.csv").decode().split("\n", 1)
    row = row.replace("Campagne temporaire aout-septembre 2020", '"Campagne\ntemporaire"')
    broken = row.replace("C-C-01-Baix", "C-C-02-Baix").replace("2020-06-22T10:00:00Z", "hier", 1)
    items = list(parse_channels(f"{header}\n{row}\n{broken}\n".encode(), source="x"))
    assert isinstance(items[0], ChannelRecord)
    assert isinstance(items[1], Quarantined) and items[1].record_ref == "line 4"
    assert "started_at 'hier'" in items[1].reason


def test_missing_required_column_refuses_the_file_at_once():
    data = b"channel_id,counter_id,end_datetime,count\nC1,K1,2021-09-07T13:30:00Z,20\n"
    with pytest.raises(ParseError) as err:
        parse_measures(data, source="feed-42")  # no iteration needed
    assert err.value.source == "feed-42" and err.value.line == 1
    assert "start_datetime" in err.value.reason and "measure" in err.value.reason
    assert str(err.value).startswith("feed-42: line 1: ")


def test_header_problems():
    with pytest.raises(ParseError, match="empty file"):
        parse_sites(b"", source="x")
    with pytest.raises(ParseError, match="duplicate column"):
        parse_sites(b"site_id,site_name,xlong,ylat,xlong\n", source="x")
    assert list(parse_sites(b"site_id,site_name,xlong,ylat\n", source="x")) == []
    # a trailing separator on every line, as some French exports write
    rows = b"site_id;site_name;xlong;ylat;\nS1;Baix;1,45;46,59;\n"
    assert [s.external_id for s in parse_sites(rows, source="x")] == ["S1"]


# --------------------------------------------------------------------------- dates and steps


def test_naive_datetimes_are_paris_local_time_unless_refused():
    data = (
        b"channel_id,start_datetime,end_datetime,count\n"
        b"C1,2022-07-01 08:00:00,2022-07-01 09:00:00,5\n"
        b"C1,2022-10-30 02:30:00,2022-10-30 03:30:00,5\n"  # the repeated hour
        b"C1,2022-03-27 02:30:00,2022-03-27 03:30:00,5\n"  # the skipped hour
    )
    summer, ambiguous, missing = parse_measures(data, source="x")
    assert summer.start == datetime(2022, 7, 1, 6, 0, tzinfo=UTC) and summer.length == 3600
    assert isinstance(ambiguous, Quarantined) and "ambiguous" in ambiguous.reason
    assert isinstance(missing, Quarantined) and "does not exist" in missing.reason

    refused = list(parse_measures(data, source="x", local_timezone=None))
    assert all(isinstance(q, Quarantined) and "no UTC offset" in q.reason for q in refused)


def test_length_from_time_step_when_end_is_empty():
    data = (
        b"channel_id,start_datetime,end_datetime,count\n"
        b"H,2022-03-27T01:00:00+01:00,,10\n"
        b"D,2022-03-27T00:00:00+01:00,,10\n"  # a local day with 23 hours
        b"D,2022-03-28T00:00:00+02:00,,10\n"
        b"U,2022-03-27T00:00:00Z,,10\n"  # a UTC-day series keeps 24 hours
        b"X,2022-03-27T00:00:00Z,,10\n"
    )
    steps = {"H": 900, "D": 86400, "U": 86400}
    h, d1, d2, u, x = parse_measures(data, source="x", time_steps=steps)
    assert h.length == 900
    assert (d1.length, d2.length, u.length) == (82800, 86400, 86400)
    assert isinstance(x, Quarantined) and "time_step of channel 'X' is unknown" in x.reason
    assert parse_measures(data, source="x", time_steps=steps, default_time_step=3600).__next__().length == 900


def test_channel_time_step_and_vehicle_classes():
    data = (
        b"channel_id,site_id,mobility_type,started_at,time_step\n"
        b"A,S,CAR,2020-01-01T00:00:00Z,3600\n"
        b"B,S,TRUCK,2020-01-01T00:00:00Z,900.0\n"
        b'C,S,"CAR,TRUCK",2020-01-01T00:00:00Z,300\n'
        b"D,S,BIKE,2020-01-01T00:00:00Z,\n"
        b"E,S,HGV,2020-01-01T00:00:00Z,7\n"
        b"F,S,,,3600\n"
    )
    a, b, c, d, e, f = parse_channels(data, source="x")
    assert (a.vehicle_class, a.mobility_type, a.time_step) == ("light", "car", 3600)
    assert (b.vehicle_class, b.mobility_type, b.time_step) == ("heavy", "truck", 900)
    assert (c.vehicle_class, c.mobility_type) == ("all", "car")
    assert isinstance(d, Quarantined) and "time_step is empty" in d.reason  # the schema has no default
    assert isinstance(e, Quarantined) and "time_step" in e.reason and "divide a day" in e.reason
    assert isinstance(f, Quarantined) and f.reason == "missing required value started_at"

    d = list(parse_channels(data, source="x", default_time_step=3600))[3]
    assert (d.external_id, d.time_step, d.vehicle_class, d.mobility_type) == ("D", 3600, "all", "bike")


def test_classify_vehicles():
    assert classify_vehicles(["HGV"]) == "heavy"
    assert classify_vehicles(["BUS", "TRUCK"]) == "heavy"
    assert classify_vehicles(["car", "VAN"]) == "light"
    assert classify_vehicles(["CAR", "BIKE"]) == "all"
    assert classify_vehicles([]) == "all"


def test_site_values():
    data = (
        "site_id,site_name,fr_insee_code,xlong,ylat\n"
        "S1,Baix,7022,4.76,44.71\n"  # a spreadsheet ate the leading zero
        "S2,Sète,34301,3.69,43.40\n"
        "S3,Nowhere,ABCDE,3.69,43.40\n"
        "S4,Lambert,,735012.4,6278104.9\n"
        "S5,,,3.69,43.40\n"
    ).encode()
    s1, s2, s3, s4, s5 = parse_sites(data, source="x")
    assert s1.insee == "07022" and s2.insee == "34301" and s2.name == "Sète"
    assert isinstance(s3, Quarantined) and "INSEE" in s3.reason
    assert isinstance(s4, Quarantined) and "lon/lat" in s4.reason
    assert isinstance(s5, Quarantined) and s5.reason == "missing required value site_name"


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_give_parse_error_or_items(data):
    for parse in (parse_sites, parse_channels, parse_measures):
        try:
            items = list(parse(data, source="fuzz"))
        except ParseError:
            continue
        assert all(isinstance(i, (SiteRecord, ChannelRecord, MeasurementRecord, Quarantined)) for i in items)


_cell = st.one_of(
    st.sampled_from(["", "C1", "-1", "1e400", "12,5", "2021-09-07T13:15:00Z", "2022-10-30 02:30", "nan", '"', '""']),
    st.text(max_size=12),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_cell, max_size=7).map(",".join), max_size=8), st.sampled_from([b"", b"\xe9", b"\x81"]))
def test_random_rows_after_a_valid_header(rows, junk):
    data = b"channel_id,counter_id,start_datetime,end_datetime,count\n" + "\n".join(rows).encode() + junk
    for item in parse_measures(data, source="fuzz", time_steps={"C1": 900}):
        assert isinstance(item, (MeasurementRecord, Quarantined))
        if isinstance(item, Quarantined):
            assert item.record_ref.startswith("line ") and item.reason
