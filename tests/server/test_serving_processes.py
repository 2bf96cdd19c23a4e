"""`roadfeed serve` with several processes: every process serves the same versions
(a client polling different processes gets 304s), changes reach all of them, a
follower that dies is restarted, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feed.model import EventRecord, Geometry
from feed.publish.catalogue import FEEDS
from feed.store.cluster import free_port
from feed.store.storage import Storage

WAIT = 30.0
SITUATIONS = "/feeds/datex2/v3/situations.xml"


def event(ext: str, kind: str = "roadworks") -> EventRecord:
    now = datetime.now(UTC)
    return EventRecord(
        external_id=ext,
        type=kind,
        status="active",
        severity="medium",
        planned_start=now - timedelta(days=1),
        planned_end=now + timedelta(days=2),
        road="RD613",
        geometry=Geometry(type="LineString", coordinates=[[3.8, 43.6], [3.81, 43.61]]),
        descriptions={"fr": f"Travaux {ext}"},
    )


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = await check()
        except OSError:
            result = None
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await asyncio.sleep(0.1)


class Connection:
    """One keep-alive client connection, raw, so the test knows which connection is which."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Accept-Encoding: identity",
            *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, *fields = head[:-4].decode("latin-1").split("\r\n")
        parsed = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        status = int(status_line.split()[1])
        body = b"" if status == 304 else await self.reader.readexactly(int(parsed.get("content-length", 0)))
        return status, parsed, body

    def close(self) -> None:
        self.writer.close()


async def fresh_get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = await Connection.open(port)
    try:
        return await conn.get(path, **headers)
    finally:
        conn.close()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def established_on(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections to `port` each process holds (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01" and inode in inodes:
                counts[inodes[inode]] += 1
    return counts


async def start_serve(db_url: str, tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    """`roadfeed serve` with two processes on `port`, its output captured."""
    config = tmp_path / "roadfeed.toml"
    config.write_text(f"[server]\nport = {port}\nworkers = 2\n")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "feed.cli",
        "serve",
        "--config",
        str(config),
        env={**os.environ, "ROADFEED_DATABASE_URL": db_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_processes_serve_the_same_versions(storage: Storage, db_url: str, tmp_path: Path):
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events(
        "cd34", [event(f"e{i}", ("roadworks", "accident")[i % 2]) for i in range(6)], seen_at=datetime.now(UTC)
    )
    port = free_port()
    proc = await start_serve(db_url, tmp_path, port)
    connections: list[Connection] = []
    followers: list[int] = []
    try:

        async def serving() -> dict[str, Any] | None:
            status, _, body = await fresh_get(port, "/feeds/status.json")
            doc = json.loads(body) if status == 200 else {}
            return doc if doc.get("processes", {}).get("serving") == 2 else None

        await eventually(serving)
        (follower,) = children(proc.pid)
        followers.append(follower)

        # Many clients at once: the kernel spreads them over both processes.
        connections = [await Connection.open(port) for _ in range(24)]
        answers = [await c.get(SITUATIONS) for c in connections]
        counts = established_on(port, [proc.pid, follower])
        assert all(counts.values()), counts  # both processes hold some of them
        assert {status for status, _, _ in answers} == {200}
        etags = {headers["etag"] for _, headers, _ in answers}
        assert len(etags) == 1 and len({body for _, _, body in answers}) == 1
        etag = etags.pop()
        last_modified = {headers["last-modified"] for _, headers, _ in answers}
        assert len(last_modified) == 1
        # Any process: 304 for the version another one served.
        for c in connections:
            status, headers, _ = await c.get(SITUATIONS, If_None_Match=etag)
            assert status == 304 and headers["etag"] == etag
        # Filtered queries are the same everywhere too (rendered by the leader).
        filtered = [await c.get("/feeds/events.geojson?type=accident") for c in connections]
        assert len({(h["etag"], b) for _, h, b in filtered}) == 1
        assert {f["id"] for f in json.loads(filtered[0][2])["features"]} == {"cd34:e1", "cd34:e3", "cd34:e5"}

        # A change reaches every process.
        await storage.upsert_events("cd34", [event("new")], seen_at=datetime.now(UTC))

        async def everywhere() -> bool:
            seen = [await c.get(SITUATIONS, If_None_Match=etag) for c in connections]
            return all(status == 200 and b"cd34:new" in body for status, _, body in seen)

        await eventually(everywhere)
        new_etags = {(await c.get(SITUATIONS))[1]["etag"] for c in connections}
        assert len(new_etags) == 1 and etag not in new_etags

        # A follower that dies is started again.
        for c in connections:
            c.close()
        connections = []
        os.kill(follower, signal.SIGKILL)

        async def restarted() -> bool:
            doc = await serving()
            return bool(doc) and doc["processes"]["restarts"] >= 1

        await eventually(restarted)
        (replacement,) = children(proc.pid)
        followers.append(replacement)
        assert replacement != follower
        status, headers, _ = await fresh_get(port, SITUATIONS)
        assert status == 200 and headers["etag"] in new_etags
    finally:
        for c in connections:
            c.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert not [pid for pid in followers if Path(f"/proc/{pid}").exists()]  # stopped with the leader


async def test_a_follower_listens_only_once_every_feed_is_rendered(storage: Storage, db_url: str, tmp_path: Path):
    # Enough events that the first rendering takes a while: a follower that listened
    # before its feeds arrived answered 503 not_ready while /readyz and status.json
    # (answered by the leader) said ready.
    await storage.ensure_source("cd34", "datex2", "http://127.0.0.1:9/cd34")
    await storage.upsert_events("cd34", [event(f"e{i}") for i in range(1500)], seen_at=datetime.now(UTC))
    port = free_port()
    proc = await start_serve(db_url, tmp_path, port)
    try:

        async def serving() -> bool:
            status, _, body = await fresh_get(port, "/feeds/status.json")
            return status == 200 and json.loads(body).get("processes", {}).get("serving") == 2

        await eventually(serving, timeout=120)
        (follower,) = children(proc.pid)
        for spec in FEEDS:
            connections = [await Connection.open(port) for _ in range(12)]
            try:
                answers = [await c.get(spec.path) for c in connections]
                counts = established_on(port, [proc.pid, follower])
            finally:
                for c in connections:
                    c.close()
            assert all(counts.values()), counts  # both processes answered some of them
            # Every process gives the same answer (the feed, or for a feed with nothing to
            # publish, no sites here, the same 503 it would give alone), never not_ready.
            statuses = [status for status, _, _ in answers]
            assert len(set(statuses)) == 1, (spec.path, statuses)
            assert not [body for _, _, body in answers if b"not_ready" in body], spec.path
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, out.decode()[-3000:]
