"""Event versioning: changes make versions, repeats only touch last_seen, endings are explicit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from feed.model import EventRecord, Geometry
from feed.store.storage import Storage

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def works(ext: str, **changes) -> EventRecord:
    base = dict(
        external_id=ext,
        type="roadworks",
        subtype="MaintenanceWorks",
        status="active",
        severity="medium",
        planned_start=NOW - timedelta(days=1),
        planned_end=NOW + timedelta(days=3),
        road="RD613",
        direction="both",
        geometry=Geometry(type="LineString", coordinates=[[3.69, 43.51], [3.70, 43.52]]),
        descriptions={"fr": "Travaux de chaussée", "en": "Road works"},
    )
    return EventRecord(**{**base, **changes})


@pytest.fixture
async def inforoute(storage: Storage) -> Storage:
    await storage.ensure_source("inforoute", "datex2", "http://127.0.0.1/inforoute")
    return storage


async def test_new_changed_and_unchanged_events(inforoute: Storage):
    s = inforoute
    c = await s.upsert_events("inforoute", [works("A"), works("B")], seen_at=NOW)
    assert (c.new, c.updated, c.unchanged) == (2, 0, 0)
    later = NOW + timedelta(minutes=5)
    c = await s.upsert_events("inforoute", [works("A"), works("B", severity="high")], seen_at=later)
    assert (c.new, c.updated, c.unchanged) == (0, 1, 1)
    events = {e.external_id: e for e in await s.events()}
    assert events["A"].version == 1 and events["A"].last_seen == later and events["A"].updated == NOW
    assert events["B"].version == 2 and events["B"].severity == "high" and events["B"].updated == later
    assert events["B"].id == "inforoute:B"
    assert events["B"].geometry.coordinates == [[3.69, 43.51], [3.70, 43.52]]
    history = await s.event_versions("inforoute:B")
    assert [(v.version, v.severity) for v in history] == [(1, "medium"), (2, "high")]
    changes = await s.pool.fetch("SELECT event_id, version, change FROM event_versions ORDER BY seq")
    assert [tuple(r) for r in changes] == [
        ("inforoute:A", 1, "created"),
        ("inforoute:B", 1, "created"),
        ("inforoute:B", 2, "updated"),
    ]


async def test_complete_snapshot_ends_missing_events_and_a_return_reopens(inforoute: Storage):
    s = inforoute
    await s.upsert_events("inforoute", [works("A"), works("B")], seen_at=NOW, complete_snapshot=True)
    gone_at = NOW + timedelta(minutes=2)
    c = await s.upsert_events("inforoute", [works("A")], seen_at=gone_at, complete_snapshot=True)
    assert (c.updated, c.unchanged) == (1, 1)
    b = next(e for e in await s.events() if e.external_id == "B")
    assert (b.status, b.actual_end, b.version) == ("ended", gone_at, 2)
    # Still stored: never deleted, and its history holds the active state.
    assert [v.status for v in await s.event_versions("inforoute:B")] == ["active", "ended"]
    back = NOW + timedelta(minutes=4)
    await s.upsert_events("inforoute", [works("A"), works("B")], seen_at=back, complete_snapshot=True)
    b = next(e for e in await s.events() if e.external_id == "B")
    assert (b.status, b.version, b.actual_end) == ("active", 3, None)
    assert (
        await s.pool.fetchval("SELECT change FROM event_versions WHERE event_id = 'inforoute:B' AND version = 3")
        == "reopened"
    )


async def test_partial_snapshot_ends_nothing(inforoute: Storage):
    s = inforoute
    await s.upsert_events("inforoute", [works("A"), works("B")], seen_at=NOW, complete_snapshot=True)
    await s.upsert_events("inforoute", [works("A")], seen_at=NOW + timedelta(minutes=1), complete_snapshot=False)
    assert {e.external_id: e.status for e in await s.events()} == {"A": "active", "B": "active"}


async def test_live_listing_keeps_recently_ended_events_only(inforoute: Storage):
    s = inforoute
    await s.upsert_events("inforoute", [works("A"), works("B")], seen_at=NOW - timedelta(days=2))
    await s.upsert_events("inforoute", [works("A", status="ended")], seen_at=NOW - timedelta(days=2))
    await s.upsert_events("inforoute", [works("B", status="ended")], seen_at=NOW - timedelta(hours=1))
    live = await s.events(ended_since=NOW - timedelta(hours=24))
    assert [e.external_id for e in live] == ["B"]


async def test_every_past_state_can_be_rebuilt(inforoute: Storage):
    s = inforoute
    states = [
        works("A", severity=sev, descriptions={"fr": f"état {i}"})
        for i, sev in enumerate(["low", "medium", "high", "highest"])
    ]
    for i, st in enumerate(states):
        await s.upsert_events("inforoute", [st], seen_at=NOW + timedelta(minutes=i))
    rebuilt = await s.event_versions("inforoute:A")
    assert [EventRecord.model_validate(v.model_dump(include=set(EventRecord.model_fields))) for v in rebuilt] == states


async def test_read_only_role_cannot_write(server, db_url):
    reader_url = db_url.replace("postgres@", "roadfeed_reader@")
    conn = await asyncpg.connect(reader_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0
        for sql in (
            "INSERT INTO sources (id, kind, url) VALUES ('x', 'datex2', 'u')",
            "DELETE FROM measurements",
            "UPDATE events SET version = 2",
            "CREATE TABLE sneaky (x int)",
        ):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError)):
                await conn.execute(sql)
        # Even asking for a writable transaction does not help: privileges are missing.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction(readonly=False):
                await conn.execute("SET TRANSACTION READ WRITE")
                await conn.execute("INSERT INTO sources (id, kind, url) VALUES ('x', 'datex2', 'u')")
    finally:
        await conn.close()


async def test_writer_role_can_ingest(db_url):
    conn = await asyncpg.connect(db_url.replace("postgres@", "roadfeed_writer@"))
    try:
        await conn.execute("INSERT INTO sources (id, kind, url) VALUES ('w', 'datex2', 'http://127.0.0.1/w')")
        run = await conn.fetchval("INSERT INTO source_runs (source_id) VALUES ('w') RETURNING id")
        assert run > 0
    finally:
        await conn.close()
