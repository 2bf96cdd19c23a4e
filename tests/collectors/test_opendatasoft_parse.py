"""Opendatasoft Explore v2.1 parsing, on real Paris counts and a generated Hérault events page."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.opendatasoft_parse import (
    CounterMapping,
    EventMapping,
    MappingError,
    RecordsPage,
    counter_mapping_from_options,
    event_mapping_from_options,
    exports_url,
    mapping_from_options,
    parse_export_json,
    parse_ods_error,
    parse_records_page,
    records_url,
)
from feed.errors import ParseError
from feed.model import ChannelRecord, EventRecord, MeasurementRecord, Quarantined, SiteRecord

DATA = Path(__file__).parent.parent / "data" / "opendatasoft"
PARIS = DATA / "comptages-routiers-permanents_records-v2.1_2026-06-21T00.json"
HERAULT = DATA / "herault-inforoute-evenements_records-v2.1_GENERATED.json"
UTC = UTC
PARIS_HOUR = datetime(2026, 6, 21, 0, 0, tzinfo=timezone(timedelta(hours=2)))

# Paris "comptages routiers permanents": iu_ac = arc id, libelle = name, t_1h = hour
# start, q = hourly flow (vehicles), k = occupancy (%), etat_barre = sensor state.
PARIS_OPTIONS = {
    "dataset_type": "counters",
    "dataset": "comptages-routiers-permanents",
    "mapping": {
        "site_id": "iu_ac",
        "time": "t_1h",
        "count": "q",
        "occupancy": "k",
        "site_name": "libelle",
        "quality": "etat_barre",
        "quality_map": {"Invalide": "invalid"},
        "site_metadata": ["iu_nd_amont", "iu_nd_aval"],
    },
}

HERAULT_OPTIONS = {
    "dataset_type": "events",
    "mapping": {
        "id": "id_evenement",
        "type": "type",
        "type_map": {
            "Travaux": "roadworks",
            "Accident": "accident",
            "Route barrée": "closure",
            "Inondation": "obstruction",
            "Manifestation": "public_event",
            "Bouchon": "congestion",
            "Obstacle": "obstruction",
        },
        "start": "date_debut",
        "end": "date_fin",
        "road": "route",
        "direction": "sens",
        "lanes": "voies",
        "description": "description",
        "severity": "gravite",
        "severity_map": {"Faible": "low", "Moyenne": "medium", "Forte": "high", "Très forte": "highest"},
        "status": "statut",
        "status_map": {"En cours": "active", "Prévu": "planned", "Terminé": "ended"},
        "updated": "date_maj",
        "detour": "deviation",
    },
}


def paris_page(total: int = 2977) -> bytes:
    return b'{"total_count": %d, "results": ' % total + PARIS.read_bytes() + b"}"


@pytest.fixture(scope="module")
def paris_mapping() -> CounterMapping:
    return counter_mapping_from_options(PARIS_OPTIONS)


@pytest.fixture(scope="module")
def herault_mapping() -> EventMapping:
    return event_mapping_from_options(HERAULT_OPTIONS)


# --------------------------------------------------------------------------- counters: Paris


def test_paris_records_page(paris_mapping):
    page = parse_records_page(paris_page(), paris_mapping, source="paris")
    assert (page.total_count, page.result_count) == (2977, 100)
    assert (len(page.sites), len(page.channels), len(page.measurements)) == (100, 100, 100)
    assert page.quarantined == [] and page.events == []
    # every record of the file is the hour starting 2026-06-21T00:00:00+02:00
    assert page.watermark == PARIS_HOUR and page.at_watermark == 100

    site = page.sites[0]  # iu_ac 5381, PI_Zac_Aubervilliers, geo_point_2d
    assert site == SiteRecord(
        external_id="5381",
        name="PI_Zac_Aubervilliers",
        lon=2.3784650605464797,
        lat=48.9001968502817,
        metadata={"iu_nd_amont": "919", "iu_nd_aval": "938"},
    )
    assert page.channels[0] == ChannelRecord(site_external_id="5381", external_id="5381", time_step=3600)
    assert page.measurements[0] == MeasurementRecord(
        channel_external_id="5381", start=PARIS_HOUR, length=3600, count=4859, occupancy=12.65
    )
    by_channel = {m.channel_external_id: m for m in page.measurements}
    # 1764 Corentin_Cariou: q null, k 29.57056, etat_barre Ouvert
    assert (by_channel["1764"].count, by_channel["1764"].occupancy, by_channel["1764"].quality) == (
        None,
        29.57056,
        "missing",
    )
    # 6602: etat_barre Invalide, q and k null
    assert (by_channel["6602"].count, by_channel["6602"].quality) == (None, "invalid")
    assert Counter(m.quality for m in page.measurements) == {"observed": 52, "missing": 25, "invalid": 23}
    assert max(m.count or 0 for m in page.measurements) == 5705
    assert sum(m.count or 0 for m in page.measurements) == sum(
        int(r["q"]) for r in json.loads(PARIS.read_bytes()) if r["q"] is not None
    )


def test_paris_export_streams_in_small_chunks(paris_mapping):
    raw = PARIS.read_bytes()
    page = parse_records_page(paris_page(), paris_mapping)
    expected = [*page.sites, *page.channels, *page.measurements]
    chunks = (raw[i : i + 37] for i in range(0, len(raw), 37))  # cuts through numbers and strings
    items = parse_export_json(chunks, paris_mapping, source="paris", chunk_size=37)
    got = list(items)
    assert Counter(type(i).__name__ for i in got) == {"SiteRecord": 100, "ChannelRecord": 100, "MeasurementRecord": 100}
    assert sorted(got, key=lambda i: (type(i).__name__, repr(i))) == sorted(
        expected, key=lambda i: (type(i).__name__, repr(i))
    )
    assert (
        isinstance(got[0], SiteRecord) and isinstance(got[1], ChannelRecord) and isinstance(got[2], MeasurementRecord)
    )
    assert (items.record_count, items.watermark, items.at_watermark) == (100, PARIS_HOUR, 100)
    assert list(parse_export_json(io.BytesIO(raw), paris_mapping, chunk_size=1000)) == got


def test_channel_ids_from_direction_and_vehicle_class():
    mapping = CounterMapping(
        site_id="station",
        time="debut",
        count="nb",
        direction="sens",
        vehicle_class="classe",
        vehicle_class_map={"TV": "all"},
        speed="vitesse",
        geo_point=None,
        interval_seconds=900,
    )
    body = {
        "total_count": 4,
        "results": [
            {
                "station": "MMT34.H1",
                "debut": "2026-06-21T08:00:00+02:00",
                "nb": 120,
                "sens": "1",
                "classe": "PL",
                "vitesse": 81.5,
            },
            {
                "station": "MMT34.H1",
                "debut": "2026-06-21T08:00:00+02:00",
                "nb": 980.4,
                "sens": "1",
                "classe": "VL",
                "vitesse": 88,
            },
            {"station": "MMT34.H1", "debut": "2026-06-21T08:00:00+02:00", "nb": 1100, "sens": "1", "classe": "TV"},
            {"station": "MMT34.H1", "debut": "2026-06-21T08:15:00+02:00", "nb": -4, "sens": "1", "classe": "TV"},
        ],
    }
    page = parse_records_page(json.dumps(body).encode(), mapping)
    assert all(c.direction_name is None for c in page.channels)  # no direction_name field mapped
    assert [(c.external_id, c.direction, c.vehicle_class, c.time_step) for c in page.channels] == [
        ("MMT34.H1:1:PL", "1", "heavy", 900),
        ("MMT34.H1:1:VL", "1", "light", 900),
        ("MMT34.H1:1:TV", "1", "all", 900),
    ]
    assert len(page.sites) == 1 and page.sites[0].lon is None
    pl, vl, _tv = page.measurements
    assert (pl.count, pl.speed, pl.quality) == (120, 81.5, "observed")
    assert (vl.count, vl.quality) == (980, "estimated")
    (bad,) = page.quarantined
    assert (
        bad.reason == "negative count -4 in field 'nb'"
        and bad.record_ref == "station=MMT34.H1 debut=2026-06-21T08:15:00+02:00"
    )
    # the refused record still moved the watermark: it was read
    assert page.watermark == datetime(2026, 6, 21, 6, 15, tzinfo=UTC) and page.at_watermark == 1


# --------------------------------------------------------------------------- events: Hérault


def test_herault_events_page(herault_mapping):
    page = parse_records_page(HERAULT.read_bytes(), herault_mapping, source="herault")
    assert (page.total_count, page.result_count, len(page.events)) == (10, 10, 8)
    assert page.sites == page.channels == page.measurements == []
    events = {e.external_id: e for e in page.events}

    works = events["INF34-2026-0412"]
    assert (works.type, works.subtype, works.status, works.severity) == ("roadworks", "Travaux", "active", "medium")
    assert (works.road, works.direction, works.lanes_affected) == ("RD613", "Montpellier vers Sète", "1 voie sur 2")
    assert works.planned_start == datetime(2026, 6, 15, 5, 30, tzinfo=UTC)
    assert works.planned_end == datetime(2026, 7, 3, 15, 0, tzinfo=UTC)
    assert works.geometry.type == "LineString"
    assert works.geometry.points == [(3.7764, 43.5521), (3.7812, 43.5539), (3.7858, 43.5561), (3.7903, 43.558)]
    assert works.descriptions["fr"].startswith("Réfection de chaussée")
    assert works.source_updated == datetime(2026, 6, 21, 6, 12, tzinfo=UTC)

    closure = events["INF34-2026-0418"]
    assert (closure.type, closure.severity, closure.planned_end) == ("closure", "highest", None)
    assert closure.detour == "Déviation par la RD922 et la RD35 via Lamalou-les-Bains."
    assert events["INF34-2026-0431"].type == "accident"
    assert events["INF34-2026-0440"].status == "planned"
    assert events["INF34-2026-0425"].type == "obstruction"

    ended = events["INF34-2026-0377"]  # a MultiLineString whose two parts join
    assert ended.status == "ended" and ended.geometry.type == "LineString"
    assert ended.geometry.points == [(3.4021, 43.3197), (3.4208, 43.3181), (3.4403, 43.3164)]

    quay = events["INF34-2026-0428"]  # a Polygon: the geo point stands in
    assert quay.geometry.type == "Point" and quay.geometry.points == [(3.6949, 43.4016)]

    mowing = events["INF34-2026-0436"]  # a label outside type_map
    assert (mowing.type, mowing.subtype) == ("other", "Fauchage")

    missing_id, lambert = page.quarantined
    assert missing_id.record_ref is None and missing_id.reason == "no event id in field 'id_evenement'"
    assert "Ralentissements" in missing_id.excerpt
    assert lambert.record_ref == "id_evenement=INF34-2026-0433"
    assert lambert.reason.startswith("geometry:") and "lon/lat" in lambert.reason

    # date_maj 2026-06-21T08:25:00+02:00 is shared by the accident and the closure
    assert page.watermark == datetime(2026, 6, 21, 6, 25, tzinfo=UTC) and page.at_watermark == 2


def test_event_status_from_times_without_a_status_field(herault_mapping):
    mapping = herault_mapping.model_copy(update={"status": None})
    now = datetime(2026, 6, 21, 6, 30, tzinfo=UTC)
    events = {e.external_id: e for e in parse_records_page(HERAULT.read_bytes(), mapping, now=now).events}
    assert events["INF34-2026-0440"].status == "planned"  # starts at 18:00 local
    assert events["INF34-2026-0377"].status == "ended"  # ended 19 June
    assert events["INF34-2026-0412"].status == "active"
    without_now = parse_records_page(HERAULT.read_bytes(), mapping).events
    assert {e.status for e in without_now} == {"active"}


@given(
    pr=st.integers(0, 9999),
    abscissa=st.integers(0, 99999),
    end=st.none() | st.integers(0, 9999),
    bad=st.sampled_from(["abc", "12+", "+5", "12+3a", "-3", "1.5"]),
)
@settings(max_examples=60, deadline=None)
def test_pr_references_of_events_or_a_clear_quarantine(pr, abscissa, end, bad):
    """PR + abscissa fields become the location references DATEX II v2.3 is written
    from; a malformed one quarantines its record only, naming the field."""
    mapping = EventMapping(id="id", road="route", pr_from="pr_debut", pr_to="pr_fin", insee="insee")
    good = {
        "id": "ok",
        "route": "RD613",
        "pr_debut": f"{pr}+{abscissa}",
        "insee": "34172",
        "pr_fin": None if end is None else str(end),
    }
    broken = {"id": "bad", "route": "RD613", "pr_debut": bad}
    body = json.dumps({"total_count": 2, "results": [good, broken]}).encode()
    page = parse_records_page(body, mapping)
    [event] = page.events
    expected = [
        {"at": "point" if end is None else "from", "road": "RD613", "pr": pr, "abscissa": abscissa, "departement": "34"}
    ]
    if end is not None:
        expected.append({"at": "to", "road": "RD613", "pr": end, "abscissa": 0, "departement": "34"})
    assert event.location_refs == {"pr": expected, "insee": "34172"}
    [quarantined] = page.quarantined
    assert "pr_debut" in quarantined.reason and "12+345" in quarantined.reason


# --------------------------------------------------------------------------- mappings from options


def test_mapping_from_options_dispatches():
    assert isinstance(mapping_from_options(PARIS_OPTIONS), CounterMapping)
    assert isinstance(mapping_from_options(HERAULT_OPTIONS), EventMapping)
    with pytest.raises(MappingError, match=r"options.dataset_type = 'counts'"):
        mapping_from_options({**PARIS_OPTIONS, "dataset_type": "counts"})


def test_mapping_errors_name_the_key():
    with pytest.raises(MappingError) as err:
        counter_mapping_from_options({"mapping": {"site_id": "iu_ac", "count": "q", "cuont": "q"}})
    message = str(err.value)
    assert "options.mapping.time: missing" in message
    assert "options.mapping.cuont: unknown key" in message

    with pytest.raises(MappingError, match=r"options.mapping.interval_seconds = 7: .*divide a day"):
        counter_mapping_from_options({"mapping": {"site_id": "a", "time": "b", "count": "c", "interval_seconds": 7}})
    with pytest.raises(MappingError, match=r"options.mapping.type_map.Travaux = 'works'"):
        event_mapping_from_options({"mapping": {"id": "a", "type_map": {"Travaux": "works"}}})
    with pytest.raises(MappingError, match=r"options.mapping: missing"):
        event_mapping_from_options({})
    with pytest.raises(MappingError, match=r"options.mapping.timezone = 'Europe/Montpelier'"):
        event_mapping_from_options({"mapping": {"id": "a", "timezone": "Europe/Montpelier"}})


# --------------------------------------------------------------------------- bad input


def test_bad_json_and_wrong_shapes(paris_mapping):
    with pytest.raises(ParseError, match="not valid JSON") as err:
        parse_records_page(b'{"total_count": 1, "results": [{"iu_ac": "1"', paris_mapping, source="paris")
    assert err.value.source == "paris"
    with pytest.raises(ParseError, match='no "results" list'):
        parse_records_page(PARIS.read_bytes(), paris_mapping)  # an export body, not a page
    with pytest.raises(ParseError, match=r"error: the ODSQL query was refused: \[ODSQLError\] Unknown field: q"):
        parse_records_page(b'{"error_code": "ODSQLError", "message": "Unknown field: q"}', paris_mapping)
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_records_page(b"\xff\xfe\x00garbage", paris_mapping)
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_records_page(b'{"results": ' + b"[" * 100_000, paris_mapping)


def test_records_that_cannot_be_converted_are_quarantined(paris_mapping):
    good = json.loads(PARIS.read_bytes())[0]
    body = {
        "total_count": 5,
        "results": [
            {k: v for k, v in good.items() if k != "iu_ac"},  # no id
            "5381",  # not an object
            {**good, "t_1h": "21/06/2026 00:00"},
            {**good, "q": "beaucoup"},
            {**good, "geo_point_2d": {"lon": 600123.0, "lat": 2430000.0}},
        ],
    }
    page = parse_records_page(json.dumps(body).encode(), paris_mapping)
    assert page.measurements == [] and page.sites == []
    reasons = [(q.record_ref, q.reason) for q in page.quarantined]
    assert reasons[0] == (None, "no site id in field 'iu_ac'")
    assert reasons[1] == (None, "record is not a JSON object")
    assert reasons[2] == ("iu_ac=5381 t_1h=21/06/2026 00:00", "t_1h '21/06/2026 00:00' is not an ISO 8601 date")
    assert reasons[3] == ("iu_ac=5381 t_1h=2026-06-21T00:00:00+02:00", "q 'beaucoup' is not a number")
    assert "outside WGS 84" in reasons[4][1]
    assert page.watermark == PARIS_HOUR and page.at_watermark == 3  # the three records with a readable time


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty export"),
        (b"[", "truncated after 0 records"),
        (b'[{"iu_ac": "1"}, {"iu_ac": "2", "t_1h": "2026-', "record 1: invalid JSON"),
        (b'[{"iu_ac": "1"} {"iu_ac": "2"}]', "expected ',' or ']'"),
        (b'[{"iu_ac": "1"},]', "invalid JSON"),
        (b'[{"iu_ac": "1"}] [', "data after the end"),
        (b'{"error_code": "ODSQLError", "message": "Unknown field: t_1h"}', "Unknown field: t_1h"),
        (b'{"results": []}', "expected a JSON array"),
        (b'[{"libelle": "caf\xe9"}]', "not valid UTF-8"),
    ],
)
def test_broken_exports_raise_parse_error(paris_mapping, body, message):
    items = parse_export_json((body[i : i + 5] for i in range(0, len(body), 5)), paris_mapping, source="paris")
    with pytest.raises(ParseError, match=re.escape(message)):
        list(items)


def test_export_yields_records_before_the_break(paris_mapping):
    raw = PARIS.read_bytes()
    cut = raw[: raw.index(b'{"iu_ac": "1768"') + 30]  # a connection lost in the 6th record
    items = parse_export_json(cut, paris_mapping)
    got = []
    with pytest.raises(ParseError, match="record 5"):
        for item in items:
            got.append(item)
    assert [m.channel_external_id for m in got if isinstance(m, MeasurementRecord)] == [
        "5381",
        "1764",
        "6602",
        "6933",
        "1831",
    ]
    assert list(parse_export_json(b" [ ] ", paris_mapping)) == []
    odd = list(parse_export_json(iter([b"[1", b"2345", b", null]"]), paris_mapping))
    assert [q.excerpt for q in odd] == ["12345", "null"]  # a number cut across chunks is read whole


# --------------------------------------------------------------------------- error bodies


def test_ods_error_messages():
    assert parse_ods_error(400, b'{"error_code": "ODSQLError", "message": "ODSQL query is malformed: t_1h >"}') == (
        "HTTP 400 Bad Request: the ODSQL query was refused: [ODSQLError] ODSQL query is malformed: t_1h >"
    )
    quota = (
        b'{"error": "Too many requests on the domain. Please contact the domain administrator.", '
        b'"errorcode": 10002, "reset_time": "2026-09-01T00:00:00Z", "call_limit": 6000000, "limit_time_unit": "month"}'
    )
    assert parse_ods_error(429, quota) == (
        "HTTP 429 Too Many Requests: API quota exhausted (6000000 calls per month); resets at "
        "2026-09-01T00:00:00Z: Too many requests on the domain. Please contact the domain administrator."
    )
    assert parse_ods_error(404, b'{"error_code": "NotFound", "message": "Unknown dataset: inforoute-34"}') == (
        "HTTP 404 Not Found: dataset or resource not found: [NotFound] Unknown dataset: inforoute-34"
    )
    assert parse_ods_error(
        400,
        b'{"error_code": "InvalidRESTParameterError", "message": "Invalid value for limit '
        b'API parameter: 101 was found but -1 <= limit <= 100 is expected."}',
    ).startswith("HTTP 400 Bad Request: [InvalidRESTParameterError] Invalid value for limit")
    assert "check the API key" in parse_ods_error(401, b'{"error_code": "Unauthorized", "message": "no"}')
    html = b"<html><head><title>502 Bad Gateway</title></head><body>" + b"nginx " * 100 + b"</body></html>"
    message = parse_ods_error(502, html)
    assert message.startswith("HTTP 502 Bad Gateway: '<html><head><title>502") and message.endswith("…'")
    assert len(message) < 240
    assert parse_ods_error(503, b"") == "HTTP 503 Service Unavailable (empty body)"
    assert parse_ods_error(599, b"[1, 2]") == "HTTP 599 error: '[1, 2]'"


# --------------------------------------------------------------------------- URLs and paging


def params(url: str) -> dict[str, str]:
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    return {k: v[0] for k, v in query.items()}


def test_records_url():
    url = records_url(
        "https://opendata.paris.fr",
        "comptages-routiers-permanents",
        time_field="t_1h",
        watermark=PARIS_HOUR,
        order_by_id="iu_ac",
    )
    assert url.startswith(
        "https://opendata.paris.fr/api/explore/v2.1/catalog/datasets/comptages-routiers-permanents/records?"
    )
    assert params(url) == {
        "where": "t_1h > date'2026-06-20T22:00:00Z'",
        "order_by": "t_1h asc, iu_ac asc",
        "limit": "100",
    }
    url = records_url(
        "https://data.herault.fr/api/explore/v2.1/",
        "inforoute",
        time_field="year",
        watermark=PARIS_HOUR,
        seen_at_watermark=300,
        limit=50,
        api_key="k3y",
        extra_where='route = "RD613"',
    )
    assert url.startswith("https://data.herault.fr/api/explore/v2.1/catalog/datasets/inforoute/records?")
    assert params(url) == {
        "where": "(route = \"RD613\") AND `year` >= date'2026-06-20T22:00:00Z'",
        "order_by": "`year` asc",
        "limit": "50",
        "offset": "300",
        "apikey": "k3y",
    }
    assert params(records_url("https://x.fr", "d", time_field="t", watermark=None)) == {
        "order_by": "t asc",
        "limit": "100",
    }

    with pytest.raises(ValueError, match="limit"):
        records_url("https://x.fr", "d", time_field="t", watermark=None, limit=101)
    with pytest.raises(ValueError, match="offset \\+ limit > 10000"):
        records_url("https://x.fr", "d", time_field="t", watermark=PARIS_HOUR, seen_at_watermark=9901)
    with pytest.raises(ValueError, match="timezone"):
        records_url("https://x.fr", "d", time_field="t", watermark=datetime(2026, 6, 21))
    with pytest.raises(ValueError, match="field name"):
        records_url("https://x.fr", "d", time_field="t_1h asc; drop", watermark=None)


def test_exports_url():
    url = exports_url(
        "https://opendata.paris.fr", "comptages-routiers-permanents", time_field="t_1h", watermark=PARIS_HOUR
    )
    assert url.startswith(
        "https://opendata.paris.fr/api/explore/v2.1/catalog/datasets/comptages-routiers-permanents/exports/json?"
    )
    assert params(url) == {"where": "t_1h > date'2026-06-20T22:00:00Z'", "order_by": "t_1h asc"}
    assert exports_url("https://x.fr", "d") == "https://x.fr/api/explore/v2.1/catalog/datasets/d/exports/json"


class FakePortal:
    """The records endpoint's where/order_by/offset/limit semantics, over a list of records."""

    def __init__(self, records: list[dict], time_field: str, id_field: str) -> None:
        self.records = sorted(records, key=lambda r: (datetime.fromisoformat(r[time_field]), r[id_field]))
        self.time_field = time_field
        self.requests = 0

    def get(self, url: str) -> bytes:
        self.requests += 1
        p = params(url)
        offset, limit = int(p.get("offset", 0)), int(p["limit"])
        assert offset + limit <= 10_000
        rows = self.records
        if "where" in p:
            op, lit = re.fullmatch(rf"{self.time_field} (>=?) date'(.+)'", p["where"]).groups()
            bound = datetime.fromisoformat(lit)
            rows = [
                r
                for r in rows
                if (
                    datetime.fromisoformat(r[self.time_field]) >= bound
                    if op == ">="
                    else datetime.fromisoformat(r[self.time_field]) > bound
                )
            ]
        return json.dumps({"total_count": len(rows), "results": rows[offset : offset + limit]}).encode()


