"""The agents' workflow in a real headless Chromium, in French, over the real
application: an editor logs in, enters alternating one-way traffic on RD613 by PR
range with night slots, sees what each consumer receives, publishes, finds it in
DATEX II v3, WZDx, Waze CIFS (with its `schedule`) and GeoJSON, each valid, ends it
and sees its versions with the author; sets a road section's winter state; marks a
counter faulty and sees the public page's annual table change; uploads a campaign
file with one bad line and sees it reported. Another editor draws an event's line
on the map of the referential's roads, click by click, and publishes it; a closure
drawn too short for Waze is refused in the preview. A road section's winter state is
chosen by two clicks on the coloured network's map. Screenshots go to
test-artifacts/ (the README shows copies kept in docs/)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents_support import CIFS, DATEX_V3, WZDX, load_simulated_roads, xml_valid
from feed.config import Config, PublicationConfig, ServerConfig
from feed.http import agents
from feed.http.app import build_app
from feed.http.context import CONTEXT
from feed.model import ChannelRecord, SiteRecord
from feed.store.storage import Storage
from test_page import ARTIFACTS, assets_built, browser, in_browser, one_engine, open_page, until  # noqa: F401

PARIS = ZoneInfo("Europe/Paris")
PASSWORD = "lunettes de soleil 34"
FEEDS = (
    "/feeds/datex2/v3/situations.xml",
    "/feeds/wzdx/v4.2/work-zones.geojson",
    "/feeds/waze/cifs.xml",
    "/feeds/events.geojson",
)
pytestmark = [one_engine, pytest.mark.timeout(240)]


@pytest.fixture
async def site(storage: Storage, db_url: str) -> AsyncIterator[tuple[str, int, TestClient]]:
    assets_built()
    await load_simulated_roads(storage)
    await storage.ensure_source("cd34", "opendatasoft", "http://127.0.0.1:9/cd34")
    await storage.upsert_sites(
        "cd34",
        [SiteRecord(external_id="MTB", name="Montbazin", road="RD613", pr=12, abscissa=250, lon=3.69, lat=43.51)],
    )
    await storage.upsert_channels(
        "cd34", [ChannelRecord(site_external_id="MTB", external_id="MTB-N", direction="N", time_step=3600)]
    )
    channel = (await storage.channel_ids("cd34"))["MTB-N"]
    start = datetime(2025, 7, 1, tzinfo=PARIS)
    await storage.ingest_measurements(
        [(channel, start + timedelta(hours=h), 3600, 300 + h % 24, None, None, "observed") for h in range(24 * 10)]
    )
    site_id = (await storage.site_ids("cd34", ["MTB"]))["MTB"]
    with psycopg.connect(db_url) as conn:
        agents.add_agent(conn, "claire", "editor", PASSWORD, "Claire, service des routes")
    config = Config(
        server=ServerConfig(rate_limit_per_minute=0), publication=PublicationConfig(bbox=(-5.0, 41.0, 10.0, 51.5))
    )
    app = build_app(config, storage)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        assert await app[CONTEXT].publisher.wait_ready(30)
        yield str(client.make_url("")).rstrip("/"), site_id, client
    finally:
        await client.close()


def shot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def fill(driver: Any, values: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - selenium is optional (see test_page)

    for element_id, value in values.items():
        field = driver.find_element(By.ID, element_id)
        if field.tag_name == "select":
            driver.execute_script(
                "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('change'));", field, value
            )
        elif field.get_attribute("type") == "datetime-local" or field.get_attribute("type") == "date":
            driver.execute_script("arguments[0].value = arguments[1];", field, value)
        else:
            field.clear()
            field.send_keys(value)


def click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    driver.find_element(By.CSS_SELECTOR, selector).click()


def open_agents(driver: Any, url: str) -> None:
    driver.get(f"{url}/agents")
    until(driver, "document.body.dataset.loaded === 'true'", "the agents' page")
    fill(driver, {"login-user": "claire", "login-password": PASSWORD})
    click(driver, "#login-submit")
    until(driver, "document.body.dataset.ready === 'true'", "the log-in")


def consumer_preview(driver: Any) -> list[list[str]]:
    """Asks for the consumers' preview and reads it: (consumer, accepted, reason) per row."""
    click(driver, "#ev-preview")
    until(driver, "document.querySelectorAll('#consumers tbody tr').length === 5", "the consumers' preview")
    return driver.execute_script(
        "return [...document.querySelectorAll('#consumers tbody tr')].map(r => [r.dataset.consumer, "
        "r.cells[1].textContent, r.cells[2].textContent]);"
    )


