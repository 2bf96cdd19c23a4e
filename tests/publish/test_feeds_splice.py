"""Incremental rendering of the event feeds gives the very bytes of a whole rendering,
and turns itself off for a renderer whose output does not splice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exporters import wzdx
from feed.config import PublicationConfig
from feed.model import Geometry, StoredEvent
from feed.publish.catalogue import FEEDS
from feed.publish.render import keyed
from feed.publish.splice import SPLICE_RULES, Splicer

PUBLICATION = PublicationConfig()
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def stored(i: int, **changes: Any) -> StoredEvent:
    fields: dict[str, Any] = dict(
        id=f"cd34:e{i}",
        source_id="cd34",
        external_id=f"e{i}",
        version=1,
        type=("roadworks", "accident", "closure")[i % 3],
        status=("active", "planned")[i % 2],
        severity="medium",
        planned_start=T0 + timedelta(hours=i - 20),
        planned_end=T0 + timedelta(hours=i + 1),
        road="RD613",
        direction="both",
        geometry=Geometry(type="LineString", coordinates=[[3.8 + i / 1000, 43.6], [3.81 + i / 1000, 43.61]]),
        descriptions={"fr": f"Travaux {i}", "en": f"Works {i}"},
        location_refs={
            "pr": [
                {"at": "from", "road": "RD613", "pr": i, "departement": "34", "abscissa": 10},
                {"at": "to", "road": "RD613", "pr": i + 1, "departement": "34", "abscissa": 0},
            ]
        },
        first_seen=T0 - timedelta(days=1),
        last_seen=T0,
        updated=T0 - timedelta(hours=1),
    )
    fields.update(changes)
    return StoredEvent(**fields)


EVENTS = [stored(i) for i in range(40)] + [stored(99, geometry=None, road=None, location_refs={})]  # unlocatable
SPLICED = [spec for spec in FEEDS if spec.render in SPLICE_RULES]


def splicer_for(render: Any, **options: Any) -> Splicer:
    rule = SPLICE_RULES.get(render)
    return Splicer("/test", render, rule.time_key if rule else lambda _e, _t: None, **options)


def keys_for(render: Any, events: Sequence[StoredEvent]) -> list[bytes]:
    """The keys the publisher gives this renderer's splicer."""
    _, keys, steady = keyed(events)
    rule = SPLICE_RULES.get(render)
    return keys if rule is None or rule.shows_poll_fields else steady


def warm(splicer: Splicer, events: Sequence[StoredEvent], at: datetime) -> None:
    splicer.check(events, keys_for(splicer.render, events), PUBLICATION, at, splicer.render(events, PUBLICATION, at))


@pytest.mark.parametrize("spec", SPLICED, ids=[s.path for s in SPLICED])
def test_splicing_gives_the_whole_rendering(spec):
    assert spec.render is not None
    splicer = splicer_for(spec.render, max_misses=1.0)  # never give up for a whole rendering here
    warm(splicer, EVENTS, T0)
    assert splicer.trusted and splicer.disabled is None
    events = list(EVENTS)
    events[3] = stored(3, version=2, descriptions={"fr": "Chaussée rétrécie"}, updated=T0)  # changed
    events.insert(7, stored(500))  # new
    del events[20]  # gone
    # Hours later: planned events have started, some have passed their planned end (validity moves).
    for at in (T0 + timedelta(seconds=30), T0 + timedelta(hours=5), T0 + timedelta(hours=30)):
        body = splicer.splice(events, keys_for(spec.render, events), PUBLICATION, at)
        assert body == spec.render(events, PUBLICATION, at), at
    assert splicer.splices >= 4


def test_many_changes_are_rendered_whole():
    splicer = splicer_for(FEEDS[0].render)
    warm(splicer, EVENTS, T0)
    changed = [stored(i, version=2, descriptions={"fr": "Nouveau"}) for i in range(40)]
    assert splicer.splice(changed, keys_for(FEEDS[0].render, changed), PUBLICATION, T0) is None  # cheaper whole
    assert splicer.trusted  # and the next check fills the parts again


def test_a_renderer_that_does_not_splice_is_rendered_whole():
    # WZDx's head lists the data sources of the events it holds: no head, parts and tail.
    splicer = splicer_for(wzdx.render_work_zones)
    warm(splicer, EVENTS, T0)
    assert splicer.disabled and not splicer.trusted
    assert splicer.splice(EVENTS, keys_for(splicer.render, EVENTS), PUBLICATION, T0) is None


def test_a_part_that_depends_on_time_undeclared_is_caught():
    def render(events: Sequence[StoredEvent], _publication: PublicationConfig, at: datetime) -> bytes:
        # each part shows its age: time-dependent, but declared as timeless below
        return (
            b"<list>"
            + b"".join(f"<e id='{e.id}' age='{(at - e.updated).seconds}'/>".encode() for e in events)
            + b"</list>"
        )

    splicer = Splicer("/test", render, lambda _e, _t: None, verify_every=2)
    warm(splicer, EVENTS, T0)
    assert splicer.trusted
    later = T0 + timedelta(minutes=1)
    keys = keys_for(splicer.render, EVENTS)
    # Every second splice is a whole rendering checked against the parts: the difference shows.
    assert splicer.splice(EVENTS, keys, PUBLICATION, later) is None
    warm(splicer, EVENTS, later)
    assert splicer.disabled and not splicer.trusted
    assert splicer.splice(EVENTS, keys, PUBLICATION, later) is None


def test_no_events_and_unlocatable_events():
    splicer = splicer_for(FEEDS[0].render)
    warm(splicer, EVENTS, T0)
    assert splicer.splice([], [], PUBLICATION, T0) is None  # rendered whole
    only = [EVENTS[-1], EVENTS[0]]  # the first cannot be located: left out of the document
    body = splicer.splice(only, keys_for(FEEDS[0].render, only), PUBLICATION, T0)
    assert body == FEEDS[0].render(only, PUBLICATION, T0)


def test_a_poll_that_only_moves_last_seen_keeps_the_parts_of_feeds_that_do_not_show_it():
    polled = [e.model_copy(update={"last_seen": T0 + timedelta(minutes=1)}) for e in EVENTS]
    at = T0 + timedelta(minutes=1)
    for spec in SPLICED:
        splicer = splicer_for(spec.render, max_misses=0.0)  # one part may be rendered, no more
        warm(splicer, EVENTS, T0)
        body = splicer.splice(polled, keys_for(spec.render, polled), PUBLICATION, at)
        if SPLICE_RULES[spec.render].shows_poll_fields:
            assert body is None, spec.path  # every part changed: rendered whole
        else:
            assert body == spec.render(polled, PUBLICATION, at), spec.path
