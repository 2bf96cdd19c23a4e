"""MQTT push: events and sites published to a broker, for subscribers that want changes now.

Topic tree (`[mqtt] prefix`, by default `roadfeed/v1`):

- `{prefix}/events/{type}/{road}/{event id}`: one message per change of an event,
  the very document of the delta feed (`/feeds/events/changes`: cursor, change,
  recorded, and the GeoJSON feature with the feeds' id and version). Retained, so
  a new subscriber to `{prefix}/events/#` gets every current event at once. When
  an event changes type or road, the retained message of its former topic is
  cleared (an empty retained message).
- `{prefix}/sites/{site id}`: a site's current state, the feature of
  `/feeds/sites.geojson` (channels with their latest values), retained, published
  when its values change.

Levels that MQTT reserves (`/`, `+`, `#`) are percent-encoded in ids and roads; a
missing road is `_`.

Any number of nodes may run the pusher: one at a time publishes (it holds a
PostgreSQL advisory lock on the primary), and what the broker acknowledged (QoS
1) is recorded in `push_cursors` / `push_sites`, so a node taking over goes on
from the next change. Exactly once per node set, except when a node dies between
the broker's acknowledgement and recording it: then that batch is published
again, with the same ids and versions, which subscribers can recognise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import asyncpg
import paho.mqtt.client as paho

from exporters.geojson import site_feature
from feed.config import MqttConfig
from feed.deadlines import cancel_and_wait
from feed.errors import PublishError
from feed.model import StoredEvent, StoredSite
from feed.store import push
from feed.store.changes import Change, ChangeLog
from feed.store.listener import ChangeListener
from feed.store.storage import Storage

log = logging.getLogger("roadfeed.mqtt")

BATCH = 500  # changes per round trip to the broker
LISTENER_APPLICATION_NAME = "roadfeed mqtt push"


class PushError(PublishError):
    """The broker could not be reached or did not acknowledge in time."""


# --------------------------------------------------------------------------- pure: topics and payloads


def _level(text: str | None) -> str:
    return "_" if not text else quote(text, safe=" :@.,;=-_~()'!*$&")


def event_topic(prefix: str, event_type: str, road: str | None, event_id: str) -> str:
    return f"{prefix}/events/{_level(event_type)}/{_level(road)}/{_level(event_id)}"


def site_topic(prefix: str, site_id: int) -> str:
    return f"{prefix}/sites/{site_id}"


def event_messages(prefix: str, change: Change, previous_road: str | None) -> list[tuple[str, bytes]]:
    """(topic, payload) to publish for one change: the change, and the clearing of a former topic."""
    event: StoredEvent = change.event
    topic = event_topic(prefix, event.type, event.road, event.id)
    out = [(topic, change.data)]
    if change.previous_type is not None:
        former = event_topic(prefix, change.previous_type, previous_road, event.id)
        if former != topic:
            out.append((former, b""))
    return out


def site_message(prefix: str, site: StoredSite, now: datetime) -> tuple[str, bytes, bytes]:
    """(topic, payload, fingerprint): the fingerprint leaves out what only time changes."""
    feature = site_feature(site, now)
    stable = {**feature, "properties": {k: v for k, v in feature["properties"].items() if k != "freshness_seconds"}}
    fingerprint = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).digest()
    payload = json.dumps(feature, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return site_topic(prefix, site.id), payload, fingerprint


# --------------------------------------------------------------------------- the broker


class Broker:
    """A paho client on its own network thread; `publish` waits for the broker's acknowledgements."""

    def __init__(self, config: MqttConfig) -> None:
        url = urlsplit(config.url)
        if url.scheme != "mqtt" or not url.hostname:
            raise ValueError(f"[mqtt] url {config.url!r}: expected mqtt://host[:port]")
        self.host, self.port = url.hostname, url.port or 1883
        self.qos = config.qos
        self.timeout = config.ack_timeout
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=config.client_id or f"roadfeed-{uuid.uuid4().hex[:12]}"
        )
        self.client.max_inflight_messages_set(BATCH)
        if url.username:
            self.client.username_pw_set(url.username, url.password)

    async def connect(self) -> None:
        await asyncio.to_thread(self.client.connect, self.host, self.port, 30)
        self.client.loop_start()

    async def disconnect(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=self.qos, retain=True) for topic, payload in messages]

        def wait() -> None:
            for info in infos:
                info.wait_for_publish(self.timeout)
                if not info.is_published():
                    raise PushError(
                        f"the broker {self.host}:{self.port} did not acknowledge {info.mid} "
                        f"within {self.timeout:g} s (rc {info.rc})"
                    )

        await asyncio.to_thread(wait)