def test_watermark_paging_reads_every_record_once(paris_mapping):
    # 100 arcs at 00:00 (more than a page of 30) then 40 of them again at 01:00
    hour0 = json.loads(PARIS.read_bytes())
    hour1 = [{**r, "t_1h": "2026-06-21T01:00:00+02:00"} for r in hour0[:40]]
    portal = FakePortal(hour0 + hour1, "t_1h", "iu_ac")
    watermark, seen, read = None, 0, []
    for _ in range(20):
        url = records_url(
            "https://opendata.paris.fr",
            "comptages-routiers-permanents",
            time_field="t_1h",
            watermark=watermark,
            seen_at_watermark=seen,
            order_by_id="iu_ac",
            limit=30,
        )
        page = parse_records_page(portal.get(url), paris_mapping)
        read += [(m.channel_external_id, m.start) for m in page.measurements]
        watermark, seen = page.cursor_after(watermark, seen)
        if page.result_count < 30:
            break
    assert len(read) == len(set(read)) == 140
    assert (watermark, seen) == (PARIS_HOUR + timedelta(hours=1), 40)
    assert portal.requests == 5
    # nothing new: the cursor stays put
    empty = parse_records_page(b'{"total_count": 0, "results": []}', paris_mapping)
    assert empty.cursor_after(watermark, seen) == (watermark, seen)


