"""Load benchmark: many GPS apps polling the live feeds while ingest runs.

A simulated département (`roadfeed simulate`, its own process) feeds `roadfeed
run` (its own process: collectors, feeds and HTTP, `--workers` processes) through
the real collectors, polling every `--interval` seconds; its backlog of
`--history-days` of counts arrives page by page during the load, with the event
dataset re-read each poll. Meanwhile `--clients` concurrent clients (aiohttp,
keep-alive connections, on 127.0.0.1) poll several feeds with conditional GET
(If-None-Match with the last ETag they saw) for `--duration` seconds, each waiting
`--think` seconds between requests.

Reports: requests, 200s and 304s, errors (anything else, connection errors and
timeouts included), p50/p99/max latency, the server's resident memory (all its
processes) sampled each second (start, end, max), and the ingest that ran during
the load (polls and measurements stored). Ends with one JSON line with the targets.

Usage: python bench/load.py [--clients 500] [--duration 60] [--think 0] [--workers 1]
                            [--speed 1] [--history-days 7] [--interval 2] [--database-url URL]
Without --database-url a private cluster (host engine) is created and migrated.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feed.simulator.sources import simulator_sources  # noqa: E402
from feed.store.cluster import Cluster, free_port, host_engine  # noqa: E402
from feed.store.migrations import migrate  # noqa: E402

FEEDS = (
    "/feeds/datex2/v3/situations.xml",
    "/feeds/events.geojson",
    "/feeds/sites.geojson",
    "/feeds/datex2/v3/measured-data.xml",
    "/feeds/waze/cifs.json",
    "/feeds/wzdx/v4.2/work-zones.geojson",
)


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def config_text(sim_url: str, port: int, workers: int, interval: int) -> str:
    lines = ["[server]", f"port = {port}", f"workers = {workers}", "feed_max_age = 30", ""]
    for source in simulator_sources(sim_url, interval=interval):
        lines += ["[[sources]]"] + [f"{k} = {_toml_value(v)}" for k, v in source.items() if k != "options"]
        lines += ["[sources.options]"] + [f"{k} = {_toml_value(v)}" for k, v in source["options"].items()]
        lines.append("")
    return "\n".join(lines)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(children.get(p, []))
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.status: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, status: str, seconds: float) -> None:
        self.status[status] = self.status.get(status, 0) + 1
        self.latencies.append(seconds)


async def client(
    session: aiohttp.ClientSession, base: str, stop: float, think: float, stats: Stats, rng: random.Random
) -> None:
    etags: dict[str, str] = {}
    while time.monotonic() < stop:
        path = rng.choice(FEEDS)
        headers = {"Accept-Encoding": "gzip"}
        if path in etags:
            headers["If-None-Match"] = etags[path]
        started = time.monotonic()
        try:
            async with session.get(base + path, headers=headers) as r:
                await r.read()
                elapsed = time.monotonic() - started
                if r.status in (200, 304):
                    if "ETag" in r.headers:
                        etags[path] = r.headers["ETag"]
                    stats.add(str(r.status), elapsed)
                else:
                    stats.add("error", elapsed)
                    stats.errors.append(f"{path}: HTTP {r.status}")
        except (aiohttp.ClientError, TimeoutError) as err:
            stats.add("error", time.monotonic() - started)
            stats.errors.append(f"{path}: {type(err).__name__}: {err}")
        if think:
            await asyncio.sleep(think * rng.uniform(0.5, 1.5))


async def sample_rss(pid: int, stop: float, samples: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    while time.monotonic() < stop:
        samples.append((time.monotonic() - t0, rss_bytes(pid)))
        await asyncio.sleep(1.0)
    samples.append((time.monotonic() - t0, rss_bytes(pid)))


def ingest_counts(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        runs = conn.execute("SELECT count(*) FROM source_runs WHERE finished IS NOT NULL AND error IS NULL").fetchone()[
            0
        ]
        rows = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    return runs, rows


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: process exited ({proc.returncode})\n" + (log.read_text()[-3000:] if log else ""))
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}" + ("\n" + log.read_text()[-3000:] if log else ""))


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def drive(args: argparse.Namespace, port: int, server_pid: int) -> tuple[Stats, list[tuple[float, int]]]:
    stats = Stats()
    samples: list[tuple[float, int]] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        # one connection per client: each client its own session would be closer, but this is
        # what a keep-alive pool of N connections does, with N clients in flight.
        stop = time.monotonic() + args.duration
        rng = random.Random(34)
        tasks = [
            asyncio.create_task(
                client(session, f"http://127.0.0.1:{port}", stop, args.think, stats, random.Random(rng.random()))
            )
            for _ in range(args.clients)
        ]
        tasks.append(asyncio.create_task(sample_rss(server_pid, stop, samples)))
        await asyncio.gather(*tasks)
    return stats, samples


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=0.0, help="seconds between a client's requests")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    parser.add_argument("--workers", type=int, default=1, help="roadfeed HTTP processes")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second (above 1 the collectors quarantine records from their future)",
    )
    parser.add_argument("--interval", type=int, default=2, help="seconds between polls of each source")
    parser.add_argument("--history-days", type=float, default=7.0, help="the backlog ingested during the load")
    parser.add_argument("--database-url", help="a migrated database (default: a private cluster)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    parser.add_argument("--max-p99-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="roadfeed-bench-load-"))
    base.chmod(0o755)
    cluster = None
    procs: list[subprocess.Popen] = []
    try:
        url = args.database_url
        if url is None:
            engine = host_engine()
            if engine is None:
                raise SystemExit("no PostgreSQL engine found (apt-get install postgresql-15-postgis-3)")
            cluster = Cluster(engine, base / "data", durable=False)
            cluster.initdb()
            cluster.start()
            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
            url = cluster.url_for("bench")
            migrate(url)

        sim_port, port = free_port(), free_port()
        sim_log, run_log = base / "simulate.log", base / "run.log"
        with sim_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "feed.cli",
                        "simulate",
                        "--port",
                        str(sim_port),
                        "--speed",
                        str(args.speed),
                        "--history-days",
                        str(args.history_days),
                    ],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_until(lambda: http_status(sim_port, "/") == 200, 60, "the simulator", procs[0], sim_log)
        config = base / "roadfeed.toml"
        config.write_text(config_text(f"http://127.0.0.1:{sim_port}", port, args.workers, args.interval))
        with run_log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "feed.cli", "run", "--config", str(config)],
                cwd=ROOT,
                env={**os.environ, "ROADFEED_DATABASE_URL": url},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(server)
        wait_until(lambda: http_status(port, "/readyz") == 200, 180, "roadfeed run /readyz", server, run_log)
        wait_until(lambda: ingest_counts(url)[1] > 0, 120, "the first measurements", server, run_log)
        time.sleep(1.0)

        runs_before, rows_before = ingest_counts(url)
        print(
            f"{args.clients} clients polling {len(FEEDS)} feeds for {args.duration:g} s "
            f"(workers {args.workers}, think {args.think:g} s) while ingest runs ...",
            flush=True,
        )
        started = time.monotonic()
        stats, samples = asyncio.run(drive(args, port, server.pid))
        elapsed = time.monotonic() - started
        runs_after, rows_after = ingest_counts(url)
        if server.poll() is not None:
            raise SystemExit("roadfeed run died during the load:\n" + run_log.read_text()[-3000:])
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)

    requests = len(stats.latencies)
    errors = stats.status.get("error", 0)
    ms = [x * 1000 for x in stats.latencies]
    rss = [r for _, r in samples]
    mb = 1024 * 1024
    rss_start, rss_end, rss_max = rss[0] / mb, rss[-1] / mb, max(rss) / mb
    result = {
        "requests": requests,
        "rps": requests / elapsed,
        "ok_200": stats.status.get("200", 0),
        "not_modified_304": stats.status.get("304", 0),
        "errors": errors,
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_max_mb": rss_max,
        "ingest_polls": runs_after - runs_before,
        "ingest_rows": rows_after - rows_before,
    }
    print(
        f"requests {requests:,} ({result['rps']:,.0f}/s): 200 {result['ok_200']:,}, "
        f"304 {result['not_modified_304']:,}, errors {errors}"
    )
    print(f"latency p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms")
    print(
        f"server RSS (all processes): start {rss_start:.1f} MB, end {rss_end:.1f} MB, max {rss_max:.1f} MB "
        f"({len(samples)} samples: {', '.join(f'{r / mb:.0f}' for r in rss[:: max(1, len(rss) // 12)])})"
    )
    print(f"ingest during the load: {result['ingest_polls']} successful polls, {result['ingest_rows']:,} rows stored")
    if stats.errors:
        print("first errors:", *stats.errors[:5], sep="\n  ")
    line = {
        "bench": "load",
        "setup": {
            "clients": args.clients,
            "duration_s": args.duration,
            "think_s": args.think,
            "workers": args.workers,
            "feeds": len(FEEDS),
            "speed": args.speed,
        },
        "results": {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
        "targets": {
            "errors": {"value": errors, "op": "<=", "target": 0},
            "rss_growth_mb": {"value": round(rss_end - rss_start, 1), "op": "<=", "target": args.max_rss_growth_mb},
            "p99_ms": {"value": round(result["p99_ms"], 1), "op": "<=", "target": args.max_p99_ms},
            "ingest_polls": {"value": result["ingest_polls"], "op": ">=", "target": 1},
        },
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
