"""A marking as the admin and the agents' routes accept it: the body's fields, each checked.

Both feed.http.admin (the operators' token) and feed.http.authoring (agents) add
markings with the same body; the rules live here once.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from feed.errors import BadParameter
from feed.http.params import parse_instant
from feed.store.markings import MarkingFields

__all__ = ["MARKING_KINDS", "MAX_COMMENT", "ROAD", "bad_parameter", "marking_fields"]

MARKING_KINDS = ("road_closed", "counter_faulty")
MAX_COMMENT = 2000
ROAD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,63}$")


def bad_parameter(parameter: str, value: Any, expected: str, detail: str) -> BadParameter:
    return BadParameter(parameter, value if isinstance(value, str) else _echo(value), expected, detail)


def _echo(value: Any) -> str:
    try:
        return json.dumps(value)
    except (ValueError, RecursionError):  # a value json cannot write back; the detail says what is wrong
        return repr(type(value))


def _instant(body: dict[str, Any], name: str, tz: ZoneInfo, *, required: bool) -> datetime | None:
    raw = body.get(name)
    if raw is None:
        if required:
            raise bad_parameter(name, "", "a date (2025-07-01) or an ISO 8601 date-time", f"{name} is required")
        return None
    if not isinstance(raw, str):
        raise bad_parameter(name, raw, "a date (2025-07-01) or an ISO 8601 date-time", f"{name} is not a string")
    return parse_instant(name, raw.strip(), tz)


def _pr(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise bad_parameter(name, value, "a PR of the road (an integer)", f"{name} is not a PR")
    return value


def marking_fields(body: dict[str, Any], tz: ZoneInfo) -> MarkingFields:
    """A marking's fields from a request body, each checked, or BadParameter."""
    allowed = {"kind", "road", "site_id", "from", "to", "comment", "pr_from", "pr_to"}
    for key in body:
        if key not in allowed:
            raise bad_parameter(
                key, body[key], f"only the fields {', '.join(sorted(allowed))}", f"unknown field {key!r}"
            )
    kind = body.get("kind")
    if kind not in MARKING_KINDS:
        raise bad_parameter("kind", kind, f"one of: {', '.join(MARKING_KINDS)}", f"unknown kind {kind!r}")
    road = site_id = None
    if kind == "road_closed":
        road = body.get("road")
        if not isinstance(road, str) or not ROAD.match(road.strip()):
            raise bad_parameter(
                "road",
                road,
                "a road reference such as RD613 (letters, digits, space . _ / -; at most 64)",
                "road is missing or not a road reference",
            )
        road = road.strip()
        if "site_id" in body:
            raise bad_parameter("site_id", body["site_id"], "no site_id with road_closed", "give road, not site_id")
    else:
        site_id = body.get("site_id")
        if isinstance(site_id, bool) or not isinstance(site_id, int) or not 0 < site_id < 2**31:
            raise bad_parameter(
                "site_id",
                site_id,
                "the id of a site (an integer, see /api/v1/sites)",
                "site_id is missing or not a site id",
            )
    pr_from, pr_to = _pr(body, "pr_from"), _pr(body, "pr_to")
    if (pr_from is None) != (pr_to is None) or (pr_from is not None and kind != "road_closed"):
        raise bad_parameter(
            "pr_from",
            body.get("pr_from"),
            "pr_from and pr_to together, with road_closed",
            "give both pr_from and pr_to (or neither: the whole road)",
        )
    start = _instant(body, "from", tz, required=True)
    end = _instant(body, "to", tz, required=False)
    assert start is not None
    if end is not None and end <= start:
        raise bad_parameter("to", body["to"], "a time after from", "to must be after from; to is exclusive")
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise bad_parameter("comment", comment, f"a text of at most {MAX_COMMENT} characters", "comment is not valid")
    return MarkingFields(kind, road, site_id, pr_from, pr_to, start, end, comment)