# --------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_give_parse_error_or_a_page(data):
    mapping = CounterMapping(site_id="iu_ac", time="t_1h", count="q")
    try:
        page = parse_records_page(data, mapping)
    except ParseError:
        pass
    else:
        assert isinstance(page, RecordsPage)
    try:
        items = list(parse_export_json((data[i : i + 7] for i in range(0, len(data), 7)), mapping))
    except ParseError:
        pass
    else:
        assert all(isinstance(i, (SiteRecord, ChannelRecord, MeasurementRecord, Quarantined)) for i in items)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.sampled_from(["2026-06-21T00:00:00+02:00", "2026-03-29T02:30:00", "5381", "-1", "1e999"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_record = st.fixed_dictionaries(
    {},
    optional={
        "iu_ac": _json,
        "t_1h": _json,
        "q": _json,
        "k": _json,
        "geo_point_2d": _json,
        "libelle": _json,
        "id": _json,
        "type": _json,
        "debut": _json,
        "fin": _json,
        "geo_shape": _json,
        "maj": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_record, _json), max_size=6))
def test_random_records_are_converted_or_quarantined(results):
    body = json.dumps({"total_count": len(results), "results": results}).encode()
    counters = CounterMapping(site_id="iu_ac", time="t_1h", count="q", occupancy="k", site_name="libelle")
    events = EventMapping(id="id", type="type", start="debut", end="fin", updated="maj")
    for mapping in (counters, events):
        page = parse_records_page(body, mapping, now=datetime(2026, 6, 21, tzinfo=UTC))
        converted = len(page.measurements) + len(page.events) + len(page.quarantined)
        assert converted == len(results)
        assert all(isinstance(e, EventRecord) for e in page.events)
