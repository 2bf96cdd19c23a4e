"""Domain records refuse what no feed could carry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from feed.model import ChannelRecord, EventRecord, Geometry, MeasurementRecord


@pytest.mark.parametrize("bad", ["A\x00", "\x1f", "line\nbreak"])
def test_ids_with_control_characters_are_refused(bad):
    with pytest.raises(ValidationError, match="control characters"):
        EventRecord(external_id=bad, type="roadworks")
    with pytest.raises(ValidationError, match="control characters"):
        ChannelRecord(site_external_id="S", external_id=bad, time_step=3600)


def test_times_need_a_zone_and_values_their_range():
    with pytest.raises(ValidationError, match="timezone"):
        MeasurementRecord(channel_external_id="C", start=datetime(2026, 1, 1), length=3600, count=1)
    with pytest.raises(ValidationError):
        MeasurementRecord(channel_external_id="C", start=datetime(2026, 1, 1, tzinfo=UTC), length=3600, speed=301)
    with pytest.raises(ValidationError):
        MeasurementRecord(channel_external_id="C", start=datetime(2026, 1, 1, tzinfo=UTC), length=3600, count=-1)
    with pytest.raises(ValidationError, match="divide a day"):
        ChannelRecord(site_external_id="S", external_id="C", time_step=7)


def test_geometries_are_lon_lat_points_or_lines():
    assert Geometry(type="LineString", coordinates=[[3.7, 43.5], [3.8, 43.6]]).points == [(3.7, 43.5), (3.8, 43.6)]
    with pytest.raises(ValidationError, match="two positions"):
        Geometry(type="LineString", coordinates=[[3.7, 43.5]])
    with pytest.raises(ValidationError, match="lon/lat"):
        Geometry(type="Point", coordinates=[43.5, 193.7])