def log_in_and_enter(driver: Any, url: str) -> dict[str, Any]:
    open_agents(driver, url)
    fill(
        driver,
        {
            "ev-kind": "alternating_traffic",
            "ev-road": "RD613",
            "ev-pr-from": "12",
            "ev-abs-from": "150",
            "ev-pr-to": "13",
            "ev-abs-to": "400",
            "ev-lanes": "1 voie sur 2",
            "ev-fr": "Circulation alternée par feux, réfection de chaussée",
            "ev-en": "Alternating one-way traffic, resurfacing",
        },
    )
    click(driver, "#ev-nights")
    preview = consumer_preview(driver)
    until(driver, "document.querySelectorAll('#preview-map polyline').length === 1", "the line drawn")
    shot(driver, "agents-preview.png")
    click(driver, "#ev-publish")
    event_id = until(driver, "document.querySelector('#published tbody tr')?.dataset.id", "the publication")
    return {
        "preview": preview,
        "event_id": event_id,
        "published_at": time.monotonic(),
        "who": driver.find_element("id", "who").text,
    }


def end_and_versions(driver: Any) -> list[list[str]]:
    click(driver, "#published tbody tr button.end")
    until(driver, "document.querySelector('#published tbody tr').cells[2].textContent === 'terminé'", "the end")
    click(driver, "#published tbody tr button.versions")
    until(driver, "document.querySelectorAll('#versions tbody tr').length === 2", "the versions")
    shot(driver, "agents-versions.png")
    return driver.execute_script(
        "return [...document.querySelectorAll('#versions tbody tr')].map(r => [...r.cells].map(c => c.textContent));"
    )


def annual_days(driver: Any, url: str, site_id: int) -> str:
    # History answers may be kept a minute by browsers (Cache-Control: max-age=60): read afresh.
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    open_page(driver, f"{url}/")
    cell = f"#annual-table tr[data-site-id='{site_id}'] td[data-key='days_valid']"
    until(driver, f'document.querySelector("{cell}")', "the annual table")
    return driver.execute_script(f'return document.querySelector("{cell}").dataset.value;')


def mark_faulty(driver: Any, url: str, site_id: int) -> str:
    open_agents(driver, url)
    fill(
        driver,
        {"mk-site": str(site_id), "mk-from": "2025-07-03", "mk-to": "2025-07-05", "mk-comment": "boucle arrachée"},
    )
    click(driver, "#mk-submit")
    return until(
        driver,
        "!document.getElementById('marking-message').hidden && document.getElementById('marking-message').textContent",
        "the marking",
    )


def conditions_and_campaign(driver: Any, url: str, campaign_file: Path) -> dict[str, Any]:
    open_agents(driver, url)
    fill(driver, {"co-road": "RD986", "co-pr-from": "20", "co-pr-to": "28", "co-level": "C3"})
    click(driver, "#conditions-form button[type=submit]")
    until(driver, "document.querySelector('#network polyline.condition')?.dataset.level === 'C3'", "the network")
    fill(driver, {"cp-name": "rd32-mars", "cp-file": str(campaign_file)})
    click(driver, "#cp-check")
    until(driver, "document.querySelectorAll('#campaign-errors tbody tr').length === 1", "the preview's errors")
    errors = driver.execute_script(
        "return [...document.querySelectorAll('#campaign-errors tbody tr')].map(r => r.cells[0].textContent + ' — ' "
        "+ r.cells[1].textContent);"
    )
    click(driver, "#cp-import")
    report = until(
        driver,
        "document.getElementById('campaign-message').textContent.startsWith('Importé') && "
        "document.getElementById('campaign-message').textContent",
        "the import",
    )
    shot(driver, "agents-campaign.png")
    return {"errors": errors, "report": report}


def comptage_campaign(driver: Any, url: str, files: list[Path]) -> dict[str, Any]:
    open_agents(driver, url)
    fill(driver, {"cp-name": "baix-2021", "cp-file": "\n".join(str(f) for f in files)})
    click(driver, "#cp-check")
    preview = until(
        driver,
        "document.getElementById('campaign-message').textContent.includes('comptages valides')"
        " && document.getElementById('campaign-message').textContent",
        "the preview",
    )
    click(driver, "#cp-import")
    report = until(
        driver,
        "document.getElementById('campaign-message').textContent.startsWith('Importé') && "
        "document.getElementById('campaign-message').textContent",
        "the import",
    )
    return {"preview": preview, "report": report}