# --------------------------------------------------------------------------- the pusher


class MqttPusher:
    """Publishes every event change and every site change, from one node of many at a time."""

    def __init__(
        self, storage: Storage, config: MqttConfig, *, interval: float = 5.0, retry_interval: float = 2.0
    ) -> None:
        self.storage = storage
        self.config = config
        self.prefix = config.prefix.rstrip("/")
        self.interval = interval  # a look even without NOTIFY
        self.retry_interval = retry_interval
        self.leader = False
        self.published = 0  # messages acknowledged by the broker
        self._changes = ChangeLog(storage.pool)
        self._wake = {"events": asyncio.Event(), "sites": asyncio.Event()}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt-push")

    async def stop(self, grace: float = 10.0) -> None:
        """Lets the batch under way be acknowledged and recorded (so that the next node
        does not publish it again), then stops; cancels after `grace` seconds."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), grace)
        await cancel_and_wait([task], "mqtt pusher")

    def _on_change(self, payload: str) -> None:
        if payload in ("events", ""):
            self._wake["events"].set()
        if payload in ("measurements", "sites", ""):
            self._wake["sites"].set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker or the database away: try again, nothing acknowledged is lost
                log.warning(
                    "MQTT push stopped (%s: %s); retrying in %.1f s", type(exc).__name__, exc, self.retry_interval
                )
            self.leader = False
            if not self._stopping.is_set():
                await asyncio.sleep(self.retry_interval)

    async def _lead(self) -> None:
        async with self.storage.pool.acquire(timeout=30) as conn:
            while not await push.try_push_lock(conn):
                if self._stopping.is_set():
                    return
                await asyncio.sleep(self.retry_interval)  # another node publishes
            try:
                broker = Broker(self.config)
                await broker.connect()
                listener = ChangeListener(
                    self.storage,
                    self._on_change,
                    application_name=LISTENER_APPLICATION_NAME,
                    interval=self.interval,
                    name="MQTT push",
                    log=log,
                )
                listening = asyncio.create_task(listener.run(), name="mqtt-listener")
                self.leader = True
                log.info("publishing to MQTT %s:%s under %s/", broker.host, broker.port, self.prefix)
                try:
                    for wake in self._wake.values():
                        wake.set()
                    while not self._stopping.is_set():
                        if self._wake["events"].is_set():
                            self._wake["events"].clear()
                            while await self._push_events(conn, broker) and not self._stopping.is_set():
                                pass
                        if self._wake["sites"].is_set():
                            self._wake["sites"].clear()
                            await self._push_sites(conn, broker)
                        await self._wait()
                finally:
                    await cancel_and_wait([listening], "mqtt listener")
                    await broker.disconnect()
            finally:
                if not conn.is_closed():
                    await push.release_push_lock(conn)

    async def _wait(self) -> None:
        waits = [asyncio.ensure_future(w.wait()) for w in (*self._wake.values(), self._stopping)]
        try:
            done, _ = await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                for wake in self._wake.values():
                    wake.set()
        finally:
            for w in waits:
                w.cancel()

    async def _push_events(self, conn: asyncpg.Connection, broker: Broker) -> bool:
        """One batch of changes after the cursor; True when more are waiting."""
        cursor = await push.events_cursor(conn)
        changes, more = await self._changes.read(cursor, BATCH)
        if not changes:
            return False
        roads = await push.previous_roads(conn, [c.seq for c in changes])
        messages = [m for c in changes for m in event_messages(self.prefix, c, roads.get(c.seq))]
        await broker.publish(messages)
        await push.record_events_cursor(conn, changes[-1].seq)
        self.published += len(messages)
        return more

    async def _push_sites(self, conn: asyncpg.Connection, broker: Broker) -> None:
        sites = await self.storage.sites()
        known = await push.site_fingerprints(conn)
        now = datetime.now(UTC)
        changed = [
            (site.id, *m) for site in sites if known.get(site.id) != (m := site_message(self.prefix, site, now))[2]
        ]
        for start in range(0, len(changed), BATCH):
            batch = changed[start : start + BATCH]
            await broker.publish([(topic, payload) for _, topic, payload, _ in batch])
            await push.record_site_fingerprints(
                conn, [site_id for site_id, _, _, _ in batch], [f for _, _, _, f in batch]
            )
            self.published += len(batch)
