"""Counting campaigns uploaded by agents: the preview lists each bad line with its
reason, the import makes its own source with the bad lines quarantined, nothing
good is lost or duplicated (generated files), and the sites join the counts API,
the map and the annual table."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents_support import ADMIN, agents_app
from feed.http.campaigns import file_kind, parse_campaign, parse_comptage
from feed.store.storage import Storage

PARIS = ZoneInfo("Europe/Paris")
AUTH = {"Authorization": f"Bearer {ADMIN}"}
HEADER = "site;name;road;pr;abscissa;lon;lat;direction;vehicle_class;hour;count\n"


def good_lines(hours: int = 48) -> list[str]:
    out = []
    t = datetime(2025, 3, 3, 0, 0)
    for h in range(hours):
        at = (t + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M")
        out.append(f"K1;RD32 Argelliers;RD32;5;300;;;N;all;{at};{100 + h}\n")
        out.append(f"K1;RD32 Argelliers;RD32;5;300;;;S;all;{at};{200 + h}\n")
        out.append(f"K2;Lodève;;;;3.32;43.72;E;heavy;{at};{h % 7}\n")
    return out


@pytest.fixture
async def client(storage: Storage) -> AsyncIterator[TestClient]:
    async with agents_app(storage) as c:
        yield c


def test_every_bad_line_is_named_with_its_reason() -> None:
    lines = good_lines(2)
    lines.insert(1, "K1;;;;;;;N;all;2025-03-03 00:30;5\n")  # line 3: not the start of an hour
    lines.append("K1;;;;;;;N;cars;2025-03-03 05:00;5\n")
    lines.append("K1;;;;;;;N;all;2025-03-03 05:00;-3\n")
    lines.append("K1;;;;;;;N;all;yesterday;3\n")
    lines.append("K1;;;;;;;N;all;2025-03-03 00:00;9\n")  # already given on line 2
    campaign = parse_campaign((HEADER + "".join(lines)).encode(), PARIS)
    reasons = {q.record_ref: q.reason for q in campaign.errors}
    assert list(reasons) == ["line 3", "line 9", "line 10", "line 11", "line 12"]
    assert "does not start an hour" in reasons["line 3"] and "cars" in reasons["line 9"]
    assert "greater than or equal to 0" in reasons["line 10"] and "yesterday" in reasons["line 11"]
    assert "given twice" in reasons["line 12"]
    assert len(campaign.measurements) == 6 and set(campaign.sites) == {"K1", "K2"}
    with pytest.raises(ValueError, match="missing columns count"):
        parse_campaign(b"site;direction;hour\n", PARIS)


async def test_preview_then_import_with_a_bad_line(client: TestClient, storage: Storage) -> None:
    lines = good_lines()
    lines.insert(10, "K1;RD32 Argelliers;RD32;5;300;;;N;all;2025-03-03 30:00;12\n")  # line 12
    body = (HEADER + "".join(lines)).encode()
    async with client.post("/api/v1/campaigns?name=rd32-mars&dry_run=true", data=body, headers=AUTH) as resp:
        preview = await resp.json()
        assert resp.status == 200, preview
    assert preview["imported"] is False and preview["error_count"] == 1 and preview["errors"][0]["line"] == "line 12"
    assert await storage.pool.fetchval("SELECT count(*) FROM sites") == 0  # a preview stores nothing
    async with client.post("/api/v1/campaigns?name=rd32-mars", data=body, headers=AUTH) as resp:
        report = await resp.json()
        assert resp.status == 201, report
    assert report["new"] == 3 * 48 and report["quarantined"] == 1 and report["source"] == "campaign-rd32-mars"
    quarantine = await storage.pool.fetch(
        "SELECT record_ref, reason FROM quarantine WHERE source_id = $1", "campaign-rd32-mars"
    )
    assert [q["record_ref"] for q in quarantine] == ["line 12"]
    async with client.get("/api/v1/sites?limit=10") as resp:
        sites = {s["external_id"]: s for s in (await resp.json())["sites"]}
    assert set(sites) == {"K1", "K2"}
    k1 = sites["K1"]
    assert k1["road"] == "RD32" and k1["pr"] == 5  # placed with the referential from road + PR + abscissa
    async with client.get(f"/api/v1/sites/{k1['id']}/counts?from=2025-03-03&to=2025-03-05&step=day") as resp:
        days = {p["period"]: p["count"] for p in (await resp.json())["points"]}
    assert days["2025-03-03"] == sum(100 + h + 200 + h for h in range(24))
    async with client.get("/api/v1/annual?year=2025&threshold=0.5") as resp:
        annual = {r["external_id"] for r in (await resp.json())["rows"]}
    assert {"K1", "K2"} <= annual
    async with client.post("/api/v1/campaigns?name=rd32-mars", data=body) as resp:
        assert resp.status == 401


async def test_a_site_off_the_referential_is_reported_with_its_lines(client: TestClient, storage: Storage) -> None:
    body = (
        HEADER + "Z9;ailleurs;RD32;700;0;;;N;all;2025-03-03 00:00;5\n"
        "Z9;ailleurs;RD32;700;0;;;N;all;2025-03-03 01:00;6\n"
    ).encode()
    async with client.post("/api/v1/campaigns?name=off-road", data=body, headers=AUTH) as resp:
        report = await resp.json()
    assert report["errors"][0]["line"] == "site Z9" and "has no PR 700" in report["errors"][0]["reason"]
    assert report["quarantined"] == 1 + 1 + 2  # the site, its channel, its two counts: nothing silently dropped


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10**6),
    bad=st.lists(
        st.sampled_from(
            [
                "K1;;;;;;;N;all;2025-13-01 00:00;1\n",
                "K1;;;;;;;N;all;2025-03-03 00:00;x\n",
                ";;;;;;;N;all;2025-03-03 00:00;1\n",
                "K1;;;;;;;;all;2025-03-03 00:00;1\n",
                "K1;;;;;;;N;all;2025-03-03 00:00;\n",
            ]
        ),
        max_size=6,
    ),
)
def test_generated_files_lose_and_duplicate_nothing(seed: int, bad: list[str]) -> None:
    lines = good_lines(6)
    rng = random.Random(seed)
    rng.shuffle(lines)
    for b in bad:
        lines.insert(rng.randrange(len(lines) + 1), b)
    campaign = parse_campaign((HEADER + "".join(lines)).encode(), PARIS)
    assert len(campaign.measurements) == 18 and len(campaign.errors) == len(bad)
    keys = [(m.channel_external_id, m.start) for m in campaign.measurements]
    assert len(set(keys)) == len(keys)
    assert sorted(m.count for m in campaign.measurements if m.count is not None) == sorted(
        int(line.rsplit(";", 1)[1]) for line in good_lines(6)
    )


COMPTAGE = Path(__file__).parents[1] / "data" / "comptage"


def comptage_files(flavour: str) -> dict[str, bytes]:
    return {kind: (COMPTAGE / f"{kind}.{flavour}.csv").read_bytes() for kind in ("site", "channel", "measure")}


def multipart(files: dict[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for n, data in enumerate(files.values()):  # part names do not matter: the header tells the kind
        form.add_field(f"file{n}", data, filename=f"file{n}.csv", content_type="text/csv")
    return form


def test_the_kind_of_a_file_is_told_from_its_header() -> None:
    for kind, data in comptage_files("exemple-valide").items():
        assert file_kind(data) == kind
    assert file_kind(HEADER.encode()) == "campaign"
    with pytest.raises(ValueError, match="neither a campaign CSV"):
        file_kind(b"code_pme;horodate;debit\n")


def test_comptage_sample_files_become_a_campaign() -> None:
    campaign = parse_comptage(comptage_files("exemple-valide-eco-compteur"), PARIS)
    assert len(campaign.sites) == 3 and len(campaign.channels) == 10 and campaign.errors == []
    lengths = Counter(m.length for m in campaign.measurements)
    assert lengths == {86400: 3640, 82800: 10}  # daily counts; each channel's spring-forward day lasts 23 h
    with pytest.raises(ValueError, match="missing: channel, site"):
        parse_comptage({"measure": comptage_files("exemple-valide")["measure"]}, PARIS)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    bad=st.lists(
        st.sampled_from(
            [
                "353226361,X,2022-13-01T00:00:00+01:00,,1\n",
                "353226361,X,2022-02-01T00:00:00+01:00,,-4\n",
                ",X,2022-02-01T00:00:00+01:00,,1\n",
                "353226361,X,2022-02-01T00:00:00+01:00,2022-01-01T00:00:00+01:00,1\n",
                "353226361,X,2022-02-01T00:00:00+01:00\n",
            ]
        ),
        max_size=6,
    ),
)
def test_comptage_bad_lines_are_named_and_good_ones_all_kept(seed: int, bad: list[str]) -> None:
    files = comptage_files("exemple-valide-eco-compteur")
    header, *rows = files["measure"].decode().splitlines(keepends=True)
    rows[-1] = rows[-1] if rows[-1].endswith("\n") else rows[-1] + "\n"
    rng = random.Random(seed)
    rng.shuffle(rows)
    places = []
    for b in bad:
        at = rng.randrange(len(rows) + 1)
        rows.insert(at, b)
        places = [p + 1 if p >= at else p for p in places] + [at]
    campaign = parse_comptage({**files, "measure": (header + "".join(rows)).encode()}, PARIS)
    assert len(campaign.measurements) == 3650
    assert sorted(q.record_ref for q in campaign.errors) == sorted(f"measure line {p + 2}" for p in places)


async def test_comptage_upload_preview_then_import(client: TestClient, storage: Storage) -> None:
    files = comptage_files("exemple-valide")  # measures of channels C-C-02/03-Baix, absent from the channel file
    async with client.post("/api/v1/campaigns?name=baix&dry_run=true", data=multipart(files), headers=AUTH) as resp:
        preview = await resp.json()
        assert resp.status == 200, preview
    assert (preview["sites"], preview["channels"], preview["counts"], preview["error_count"]) == (1, 1, 9, 0)
    async with client.post("/api/v1/campaigns?name=baix", data=multipart(files), headers=AUTH) as resp:
        report = await resp.json()
        assert resp.status == 201, report
    assert report["source"] == "campaign-baix" and report["quarantined"] == 6  # the 6 counts of unknown channels
    stored = await storage.pool.fetchval(
        "SELECT count(*) FROM measurements m JOIN channels c ON c.id = m.channel_id"
        " JOIN sites s ON s.id = c.site_id WHERE s.external_id = 'C01-Baix'"
    )
    assert stored == 3
    async with client.post("/api/v1/campaigns?name=baix", data=files["measure"], headers=AUTH) as resp:
        refused = await resp.json()
        assert resp.status == 400 and "multipart" in refused["detail"]


async def test_comptage_upload_joins_the_map_and_the_annual_table(client: TestClient) -> None:
    files = comptage_files("exemple-valide-eco-compteur")
    async with client.post("/api/v1/campaigns?name=loire-2022", data=multipart(files), headers=AUTH) as resp:
        report = await resp.json()
        assert resp.status == 201, report
    assert report["new"] == 3650 and report["quarantined"] == 0
    async with client.get("/api/v1/sites?limit=10") as resp:
        sites = {s["external_id"]: s for s in (await resp.json())["sites"]}
    assert set(sites) == {"300014141", "300014151", "300014142"}
    assert sites["300014141"]["name"] == "Champtoceaux"
    async with client.get("/api/v1/annual?year=2022&threshold=0.5") as resp:
        annual = {r["external_id"] for r in (await resp.json())["rows"]}
    assert annual == set(sites)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n\r\nsite_id\r\n--x--\r\n", 400),  # no boundary
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"garbage", 400),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            b"--x\r\nContent-Type: text/csv\r\n\r\nsite_id\r\n--x",
            400,
        ),
        (
            {"Content-Type": "multipart/mixed; boundary=x"},
            b"--x\r\nContent-Type: multipart/mixed; boundary=y\r\n\r\n--y\r\n\r\na\r\n--y--\r\n--x--\r\n",
            400,
        ),
        (
            {"Content-Type": "multipart/form-data; boundary=x"},
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n"
            + b"site_id,site_name,xlong,ylat\n" * 80_000
            + b"\r\n--x--\r\n",
            413,
        ),  # beyond the server's request size, though multipart
    ],
)
async def test_hostile_multipart_bodies_are_refused_not_failed(
    client: TestClient, headers: dict[str, str], body: bytes, status: int
) -> None:
    async with client.post("/api/v1/campaigns?name=hostile", data=body, headers={**AUTH, **headers}) as resp:
        assert resp.status == status, await resp.text()