async def test_a_comptage_des_mobilites_campaign_is_uploaded_as_its_three_files(
    browser: Any, site: tuple[str, int, TestClient]
) -> None:
    url, _site_id, client = site
    samples = Path(__file__).parents[1] / "data" / "comptage"
    files = [samples / f"{kind}.exemple-valide.csv" for kind in ("measure", "site", "channel")]
    done = await in_browser(comptage_campaign, browser, url, files)
    assert done["preview"].startswith("9 comptages valides sur 1 sites, 0 ligne(s) refusée(s)")
    assert "campaign-baix-2021 : 3 comptages, 6 en quarantaine" in done["report"]  # channels C-C-02/03 unknown
    async with client.get("/api/v1/sites?limit=100") as resp:
        assert "C01-Baix" in {s["external_id"] for s in (await resp.json())["sites"]}


async def test_the_agents_workflow_in_french(browser: Any, site: tuple[str, int, TestClient]) -> None:
    url, site_id, client = site
    entered = await in_browser(log_in_and_enter, browser, url)
    assert entered["who"] == "Connecté : claire (editor)"
    assert {c: (ok, reason) for c, ok, reason in entered["preview"]} == {
        "datex2_v3": ("oui", ""),
        "datex2_v2": ("oui", ""),
        "wzdx": ("oui", ""),
        "waze": ("oui", ""),
        "geojson": ("oui", ""),
    }
    event_id = entered["event_id"]
    bodies = {}
    for path in FEEDS:
        while event_id.encode() not in (body := await (await client.get(path)).read()):
            assert time.monotonic() - entered["published_at"] < 10, f"{event_id} not in {path}"
            await asyncio.sleep(0.05)
        bodies[path] = body
    xml_valid(DATEX_V3, bodies[FEEDS[0]])
    assert not list(WZDX.iter_errors(json.loads(bodies[FEEDS[1]])))
    cifs = xml_valid(CIFS, bodies[FEEDS[2]])
    incident = next(i for i in cifs.iter("incident") if i.get("id") == event_id)
    assert incident.find("schedule").findtext("monday") == "21:00-23:59"
    assert any(f["id"] == event_id for f in json.loads(bodies[FEEDS[3]])["features"])

    versions = await in_browser(end_and_versions, browser)
    assert [(v[0], v[1], v[2]) for v in versions] == [("1", "créé", "claire"), ("2", "terminé", "claire")]

    before = await in_browser(annual_days, browser, url, site_id)
    message = await in_browser(mark_faulty, browser, url, site_id)
    assert "défaillant" in message
    async with client.get("/api/v1/annual?year=2025") as resp:
        row = next(r for r in (await resp.json())["rows"] if r["site_id"] == site_id)
    assert row["days_valid"] == 8, row  # July 3 and 4 left out
    after = await in_browser(annual_days, browser, url, site_id)
    assert (before, after) == ("10", "8")
    await in_browser(shot, browser, "agents-annual-after-marking.png")

    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, encoding="utf-8") as f:
        f.write("site;name;road;pr;abscissa;lon;lat;direction;vehicle_class;hour;count\n")
        for h in range(6):
            f.write(f"K1;RD32 Argelliers;RD32;5;300;;;N;all;2025-03-03 0{h}:00;{40 + h}\n")
        f.write("K1;RD32 Argelliers;RD32;5;300;;;N;all;2025-03-03 07:00;beaucoup\n")
    campaign = await in_browser(conditions_and_campaign, browser, url, Path(f.name))
    assert campaign["errors"] == ["line 8 — count 'beaucoup' is not a whole number"]
    assert "6 comptages, 1 en quarantaine" in campaign["report"]
    Path(f.name).unlink()


# Drawing on the map -------------------------------------------------------------

VIEWBOX = (400.0, 200.0)


async def road_lines(client: TestClient) -> list[list[list[float]]]:
    """Every road of the referential as the API gives it: the lines the page draws."""
    async with client.get("/api/v1/roads/network") as resp:
        return [f["geometry"]["coordinates"] for f in (await resp.json())["features"]]


