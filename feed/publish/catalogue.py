"""The catalogue of live feeds: every published document, where it lives, which data it renders, and how.

Each feed is a `FeedSpec`: a path under /feeds/, the kind of data it shows
(events, sites, or the status of the sources and feeds), its content type and
the pure renderer of exporters/ that writes it. `FEEDS` is the list the
publisher renders and the HTTP side serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from exporters import datex2_v2, datex2_v3, geojson, waze, wzdx
from feed.config import PublicationConfig
from feed.model import StoredEvent

__all__ = ["EVENTS_GEOJSON", "FEEDS", "GEOJSON", "JSON", "STATUS_PATH", "XML", "DataKind", "FeedSpec", "Kind"]

Kind = Literal["events", "sites", "status"]
DataKind = Literal["events", "sites"]

XML = "application/xml; charset=utf-8"
JSON = "application/json"
GEOJSON = "application/geo+json"


def _waze_report(events: Sequence[StoredEvent], _publication: PublicationConfig, published_at: datetime) -> bytes:
    return waze.render_report(events, published_at)


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """One published document: where it lives, which data it renders, and how."""

    path: str
    kind: Kind
    content_type: str
    render: (
        Callable[[Sequence[Any], PublicationConfig, datetime], bytes] | None
    )  # None: status.json, built by the publisher


EVENTS_GEOJSON = "/feeds/events.geojson"
STATUS_PATH = "/feeds/status.json"

# After a change, the feeds of its kind are rendered one at a time in this order
# (live data first: the measurement site table, which only changes with the
# sites, comes after the feeds of the latest counts).
FEEDS: tuple[FeedSpec, ...] = (
    FeedSpec("/feeds/datex2/v3/situations.xml", "events", XML, datex2_v3.render_situations),
    FeedSpec("/feeds/datex2/v3/measured-data.xml", "sites", XML, datex2_v3.render_measured_data),
    FeedSpec("/feeds/sites.geojson", "sites", GEOJSON, geojson.render_sites),
    FeedSpec("/feeds/datex2/v3/measurement-sites.xml", "sites", XML, datex2_v3.render_measurement_sites),
    FeedSpec("/feeds/datex2/v2/situations.xml", "events", XML, datex2_v2.render_situations),
    FeedSpec(EVENTS_GEOJSON, "events", GEOJSON, geojson.render_events),
    FeedSpec("/feeds/wzdx/v4.2/work-zones.geojson", "events", GEOJSON, wzdx.render_work_zones),
    FeedSpec("/feeds/waze/cifs.xml", "events", XML, waze.render_cifs_xml),
    FeedSpec("/feeds/waze/cifs.json", "events", JSON, waze.render_cifs_json),
    FeedSpec("/feeds/waze/report.json", "events", JSON, _waze_report),
)
