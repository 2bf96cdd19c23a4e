"""The web page in a real headless Chromium over the real application.

The app is seeded through `feed.store.storage.Storage` (three counting sites, a summer
of hourly counts with a gap, live events), served on 127.0.0.1, and driven with
selenium: the map draws the outline, sites and events; clicking a site draws its
chart and the download buttons return exactly the chart's rows; the annual table
sorts and exports; English works; errors and empty periods are explained; the
page is usable by keyboard. The browser tests run on the pg15 engine only (the
page does not depend on the engine). Without Chromium they skip and say what to
install; under CI=true they fail.

A screenshot is saved as `test-artifacts/web-page.png`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from agents_support import ADMIN, agents_app
from feed.config import Config, SourceConfig
from feed.http.app import build_app
from feed.http.page import ASSETS_DIR, OUTLINE_PATH, WebAssets, content_security_policy, make_web_routes
from feed.model import ChannelRecord, EventRecord, Geometry, SiteRecord
from feed.store.storage import Storage

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # reported by the `browser` fixture
    webdriver = None

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
PARIS = ZoneInfo("Europe/Paris")
CI = os.environ.get("CI") == "true"
INSTALL_HINT = "sudo apt-get install chromium chromium-driver (and pip install selenium)"
BUILD_HINT = "build the page with scripts/build-web (make test does it)"
WAIT = 20.0  # seconds for the page to react, generous for loaded machines

CONFIG = Config(
    sources=[
        SourceConfig(id="cd34", kind="opendatasoft", url="http://127.0.0.1:9/cd34", interval=300),
        SourceConfig(id="inforoute", kind="datex2", url="http://127.0.0.1:9/inforoute", interval=60),
    ]
)

# The browser tests run on one engine: the page does not depend on it.
one_engine = pytest.mark.parametrize("server", ["pg15-postgis"], indirect=True)


def unavailable(why: str) -> None:
    if CI:
        pytest.fail(f"{why} (under CI=true this is an error)")
    pytest.skip(why)


# --------------------------------------------------------------------------- data

SUMMER_START = datetime(2025, 6, 1, tzinfo=PARIS)
SUMMER_DAYS = 61  # June and July 2025
GAP_DAY = datetime(2025, 7, 14, tzinfo=PARIS)  # Montbazin loses 08:00-20:00: coverage 50 %


def hourly(
    channel: int,
    start: datetime,
    hours: int,
    count: Callable[[datetime], int],
    keep: Callable[[datetime], bool] = lambda _t: True,
) -> list[tuple]:
    rows = []
    for h in range(hours):
        t = (start + timedelta(hours=h)).astimezone(UTC)
        if keep(t):
            rows.append((channel, t, 3600, count(t), 72.0 + (h % 5), None, "observed"))
    return rows


def traffic(base: int) -> Callable[[datetime], int]:
    """A daily profile: quiet at night, peaks at 8 and 18 h, lighter at weekends."""

    def count(t: datetime) -> int:
        local = t.astimezone(PARIS)
        shape = [1, 1, 1, 1, 2, 4, 7, 10, 12, 9, 8, 8, 8, 8, 8, 9, 11, 12, 11, 8, 6, 4, 3, 2][local.hour]
        weekend = 0.7 if local.weekday() >= 5 else 1.0
        return int(base * shape * weekend / 10) + local.day % 3 + local.hour % 2  # never a frozen counter

    return count


def line(*points: tuple[float, float]) -> Geometry:
    return Geometry(type="LineString", coordinates=[list(p) for p in points])


def event(ext: str, **changes: Any) -> EventRecord:
    now = datetime.now(UTC)
    fields: dict[str, Any] = dict(
        external_id=ext,
        type="roadworks",
        subtype="MaintenanceWorks",
        status="active",
        severity="medium",
        planned_start=now - timedelta(days=1),
        planned_end=now + timedelta(days=3),
        actual_start=now - timedelta(days=1),
        road="RD613",
        direction="both",
        lanes_affected="all",
        geometry=line((3.66, 43.50), (3.68, 43.505), (3.70, 43.51)),
        descriptions={"fr": "Travaux de chaussée", "en": "Road works"},
    )
    return EventRecord(**{**fields, **changes})


@dataclass
class Seeded:
    sites: dict[str, int]  # external id -> site id
    events_with_geometry: int


async def seed(storage: Storage) -> Seeded:
    now = datetime.now(UTC)
    await storage.ensure_source("cd34", "opendatasoft", "http://127.0.0.1:9/cd34")
    await storage.ensure_source("inforoute", "datex2", "http://127.0.0.1:9/inforoute")
    await storage.upsert_sites(
        "cd34",
        [
            SiteRecord(
                external_id="MTB",
                name="Montbazin",
                road="RD613",
                pr=12,
                abscissa=350,
                insee="34165",
                lon=3.69,
                lat=43.51,
            ),
            SiteRecord(
                external_id="SML",
                name="Saint-Martin-de-Londres",
                road="RD986",
                pr=30,
                abscissa=0,
                insee="34274",
                lon=3.73,
                lat=43.79,
            ),
            SiteRecord(external_id="BEZ", name="Béziers Nord", road="RD909", insee="34032", lon=3.25, lat=43.38),
        ],
    )
    await storage.upsert_channels(
        "cd34",
        [
            *(
                ChannelRecord(
                    site_external_id="MTB",
                    external_id=f"MTB-{d}-{c}",
                    direction=d,
                    vehicle_class=c,
                    direction_name={"N": "vers Montpellier", "S": "vers Sète"}[d],
                    time_step=3600,
                )
                for d in ("N", "S")
                for c in ("light", "heavy")
            ),
            *(
                ChannelRecord(
                    site_external_id="SML", external_id=f"SML-{d}-{c}", direction=d, vehicle_class=c, time_step=3600
                )
                for d in ("E", "O")
                for c in ("light", "heavy")
            ),
            ChannelRecord(
                site_external_id="BEZ", external_id="BEZ-N-all", direction="N", vehicle_class="all", time_step=3600
            ),
        ],
    )
    channels = await storage.channel_ids("cd34")
    rows: list[tuple] = []
    gap_from = GAP_DAY.replace(hour=8).astimezone(UTC)
    gap_to = GAP_DAY.replace(hour=20).astimezone(UTC)
    for name, cid in channels.items():
        site, _direction, vclass = name.split("-")
        base = {"light": 90, "heavy": 9, "all": 60}[vclass] * (2 if site == "MTB" else 1)
        if site == "BEZ":
            rows += hourly(cid, datetime(2025, 7, 1, tzinfo=PARIS), 10 * 24, traffic(base))
            continue
        keep = (lambda t: not gap_from <= t < gap_to) if site == "MTB" else (lambda _t: True)
        rows += hourly(cid, SUMMER_START, SUMMER_DAYS * 24, traffic(base), keep)
        if site == "SML":  # Saint-Martin also counts now: a fresh site on the map
            recent = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
            rows += hourly(cid, recent, 2, traffic(base))
    await storage.ingest_measurements(rows)

    events = [
        event("works"),
        event(
            "crash",
            type="accident",
            subtype="Accident",
            severity="high",
            road="RD986",
            geometry=Geometry(type="Point", coordinates=[3.74, 43.78]),
            descriptions={"fr": "Accident, une voie neutralisée", "en": "Accident, one lane closed"},
        ),
        event(
            "closed",
            type="closure",
            subtype=None,
            status="planned",
            road="RD909",
            geometry=line((3.24, 43.37), (3.26, 43.39)),
            planned_start=now + timedelta(hours=2),
            actual_start=None,
            descriptions={"fr": "Route barrée la nuit", "en": "Road closed at night"},
        ),
        event(
            "nowhere",
            type="weather",
            subtype=None,
            geometry=None,
            road="RD32",
            descriptions={"fr": "Verglas", "en": "Ice"},
        ),
    ]
    await storage.upsert_events("inforoute", events, seen_at=now - timedelta(minutes=5))
    ids = await storage.site_ids("cd34", ["MTB", "SML", "BEZ"])
    return Seeded(sites=ids, events_with_geometry=sum(e.geometry is not None for e in events))


# --------------------------------------------------------------------------- fixtures


def assets_built() -> None:
    if WebAssets.load(ASSETS_DIR) is None:
        unavailable(f"the web page is not built: {BUILD_HINT}")


@dataclass
class Site:
    base: str  # http://127.0.0.1:PORT
    seeded: Seeded
    http: ClientSession

    def url(self, path: str) -> str:
        return self.base + path

    async def get(self, path_or_url: str) -> tuple[int, dict[str, str], bytes]:
        url = path_or_url if path_or_url.startswith("http") else self.url(path_or_url)
        async with self.http.get(url) as response:
            return response.status, dict(response.headers), await response.read()

    async def json(self, path: str) -> Any:
        status, _headers, body = await self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)


async def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        response = await client.get("/readyz")
        if response.status == 200:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz still {response.status}: {await response.text()}")
        await asyncio.sleep(0.1)


async def wait_for_api(client: TestClient) -> None:
    """The API is written by a colleague at the same time: say so clearly if it is missing."""
    response = await client.get("/api/v1/sites")
    if response.status == 404:
        pytest.fail("/api/v1/sites answers 404: the API routes (feed/http/api.py) are not in feed.http.app.ROUTES")


@pytest.fixture(scope="module")
async def site(server: Any) -> AsyncIterator[Site]:
    """One seeded application for the whole module (the tests only read)."""
    assets_built()
    storage = await Storage.open(server.new_database())
    try:
        seeded = await seed(storage)
        client = TestClient(TestServer(build_app(CONFIG, storage), host="127.0.0.1"))
        await client.start_server()
        try:
            await wait_ready(client)
            await wait_for_api(client)
            async with ClientSession(auto_decompress=True) as http:
                yield Site(str(client.make_url("")).rstrip("/"), seeded, http)
        finally:
            await client.close()
    finally:
        await storage.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through chromedriver, with a fresh profile; nothing is downloaded."""
    if webdriver is None:
        unavailable(f"selenium is not installed: {INSTALL_HINT}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        unavailable(f"Chromium or chromedriver is missing: {INSTALL_HINT}")
    profile = tempfile.mkdtemp(prefix="roadfeed-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1600",
        "--lang=fr-FR",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- browser helpers
# Selenium blocks, and the server runs on the test's event loop: every browser
# step runs in a worker thread (`in_browser`) so the server keeps answering.


async def in_browser(step: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(step, *args)


def until(driver: Any, script: str, what: str, timeout: float = WAIT) -> Any:
    """Waits until `script` (a JS expression) is truthy; returns its value."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return ({script});")
        )
    except TimeoutException:
        raise AssertionError(
            f"timed out waiting for {what}: {script}\nbrowser log: {driver.get_log('browser')}"
        ) from None


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    until(driver, "document.body.dataset.ready === 'true'", "the page to load its data")


def count(driver: Any, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length;", selector)


def text(driver: Any, selector: str) -> str:
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", selector
    )


def wait_chart(driver: Any, points: int | None = None) -> None:
    until(
        driver,
        "!document.getElementById('chart-figure').hidden && document.querySelector('#chart canvas')",
        "the chart",
    )
    if points is not None:
        until(driver, f"document.getElementById('chart').dataset.points === '{points}'", f"{points} points")
    until(driver, "!document.getElementById('counts').hasAttribute('aria-busy')", "the counts to load")


def parse_csv(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))


def close(a: Any, b: Any) -> bool:
    if a in (None, "") or b in (None, ""):
        return a in (None, "") and b in (None, "")
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


# --------------------------------------------------------------------------- browser tests


@one_engine
async def test_the_map_draws_the_outline_sites_and_events_without_console_errors(browser: Any, site: Site):
    events = await site.json("/feeds/events.geojson")
    expected_shapes = sum(1 for f in events["features"] if f["geometry"])
    assert expected_shapes == site.seeded.events_with_geometry

    def check() -> dict[str, Any]:
        open_page(browser, site.url("/"))
        return {
            "lang": browser.execute_script("return document.documentElement.lang;"),
            "title": text(browser, "h1"),
            "outline": count(browser, "#map path.outline"),
            "sites": count(browser, "#map path.site-marker"),
            "fresh": count(browser, "#map path.site-marker.state-fresh"),
            "stale": count(browser, "#map path.site-marker.state-stale"),
            "shapes": count(browser, "#map .event-shape"),
            "lines": count(browser, "#map path.event-line"),
            "points": count(browser, "#map .event-marker"),
            "planned": count(browser, "#map path.event-line.status-planned"),
            "options": count(browser, "#site-select option[value]:not([value=''])"),
            "annual_rows": count(browser, "#annual-table tbody tr"),
            "status": text(browser, "#map-status"),
            "legend": text(browser, "#legend"),
            "alerts": [
                text(browser, s)
                for s in ("#map-message", "#annual-message")
                if browser.execute_script(f"return !document.querySelector('{s}').hidden;")
            ],
            "errors": console_errors(browser),
        }

    page = await in_browser(check)
    assert page["errors"] == []
    assert page["alerts"] == []
    assert page["lang"] == "fr" and page["title"] == "Trafic routier de l'Hérault"
    assert page["outline"] == 1
    assert page["sites"] == 3 and page["fresh"] == 1 and page["stale"] == 2  # Saint-Martin counts now
    assert page["shapes"] == expected_shapes == 3
    assert page["lines"] == 2 and page["points"] == 1 and page["planned"] == 1
    assert page["options"] == 3
    assert page["annual_rows"] == 3
    assert "3 sites de comptage, 3 événements" in page["status"]
    assert "Travaux (1)" in page["legend"] and "Fermeture (1)" in page["legend"]


@one_engine
async def test_a_c3_section_set_through_the_api_appears_on_the_map_in_its_colour(browser: Any, storage: Storage):
    assets_built()

    def network(base: str) -> dict[str, Any]:
        open_page(browser, base + "/")
        return {
            "lines": {level: count(browser, f"#map path.condition-line.level-{level}") for level in ("C1", "C3")},
            "strokes": browser.execute_script(
                "return [...document.querySelectorAll('#map path.condition-line')]"
                ".map((p) => getComputedStyle(p).stroke);"
            ),
            "swatch": browser.execute_script(
                "const s = document.querySelector('#legend .swatch-condition.level-C3');"
                "return s ? getComputedStyle(s).backgroundColor : null;"
            ),
            "legend": text(browser, "#legend .legend-conditions"),
            "errors": console_errors(browser),
        }

    async with agents_app(storage) as client:
        base = str(client.make_url("")).rstrip("/")
        before = await in_browser(network, base)
        section = {"road": "RD986", "from": {"pr": 20}, "to": {"pr": 28, "abscissa": 500}}
        async with client.post(
            "/api/v1/road-conditions", json={**section, "level": "C3"}, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        after = await in_browser(network, base)
        async with client.post(
            "/api/v1/road-conditions", json={**section, "level": "C1"}, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
        back = await in_browser(network, base)
    assert before["lines"] == {"C1": 0, "C3": 0} and "C3 conditions difficiles (0)" in before["legend"]
    assert after["lines"] == {"C1": 0, "C3": 1} and after["strokes"] == ["rgb(234, 88, 12)"]  # #ea580c
    assert after["swatch"] == "rgb(234, 88, 12)" and "C3 conditions difficiles (1)" in after["legend"]
    assert back["lines"] == {"C1": 1, "C3": 0} and back["strokes"] == ["rgb(22, 163, 74)"]  # back to normal
    assert before["errors"] == after["errors"] == back["errors"] == []


@one_engine
async def test_a_browser_event_source_gets_every_change_as_json_with_its_id(browser: Any, site: Site):
    """The change stream in Chromium's own EventSource: every event it fires has JSON
    data and its id (the resume point as a `position` event); nothing reaches
    `onmessage`, which would mean an unnamed or empty block."""
    changes = await site.json("/feeds/events/changes")
    cursors = [c["cursor"] for c in changes["changes"]]
    assert len(cursors) == 4

    def listen() -> list[dict[str, Any]]:
        open_page(browser, site.url("/"))
        browser.execute_script("""
            window.sseSeen = [];
            const source = new EventSource('/feeds/events/stream?since=0');
            window.sseSource = source;
            for (const type of ['position', 'created', 'updated', 'ended', 'reopened', 'message']) {
              source.addEventListener(type, (e) => {
                let json = true;
                try { JSON.parse(e.data); } catch (_) { json = false; }
                window.sseSeen.push({type: e.type, id: e.lastEventId, json: json});
              });
            }""")
        until(browser, "window.sseSeen.length >= 5", "the stream's opening position and four changes")
        seen = browser.execute_script("window.sseSource.close(); return window.sseSeen;")
        assert console_errors(browser) == []
        return seen

    seen = await in_browser(listen)
    assert [s["type"] for s in seen] == ["position", "created", "created", "created", "created"], seen
    assert all(s["json"] for s in seen)
    assert [s["id"] for s in seen] == ["0", *cursors]


@one_engine
async def test_clicking_a_site_draws_its_chart_and_the_downloads_return_its_rows(browser: Any, site: Site):
    montbazin = site.seeded.sites["MTB"]

    def click_site() -> dict[str, Any]:
        open_page(browser, site.url("/"))
        marker = browser.find_element(By.CSS_SELECTOR, f"#map path.site-marker[data-site-id='{montbazin}']")
        marker.click()
        wait_chart(browser, 31)  # the last 31 days of data: 1-31 July
        return {
            "heading": text(browser, "#counts-site"),
            "from": browser.find_element(By.ID, "f-from").get_attribute("value"),
            "to": browser.find_element(By.ID, "f-to").get_attribute("value"),
            "low": browser.execute_script("return document.getElementById('chart').dataset.low;"),
            "low_rows": browser.execute_script(
                "return [...document.querySelectorAll('#counts-table tr.low-coverage')].map(r => r.dataset.period);"
            ),
            "summary": text(browser, "#counts-summary"),
            "canvas": count(browser, "#chart canvas"),
            "url": browser.current_url,
        }

    first = await in_browser(click_site)
    assert "Montbazin" in first["heading"] and "RD613" in first["heading"]
    assert (first["from"], first["to"]) == ("2025-07-01", "2025-07-31")
    assert first["canvas"] >= 1
    assert first["low"] == "1" and [p[:10] for p in first["low_rows"]] == ["2025-07-14"]
    assert "poids lourds" in first["summary"]
    assert f"site={montbazin}" in first["url"]

    def narrow() -> dict[str, Any]:
        browser.execute_script("""
            const set = (id, v) => { const e = document.getElementById(id); e.value = v; };
            set('f-from', '2025-07-10'); set('f-to', '2025-07-16');""")
        Select(browser.find_element(By.ID, "f-direction")).select_by_value("N")
        Select(browser.find_element(By.ID, "f-class")).select_by_value("heavy")
        browser.find_element(By.ID, "f-submit").click()
        until(
            browser,
            "window.roadfeedPage.counts.doc && window.roadfeedPage.counts.doc.points.length === 7 "
            "&& document.getElementById('download-csv').href.includes('vehicle_class=heavy')",
            "the narrowed chart",
        )
        wait_chart(browser, 7)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.execute_script("document.getElementById('counts-details').open = true;")
        browser.save_screenshot(str(ARTIFACTS / "web-page.png"))
        return {
            "csv": browser.find_element(By.ID, "download-csv").get_attribute("href"),
            "csv_fr": browser.find_element(By.ID, "download-csv-fr").get_attribute("href"),
            "csv_fr_label": browser.find_element(By.ID, "download-csv-fr").text,
            "parquet": browser.find_element(By.ID, "download-parquet").get_attribute("href"),
            "points": browser.execute_script("return window.roadfeedPage.counts.doc.points;"),
            "table_rows": count(browser, "#counts-table tbody tr"),
            "directions": browser.execute_script(
                "return [...document.querySelectorAll('#f-direction option')].map(o => [o.value, o.textContent]);"
            ),
            "errors": console_errors(browser),
        }

    second = await in_browser(narrow)
    assert second["errors"] == []
    # Directions as the source names them, the code after the name.
    assert second["directions"][1:] == [["N", "vers Montpellier (N)"], ["S", "vers Sète (S)"]]
    assert second["table_rows"] == 7
    assert "format=csv" in second["csv"] and "format=parquet" in second["parquet"]
    assert second["csv"].replace("format=csv", "format=parquet") == second["parquet"]
    # the page shows 10 to 16 July inclusive; the API's `to` is exclusive
    for part in ("from=2025-07-10", "to=2025-07-17", "step=day", "direction=N", "vehicle_class=heavy"):
        assert part in second["csv"]

    # The French button's file opens as a French spreadsheet reads it: BOM, `;` between
    # cells, decimal commas, French headers; the same values as the chart.
    assert second["csv_fr"] == second["csv"] + "&dialect=fr" and "français" in second["csv_fr_label"]
    status, headers, body = await site.get(second["csv_fr"])
    assert status == 200 and body.startswith("\ufeff".encode())
    cells = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))
    assert cells[0][:3] == ["période", "comptage", "couverture"] and all(len(r) == len(cells[0]) for r in cells)
    for row, point in zip(cells[1:], second["points"], strict=True):
        assert float(row[2].replace(",", ".")) == pytest.approx(point["coverage"])
        assert "." not in row[2] and (point["speed"] is None or "," in row[4])

    # The JSON document of the same query is what the chart shows ...
    doc = await site.json(second["csv"].replace(site.base, "").replace("format=csv", "format=json"))
    assert doc["points"] == second["points"]
    assert [p["period"][:10] for p in doc["points"]] == [f"2025-07-{d}" for d in range(10, 17)]
    assert doc["points"][4]["coverage"] < 0.95  # 14 July
    # ... and the CSV has exactly its rows.
    status, headers, body = await site.get(second["csv"])
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = parse_csv(body)
    assert list(rows[0]) == ["period", "count", "coverage", "estimated_share", "speed", "invalid", "invalid_reasons"]
    assert len(rows) == len(doc["points"])
    for row, point in zip(rows, doc["points"], strict=True):
        assert row["period"][:10] == str(point["period"])[:10]
        assert (int(row["count"]) if row["count"] else None) == point["count"]
        for key in ("coverage", "estimated_share", "speed"):
            assert close(row[key], point[key]), (key, row, point)
    status, _headers, body = await site.get(second["parquet"])
    assert status == 200 and body[:4] == b"PAR1" and body[-4:] == b"PAR1"
    table = pq.read_table(io.BytesIO(body)).to_pylist()
    assert [r["count"] for r in table] == [p["count"] for p in doc["points"]]
    assert all(close(r["coverage"], p["coverage"]) for r, p in zip(table, doc["points"], strict=True))


@one_engine
async def test_the_annual_table_sorts_filters_exports_and_opens_a_site(browser: Any, site: Site):
    def sort_and_filter() -> dict[str, Any]:
        open_page(browser, site.url("/?year=2025"))
        until(browser, "document.querySelectorAll('#annual-table tbody tr').length === 3", "three rows")
        column = (
            "return [...document.querySelectorAll('#annual-table tbody td[data-key=\"tmja\"]')]"
            ".map(c => Number(c.dataset.value));"
        )
        names = "return [...document.querySelectorAll('#annual-table tbody tr')].map(r => r.dataset.siteId);"
        header = "#annual-table th[data-key='tmja']"
        browser.find_element(By.CSS_SELECTOR, f"{header} button").click()
        descending = browser.execute_script(column)
        sort_down = browser.find_element(By.CSS_SELECTOR, header).get_attribute("aria-sort")
        browser.find_element(By.CSS_SELECTOR, f"{header} button").send_keys(Keys.ENTER)  # the same by keyboard
        ascending = browser.execute_script(column)
        sort_up = browser.find_element(By.CSS_SELECTOR, header).get_attribute("aria-sort")
        by_tmja = browser.execute_script(names)
        filter_box = browser.find_element(By.ID, "annual-filter")
        filter_box.send_keys("rd613")
        filtered = browser.execute_script(names)
        filtered_links = [
            browser.find_element(By.ID, i).get_attribute("href")
            for i in ("annual-csv", "annual-csv-fr", "annual-parquet")
        ]
        filter_box.send_keys(Keys.CONTROL, "a")
        filter_box.send_keys(Keys.BACKSPACE)
        until(browser, "document.querySelectorAll('#annual-table tbody tr').length === 3", "the filter cleared")
        csv_href = browser.find_element(By.ID, "annual-csv").get_attribute("href")
        rows = browser.execute_script("return window.roadfeedPage.annual.doc.rows;")
        caption = text(browser, "#annual-caption")
        return dict(
            descending=descending,
            ascending=ascending,
            sort_down=sort_down,
            sort_up=sort_up,
            by_tmja=by_tmja,
            filtered=filtered,
            filtered_links=filtered_links,
            csv=csv_href,
            rows=rows,
            caption=caption,
            errors=console_errors(browser),
        )

    page = await in_browser(sort_and_filter)
    assert page["errors"] == []
    assert page["sort_down"] == "descending" and page["sort_up"] == "ascending"
    assert page["descending"] == sorted(page["descending"], reverse=True)
    assert page["ascending"] == sorted(page["ascending"]) and len(page["ascending"]) == 3
    ids = site.seeded.sites
    assert page["by_tmja"][-1] == str(ids["MTB"])  # Montbazin has twice the traffic
    assert page["filtered"] == [str(ids["MTB"])]
    assert "2025" in page["caption"] and "95" in page["caption"]

    doc = await site.json("/api/v1/annual?year=2025")
    assert doc["rows"] == page["rows"]
    assert page["csv"].endswith("/api/v1/annual?year=2025&format=csv")
    # The downloads hold the rows the filtered table shows, in every format.
    csv_link, fr_link, parquet_link = page["filtered_links"]
    assert csv_link.endswith("/api/v1/annual?year=2025&format=csv&q=rd613")
    assert [int(r["site_id"]) for r in parse_csv((await site.get(csv_link))[2])] == [int(i) for i in page["filtered"]]
    fr_rows = (await site.get(fr_link))[2].decode("utf-8-sig").splitlines()
    assert len(fr_rows) == 1 + len(page["filtered"]) and "q=rd613" in parquet_link
    status, headers, body = await site.get(page["csv"])
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = parse_csv(body)
    assert sorted(int(r["site_id"]) for r in rows) == sorted(r["site_id"] for r in doc["rows"])
    by_id = {r["site_id"]: r for r in doc["rows"]}
    for row in rows:
        expected = by_id[int(row["site_id"])]
        for key in ("tmja", "tmjo", "heavy_share", "days_valid", "days_excluded", "mean_coverage"):
            assert close(row[key], expected[key]), (key, row, expected)

    # The page's filter and the server's q keep the same rows, whatever the accents, case and spaces.
    filters = ["BÉZIERS", "  rd613 ", "gély", "e", "É", "nord rd", "MC", "zz", "\u0301"]

    def filter_each() -> list[tuple[list[str], str]]:
        out = []
        box = browser.find_element(By.ID, "annual-filter")
        for value in filters:
            browser.execute_script(
                "const e = arguments[0]; e.value = arguments[1];e.dispatchEvent(new Event('input'));", box, value
            )
            ids = browser.execute_script(
                "return [...document.querySelectorAll('#annual-table tbody tr')].map(r => r.dataset.siteId);"
            )
            out.append((ids, browser.find_element(By.ID, "annual-csv").get_attribute("href")))
        return out

    for value, (shown, link) in zip(filters, await in_browser(filter_each), strict=True):
        served = [r["site_id"] for r in parse_csv((await site.get(link))[2])]
        assert sorted(served) == sorted(shown), (value, shown, served)

    def open_from_table() -> str:
        browser.find_element(By.CSS_SELECTOR, f"#annual-table tr[data-site-id='{ids['BEZ']}'] .link-button").click()
        wait_chart(browser)
        return text(browser, "#counts-site")

    assert "Béziers Nord" in await in_browser(open_from_table)


@one_engine
async def test_keyboard_alone_reaches_a_site_and_its_chart(browser: Any, site: Site):
    def by_keyboard() -> dict[str, Any]:
        open_page(browser, site.url("/"))
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        reached = None
        for _ in range(40):  # skip link, language, map, zoom, then the markers
            active = browser.switch_to.active_element
            if "site-marker" in (active.get_attribute("class") or ""):
                reached = active.get_attribute("aria-label")
                break
            active.send_keys(Keys.TAB)
        assert reached, "no site marker reachable with Tab"
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        wait_chart(browser)
        focused = browser.execute_script("return document.activeElement.id;")
        heading = text(browser, "#counts-site")
        select = browser.find_element(By.ID, "site-select")
        select.send_keys("RD986")  # typing selects the option, as a person would
        until(browser, "document.getElementById('counts-site').innerText.includes('Saint-Martin')", "the chosen site")
        wait_chart(browser)
        return dict(reached=reached, focused=focused, heading=heading, errors=console_errors(browser))

    page = await in_browser(by_keyboard)
    assert page["errors"] == []
    assert page["focused"] == "counts"  # focus follows to the counts
    assert page["reached"].split(",")[0].split(":")[0] in page["heading"]


@one_engine
async def test_english_texts_and_event_popups(browser: Any, site: Site):
    def english() -> dict[str, Any]:
        open_page(browser, site.url("/?lang=en"))
        title = text(browser, "h1")
        lang = browser.execute_script("return document.documentElement.lang;")
        works = browser.find_element(By.CSS_SELECTOR, "#map path.event-line[data-event-id='inforoute:works']")
        browser.execute_script("arguments[0].focus();", works)  # reachable with Tab; opened with Enter
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        until(browser, "document.querySelector('.leaflet-popup-content')", "the event popup")
        popup_en = text(browser, ".leaflet-popup-content")
        browser.find_element(By.ID, "lang-toggle").click()
        until(browser, "document.documentElement.lang === 'fr'", "French")
        crash = browser.find_element(By.CSS_SELECTOR, "#map .event-marker[data-event-id='inforoute:crash']")
        crash.click()
        popups = "[...document.querySelectorAll('.leaflet-popup-content')]"
        until(browser, f"{popups}.some(p => p.innerText.includes('RD986'))", "the accident popup")
        popup_fr = browser.execute_script(f"return {popups}.map(p => p.innerText).join('|');")
        return dict(
            title=title,
            lang=lang,
            popup_en=popup_en,
            popup_fr=popup_fr,
            title_fr=text(browser, "h1"),
            url=browser.current_url,
            errors=console_errors(browser),
        )

    page = await in_browser(english)
    assert page["errors"] == []
    assert page["lang"] == "en" and page["title"] == "Hérault road traffic"
    for expected in ("Roadworks", "RD613", "active", "Road works", "Start"):
        assert expected in page["popup_en"]
    assert page["title_fr"] == "Trafic routier de l'Hérault" and "lang=en" not in page["url"]
    for expected in ("Accident", "RD986", "en cours", "Accident, une voie neutralisée", "forte"):
        assert expected in page["popup_fr"]


@one_engine
async def test_errors_and_empty_periods_are_explained(browser: Any, site: Site):
    ids = site.seeded.sites

    def messages() -> dict[str, Any]:
        open_page(browser, site.url(f"/?site={ids['MTB']}&from=2025-07-31&to=2025-07-01&step=day"))
        until(browser, "!document.getElementById('counts-message').hidden", "the error message")
        error = text(browser, "#counts-message")
        error_role = browser.find_element(By.ID, "counts-message").get_attribute("role")
        chart_hidden = browser.execute_script("return document.getElementById('chart-figure').hidden;")
        logged = console_errors(browser)
        open_page(browser, site.url(f"/?site={ids['BEZ']}&from=2025-01-01&to=2025-01-31&step=day"))
        until(browser, "!document.getElementById('counts-message').hidden", "the empty-data message")
        empty = text(browser, "#counts-message")
        downloads_hidden = browser.execute_script("return document.getElementById('downloads').hidden;")
        return dict(
            error=error,
            role=error_role,
            chart_hidden=chart_hidden,
            logged=logged,
            empty=empty,
            downloads_hidden=downloads_hidden,
            errors=console_errors(browser),
        )

    page = await in_browser(messages)
    assert page["role"] == "alert" and page["chart_hidden"]
    assert "Paramètre" in page["error"] and ("from" in page["error"] or "to" in page["error"])
    # the only console error is the browser's note of the refused request
    assert page["logged"] and all("400" in m for m in page["logged"])
    assert "Aucune donnée" in page["empty"] and page["downloads_hidden"]
    assert page["errors"] == []


# Words of the API's English texts that no French sentence of the page uses.
ENGLISH_WORDS = re.compile(
    r"\b(the|of|and|is|are|when|with|expected|intervals?|days?|vehicles?|not|one|"
    r"before|after|within|from|than|must|site.s|which)\b",
    re.IGNORECASE,
)


def english_words(texts: list[str]) -> list[str]:
    """The English words in `texts`, except parameter names and values quoted « like this »."""
    unquoted = [re.sub(r"«[^»]*»", "", t) for t in texts]
    return [m.group(0) for t in unquoted for m in ENGLISH_WORDS.finditer(t)]


@one_engine
async def test_french_mode_shows_no_english_in_errors_nor_in_the_method(browser: Any, site: Site):
    """In French, an API refusal is explained in French (the API's English `expected` and `detail`
    are not shown) and the method section reads in French, with each rejection reason's French text."""
    ids = site.seeded.sites
    cases = [
        f"/?site={ids['MTB']}&from=2025-07-31&to=2025-07-01&step=day",
        f"/?site={ids['MTB']}&from=2025-01-01&to=2025-06-01&step=hour",
    ]

    def read() -> dict[str, Any]:
        errors = []
        for path in cases:
            open_page(browser, site.url(path))
            until(browser, "!document.getElementById('counts-message').hidden", "the error message")
            errors.append(text(browser, "#counts-message"))
        open_page(browser, site.url(f"/?site={ids['MTB']}&from=2025-07-01&to=2025-07-08&step=day"))
        wait_chart(browser)
        browser.execute_script("document.querySelectorAll('#counts-method details').forEach(d => d.open = true);")
        method = browser.execute_script(
            "return [...document.querySelectorAll('#counts-method p, #counts-method dt, #counts-method dd,"
            " #counts-method summary')].map(e => e.innerText);"
        )
        return dict(errors=errors, method=method, lang=browser.execute_script("return document.documentElement.lang;"))

    page = await in_browser(read)
    assert page["lang"] == "fr"
    for path, shown in zip(cases, page["errors"], strict=True):
        api_path = "/api/v1/sites/{}/counts?{}".format(ids["MTB"], path.split("&", 1)[1])
        refusal = json.loads((await site.get(api_path))[2])
        assert "Paramètre" in shown and refusal["parameter"] in shown, shown
        assert refusal["detail"] not in shown and refusal["expected"] not in shown
        assert english_words([shown]) == [], shown
    assert len(page["method"]) > 10 and english_words(page["method"]) == [], english_words(page["method"])
    joined = "\n".join(page["method"])
    assert "Couverture" in joined and "Motif de rejet « spike »" in joined and "Validation" in joined


# --------------------------------------------------------------------------- HTTP (no browser, no database)


def bare_app(directory: Path) -> web.Application:
    app = web.Application()
    make_web_routes(directory)(app, SimpleNamespace(config=CONFIG))
    return app


async def test_the_page_and_hashed_assets_have_the_right_cache_and_security_headers():
    assets_built()
    built = WebAssets.load(ASSETS_DIR)
    assert built is not None
    async with TestClient(TestServer(bare_app(ASSETS_DIR), host="127.0.0.1")) as client:
        response = await client.get("/?lang=en")
        html = await response.text()
        assert response.status == 200 and response.headers["Cache-Control"] == "no-cache"
        assert response.headers["Content-Language"] == "en" and '<html lang="en">' in html
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "http" not in csp
        config = json.loads(html.split('id="roadfeed-config">', 1)[1].split("</script>", 1)[0])
        assert config["lang"] == "en" and config["coverage_threshold"] == 0.95 and config["tile_url"] is None
        again = await client.get("/?lang=en", headers={"If-None-Match": response.headers["ETag"]})
        assert again.status == 304
        assert '<html lang="fr">' in await (await client.get("/?lang=xx")).text()

        scripts = [name for name in built.immutable if name.endswith(".js")]
        assert scripts and f"/static/{scripts[0]}" in html
        response = await client.get(f"/static/{scripts[0]}", headers={"Accept-Encoding": "br, gzip"})
        assert response.status == 200
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Content-Encoding"] == "br"
        assert "javascript" in response.headers["Content-Type"]

        response = await client.get("/static/herault.geojson", headers={"Accept-Encoding": "gzip"})
        outline = await response.json(content_type=None)
        assert response.status == 200 and response.headers["Content-Type"] == "application/geo+json"
        assert outline == json.loads(OUTLINE_PATH.read_bytes())
        assert outline["geometry"]["type"] in ("Polygon", "MultiPolygon")

        for missing in ("/static/nothing.js", "/static/..%2Fwebpage.py", "/static/manifest.json"):
            assert (await client.get(missing)).status == 404, missing


async def test_an_unbuilt_page_says_how_to_build_it(tmp_path: Path):
    async with TestClient(TestServer(bare_app(tmp_path), host="127.0.0.1")) as client:
        response = await client.get("/")
        assert response.status == 503
        assert "scripts/build-web" in await response.text()
        assert (await client.get("/static/herault.geojson")).status == 200


def test_a_configured_tile_server_is_the_only_other_origin_allowed():
    assert "img-src 'self' data:;" in content_security_policy(None)
    csp = content_security_policy("https://tiles.example.org/{z}/{x}/{y}.png")
    assert "img-src 'self' data: https://tiles.example.org;" in csp and "connect-src 'self';" in csp
    assert "https://*.tile.example.org;" in content_security_policy("https://{s}.tile.example.org/{z}/{x}/{y}.png")


def test_french_and_english_texts_have_the_same_keys_and_placeholders():
    texts = {
        lang: json.loads((REPO / "web" / "i18n" / f"{lang}.json").read_text(encoding="utf-8")) for lang in ("fr", "en")
    }
    assert texts["fr"].keys() == texts["en"].keys()
    for key, french in texts["fr"].items():
        assert set(re.findall(r"\{(\w+)\}", french)) == set(re.findall(r"\{(\w+)\}", texts["en"][key])), key