def fitted(lines: list[list[list[float]]]) -> tuple[float, float, float, float]:
    """x0, y0, k, scale of a 400 x 200 map fitted to the roads' box with a 10-unit margin, one
    scale for both axes, longitudes shrunk by cos(middle latitude)."""
    xs = [p[0] for line in lines for p in line]
    ys = [p[1] for line in lines for p in line]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    k = math.cos(math.radians((y0 + y1) / 2))
    return x0, y0, k, min(380 / ((x1 - x0) * k), 180 / (y1 - y0))


def lon_lat_at(lines: list[list[list[float]]], x: float, y: float) -> tuple[float, float]:
    """The lon/lat at viewBox point (x, y) of the map of `lines`."""
    x0, y0, k, scale = fitted(lines)
    return x0 + (x - 10) / (k * scale), y0 + (190 - y) / scale


def svg_at(lines: list[list[list[float]]], lon: float, lat: float) -> tuple[float, float]:
    """The viewBox point of (lon, lat) on the map of `lines`."""
    x0, y0, k, scale = fitted(lines)
    return 10 + (lon - x0) * k * scale, 190 - (lat - y0) * scale


def map_clicker(driver: Any, svg_id: str) -> Any:
    """A function clicking the SVG map `svg_id` at a viewBox point, through the screen position
    its on-screen size gives; it returns the point the clicked pixel stands for."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: PLC0415

    rect = driver.execute_script(
        f"const svg = document.getElementById('{svg_id}'); svg.scrollIntoView({{block: 'center'}});"
        "const r = svg.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];"
    )
    left, top, width, height = rect
    fit = min(width / VIEWBOX[0], height / VIEWBOX[1])  # preserveAspectRatio xMidYMid meet
    pad_x, pad_y = (width - VIEWBOX[0] * fit) / 2, (height - VIEWBOX[1] * fit) / 2

    def click_at(x: float, y: float) -> tuple[float, float]:
        screen_x, screen_y = round(left + pad_x + x * fit), round(top + pad_y + y * fit)
        actions = ActionBuilder(driver)
        actions.pointer_action.move_to_location(screen_x, screen_y).click()
        actions.perform()
        return (screen_x - left - pad_x) / fit, (screen_y - top - pad_y) / fit

    return click_at


def draw_and_publish(driver: Any, url: str, clicks: list[tuple[float, float]]) -> dict[str, Any]:
    """Clicks the map at viewBox points `clicks` (plus one undone and one cleared point),
    previews and publishes; returns the screen points clicked, in viewBox units."""
    open_agents(driver, url)
    until(driver, "document.getElementById('draw-map').dataset.ready === 'true'", "the roads' map")
    roads = driver.execute_script("return document.querySelectorAll('#draw-map polyline.road').length;")
    fill(driver, {"ev-kind": "works", "ev-road": "RD613", "ev-fr": "Tracé à la main"})
    click_at = map_clicker(driver, "draw-map")

    def drawn() -> int:
        return driver.execute_script("return document.querySelectorAll('#draw-map circle.vertex').length;")

    click_at(50, 50)
    until(driver, "document.querySelectorAll('#draw-map circle.vertex').length === 1", "a first point")
    click(driver, "#dr-clear")
    until(driver, "document.querySelectorAll('#draw-map circle.vertex').length === 0", "the line cleared")
    clicked = []
    for n, (x, y) in enumerate(clicks, 1):
        clicked.append(click_at(x, y))
        until(driver, f"document.querySelectorAll('#draw-map circle.vertex').length === {n}", f"point {n}")
    click_at(390, 190)
    until(driver, f"document.querySelectorAll('#draw-map circle.vertex').length === {len(clicks) + 1}", "a point")
    click(driver, "#dr-undo")
    until(driver, f"document.querySelectorAll('#draw-map circle.vertex').length === {len(clicks)}", "the undo")
    status = driver.find_element("id", "draw-status").text
    preview = consumer_preview(driver)
    until(driver, "document.querySelectorAll('#preview-map polyline').length === 1", "the preview's line")
    shot(driver, "agents-drawn.png")
    click(driver, "#ev-publish")
    event_id = until(driver, "document.querySelector('#published tbody tr')?.dataset.id", "the publication")
    return {
        "roads": roads,
        "clicked": clicked,
        "drawn": drawn(),
        "status": status,
        "preview": preview,
        "event_id": event_id,
        "published_at": time.monotonic(),
    }


def type_short_closure(driver: Any, url: str, points: list[tuple[float, float]]) -> list[list[str]]:
    """A closure drawn with the keyboard only: each point typed in, then the preview."""
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415

    open_agents(driver, url)
    fill(driver, {"ev-kind": "closure", "ev-road": "RD613"})
    for n, (lon, lat) in enumerate(points, 1):
        fill(driver, {"dr-lon": str(lon), "dr-lat": str(lat)})
        driver.find_element("id", "dr-lat").send_keys(Keys.ENTER)
        until(driver, f"document.querySelectorAll('#draw-map circle.vertex').length === {n}", f"point {n}")
    return consumer_preview(driver)


async def test_an_event_line_drawn_on_the_map(browser: Any, site: tuple[str, int, TestClient]) -> None:
    url, _site_id, client = site
    lines = await road_lines(client)
    assert len(lines) >= 2
    done = await in_browser(draw_and_publish, browser, url, [(150.0, 80.0), (200.0, 100.0), (260.0, 120.0)])
    assert done["roads"] == len(lines)
    assert done["drawn"] == 3
    assert done["status"] == "Ligne tracée de 3 points : elle remplace les PR saisis."
    assert {c: (ok, reason) for c, ok, reason in done["preview"]} == {
        "datex2_v3": ("oui", ""),
        "datex2_v2": ("oui", ""),
        "wzdx": ("oui", ""),
        "waze": ("oui", ""),
        "geojson": ("oui", ""),
    }
    expected = [lon_lat_at(lines, x, y) for x, y in done["clicked"]]

    event_id = done["event_id"]
    async with client.get(f"/api/v1/events/{event_id}") as resp:
        stored = (await resp.json())["versions"][-1]
    assert stored["geometry"]["type"] == "LineString"
    positions = stored["geometry"]["coordinates"]
    assert len(positions) == 3
    for (lon, lat), (want_lon, want_lat) in zip(positions, expected, strict=True):
        assert abs(lon - want_lon) < 1e-6 and abs(lat - want_lat) < 1e-6, (positions, expected)
    assert stored["road"] == "RD613"

    bodies = {}
    for path in ("/feeds/events.geojson", "/feeds/datex2/v3/situations.xml"):
        while event_id.encode() not in (body := await (await client.get(path)).read()):
            assert time.monotonic() - done["published_at"] < 10, f"{event_id} not in {path}"
            await asyncio.sleep(0.05)
        bodies[path] = body
    feature = next(f for f in json.loads(bodies["/feeds/events.geojson"])["features"] if f["id"] == event_id)
    published = feature["geometry"]["coordinates"]  # 6 decimals in the feed
    assert len(published) == 3
    assert all(math.dist(a, b) < 1e-6 for a, b in zip(published, positions, strict=True)), published
    xml_valid(DATEX_V3, bodies["/feeds/datex2/v3/situations.xml"])


async def test_a_closure_drawn_too_short_is_refused_by_waze(browser: Any, site: tuple[str, int, TestClient]) -> None:
    url, _site_id, _client = site
    # two points 0.0002° of latitude apart: about 22 m, Waze wants a closure of 35 m at least
    preview = await in_browser(type_short_closure, browser, url, [(3.69, 43.51), (3.69, 43.5102)])
    verdicts = {c: (ok, reason) for c, ok, reason in preview}
    assert verdicts["waze"] == ("non", "road closure is 22 m long; Waze needs at least 35 m")
    assert all(ok == "oui" for c, (ok, _reason) in verdicts.items() if c != "waze"), verdicts


# Choosing a road section's winter state on the map ------------------------------


def distance_to_line(point: tuple[float, float], line: list[tuple[float, float]]) -> float:
    best = math.inf
    for (ax, ay), (bx, by) in itertools.pairwise(line):
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((point[0] - ax) * dx + (point[1] - ay) * dy) / (dx * dx + dy * dy or 1)))
        best = min(best, math.dist(point, (ax + t * dx, ay + t * dy)))
    return best


def clear_section(lines: dict[str, list[list[float]]]) -> tuple[str, list[tuple[float, float]]]:
    """A road and two viewBox points on it, a third and two thirds along its positions, the
    farthest from every other road, so that a click a pixel off still falls nearest to it."""
    every = list(lines.values())
    on_map = {road: [svg_at(every, lon, lat) for lon, lat in line] for road, line in lines.items()}
    best: tuple[float, str, list[tuple[float, float]]] = (-1.0, "", [])
    for road, line in on_map.items():
        points = [line[len(line) // 3], line[2 * len(line) // 3]]
        if math.dist(*points) < 20:
            continue
        clearance = min(
            (distance_to_line(p, other) for p in points for name, other in on_map.items() if name != road),
            default=math.inf,
        )
        if clearance > best[0]:
            best = (clearance, road, points)
    assert best[0] > 5, best
    return best[1], best[2]


def pick_section_and_publish(driver: Any, url: str, clicks: list[tuple[float, float]]) -> dict[str, Any]:
    """Clicks the conditions' map once (then Effacer), then at the two viewBox points
    `clicks`, sets C3 and publishes; returns the points clicked, in viewBox units."""
    open_agents(driver, url)
    until(driver, "document.getElementById('draw-map').dataset.ready === 'true'", "the roads' map")
    click_at = map_clicker(driver, "network")
    click_at(*clicks[0])
    until(driver, "document.getElementById('network').dataset.picked === '1'", "a first end")
    click(driver, "#co-clear")
    until(driver, "document.getElementById('network').dataset.picked === '0'", "the section cleared")
    cleared = driver.execute_script(
        "return ['co-road', 'co-pr-from', 'co-abs-from', 'co-pr-to', 'co-abs-to'].map(i => "
        "document.getElementById(i).value).concat(document.querySelectorAll('#network circle.end').length);"
    )
    clicked = []
    for n, (x, y) in enumerate(clicks, 1):
        clicked.append(click_at(x, y))
        until(driver, f"document.getElementById('network').dataset.picked === '{n}'", f"end {n}")
    until(driver, "document.querySelector('#network polyline.chosen')", "the chosen section")
    form = driver.execute_script(
        "return ['co-road', 'co-pr-from', 'co-abs-from', 'co-pr-to', 'co-abs-to'].map(i => "
        "document.getElementById(i).value);"
    )
    status = driver.find_element("id", "pick-status").text
    fill(driver, {"co-level": "C3"})
    click(driver, "#conditions-form button[type=submit]")
    stroke = until(
        driver,
        "document.querySelector('#network polyline.condition[data-level=C3]')?.getAttribute('stroke')",
        "the section coloured",
    )
    shot(driver, "agents-conditions-map.png")
    return {"cleared": cleared, "clicked": clicked, "form": form, "status": status, "stroke": stroke}


async def test_a_road_section_chosen_on_the_map(browser: Any, site: tuple[str, int, TestClient]) -> None:
    url, _site_id, client = site
    async with client.get("/api/v1/roads/network") as resp:
        lines = {f["properties"]["road"]: f["geometry"]["coordinates"] for f in (await resp.json())["features"]}
    road, points = clear_section(lines)
    done = await in_browser(pick_section_and_publish, browser, url, points)
    assert done["cleared"] == ["", "", "0", "", "0", 0]
    assert done["stroke"] == "#e67e22"  # C3 difficile

    expected = []
    for x, y in done["clicked"]:
        lon, lat = lon_lat_at(list(lines.values()), x, y)
        async with client.get(f"/api/v1/roads/{road}/locate", params={"lon": str(lon), "lat": str(lat)}) as resp:
            assert resp.status == 200, await resp.text()
            expected.append(await resp.json())
    start, end = expected
    assert done["form"][0] == road
    assert done["status"].startswith(f"Tronçon choisi : {road} du PR {start['pr']} + "), done["status"]

    async with client.get("/api/v1/road-conditions") as resp:
        features = [f for f in (await resp.json())["features"] if f["properties"]["level"] == "C3"]
    assert [f["properties"]["road"] for f in features] == [road]
    async with client.get(f"/api/v1/events/{features[0]['id']}") as resp:
        stored = (await resp.json())["versions"][-1]
    refs = {r["at"]: r for r in stored["location_refs"]["pr"]}
    assert stored["road"] == road
    for at, want in (("from", start), ("to", end)):
        assert refs[at]["road"] == road
        assert refs[at]["pr"] == want["pr"], (refs, expected)
        assert abs(refs[at]["abscissa"] - want["abscissa"]) <= 1.0, (refs, expected)
