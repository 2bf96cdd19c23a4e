"""The simulator's national scenario: an NDW-sized network measured every minute.

`NationalNetwork` is a deterministic network of `sites` measurement sites of 2 to 4
lanes each (one channel per lane, flow and speed), spread over the Netherlands'
extent. Each minute it publishes a DATEX II v3 MeasuredDataPublication with every
lane's last interval, in the shape our own `exporters.datex2_v3` writes (which
follows the RTTI profile NDW's feeds use), and its MeasurementSiteTablePublication.
Like a real network it has gaps (a site that did not report this minute: left
out) and faults (a lane whose detector failed: a `physicalQuantityFault` instead
of values), both drawn from the seed, so a minute's document is the same every
time it is asked for.

`build_national_app` serves them (`roadfeed simulate --sites 20000 --step 60`):
`/national/datex2/v3/measured-data.xml` (the latest minute, with ETag and
Last-Modified) and `/national/datex2/v3/measurement-sites.xml`.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from exporters.datex2_v3 import render_measured_data, render_measurement_sites
from feed.config import PublicationConfig
from feed.model import StoredChannel, StoredSite

SOURCE_ID = "national"
MEASURED_PATH = "/national/datex2/v3/measured-data.xml"
SITES_PATH = "/national/datex2/v3/measurement-sites.xml"
BBOX = (3.36, 50.75, 7.21, 53.55)  # the Netherlands: lon_min, lat_min, lon_max, lat_max
GAP_RATE = 0.005  # sites that do not report in a given minute
FAULT_RATE = 0.002  # lanes whose value is faulty in a given minute
PUBLICATION = PublicationConfig(
    publisher="roadfeed national simulation", country="nl", national_identifier="NL-SIM", bbox=BBOX, bbox_margin_deg=0.1
)


def _unit(seed: int, *parts: Any) -> float:
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class NationalNetwork:
    sites: int = 20_000
    step: int = 60  # seconds between two publications, and each interval's length
    seed: int = 15

    def __post_init__(self) -> None:
        if self.sites < 1 or self.step < 1 or 86400 % self.step:
            raise ValueError(f"--sites {self.sites} --step {self.step}: need sites >= 1 and a step dividing a day")

    def lanes(self, site: int) -> int:
        return 2 + int(_unit(self.seed, "lanes", site) * 3)

    def site_list(self) -> list[StoredSite]:
        """The site table: ids, positions and one channel per lane (no values)."""
        lon0, lat0, lon1, lat1 = BBOX
        out = []
        channel_id = 0
        for s in range(self.sites):
            channels = []
            for lane in range(1, self.lanes(s) + 1):
                channel_id += 1
                channels.append(
                    StoredChannel(
                        id=channel_id,
                        site_external_id=f"RWS{s:05d}",
                        external_id=f"RWS{s:05d}-{lane}",
                        direction="north" if s % 2 else "south",
                        lane=lane,
                        time_step=self.step,
                    )
                )
            out.append(
                StoredSite(
                    id=s + 1,
                    source_id=SOURCE_ID,
                    external_id=f"RWS{s:05d}",
                    name=f"A{1 + s % 80} hmp {s % 997}",
                    road=f"A{1 + s % 80}",
                    lon=round(lon0 + (lon1 - lon0) * _unit(self.seed, "lon", s), 6),
                    lat=round(lat0 + (lat1 - lat0) * _unit(self.seed, "lat", s), 6),
                    channels=channels,
                )
            )
        return out

    def interval_end(self, now: datetime) -> datetime:
        """The end of the last interval published at `now`."""
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % self.step, UTC)

    def measured(self, sites: list[StoredSite], end: datetime) -> list[StoredSite]:
        """The sites that report the interval ending at `end`, each lane with its value or fault."""
        start = end - timedelta(seconds=self.step)
        minute = int(end.timestamp()) // self.step
        hour = end.hour + end.minute / 60
        rush = 1.0 + 0.8 * max(0.0, 1 - abs(hour - 8) / 2) + 0.8 * max(0.0, 1 - abs(hour - 17.5) / 2)
        out = []
        for site in sites:
            if _unit(self.seed, "gap", site.id, minute) < GAP_RATE:
                continue
            channels = []
            for c in site.channels:
                u = _unit(self.seed, "flow", c.id, minute)
                faulty = _unit(self.seed, "fault", c.id, minute) < FAULT_RATE
                count = int((2 + 28 * u) * rush * self.step / 60)
                speed = round(max(20.0, 118 - 25 * (rush - 1) - 20 * _unit(self.seed, "speed", c.id, minute)), 1)
                channels.append(
                    c.model_copy(
                        update={
                            "latest_start": start,
                            "latest_length": self.step,
                            "latest_count": None if faulty else count,
                            "latest_speed": speed,
                            "latest_quality": "invalid" if faulty else "observed",
                        }
                    )
                )
            out.append(site.model_copy(update={"channels": channels}))
        return out


@dataclass
class _Rendered:
    end: datetime
    body: bytes
    etag: str


class _NationalState:
    def __init__(self, network: NationalNetwork, clock: Any) -> None:
        self.network = network
        self.clock = clock  # anything with now() -> aware datetime (feed.simulator.clock.SimClock)
        self.sites = network.site_list()
        self.table = render_measurement_sites(self.sites, PUBLICATION, datetime(2026, 1, 1, tzinfo=UTC))
        self.latest: _Rendered | None = None

        self._lock = asyncio.Lock()

    async def measured_document(self) -> _Rendered:
        """The latest minute's document, rendered once (in a thread: 20,000 sites take seconds)."""
        end = self.network.interval_end(self.clock.now())
        async with self._lock:
            if self.latest is None or self.latest.end != end:
                body = await asyncio.to_thread(
                    lambda: render_measured_data(self.network.measured(self.sites, end), PUBLICATION, end)
                )
                self.latest = _Rendered(end, body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
            return self.latest


NATIONAL_KEY = web.AppKey("national", _NationalState)


async def _measured(request: web.Request) -> web.Response:
    doc = await request.app[NATIONAL_KEY].measured_document()
    headers = {
        "ETag": doc.etag,
        "Last-Modified": doc.end.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Cache-Control": "no-cache",
    }
    if request.headers.get("If-None-Match") == doc.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=doc.body, content_type="application/xml", headers=headers)


async def _sites(request: web.Request) -> web.Response:
    return web.Response(body=request.app[NATIONAL_KEY].table, content_type="application/xml")


def add_national_routes(app: web.Application, network: NationalNetwork, clock: Any) -> None:
    app[NATIONAL_KEY] = _NationalState(network, clock)
    app.router.add_get(MEASURED_PATH, _measured)
    app.router.add_get(SITES_PATH, _sites)


def national_sources(base_url: str, network: NationalNetwork) -> list[dict[str, Any]]:
    """`[[sources]]` entries that poll the national scenario every step."""
    return [
        {
            "id": SOURCE_ID,
            "kind": "datex2",
            "url": base_url.rstrip("/") + MEASURED_PATH,
            "interval": network.step,
            "options": {"snapshot": False},
        }
    ]
