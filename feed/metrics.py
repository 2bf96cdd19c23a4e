"""`/metrics`: the Prometheus text exposition (format 0.0.4), written by hand.

Counters and histograms live in this module, one set per process: the code that
does the work bumps them (polls in feed.collect.poll, HTTP requests in the middleware
of feed.http.metrics and in the feeds' fast path); gauges that describe state (feeds,
database pool, sources) are read when `/metrics` is scraped. This module imports no
aiohttp: the route and the middleware are in feed.http.metrics.

With several HTTP processes (`[server] workers` > 1) each process answers for
itself: a scrape reaches whichever process the kernel picks, and every series
carries `process` (its pid) and `role` (`leader`: runs the collectors and renders
the feeds; `follower`: serves). Poll counters therefore appear only in the
leader's answers; run with `workers = 1` when every scrape must see everything.

Hot paths keep this cheap: a histogram child is looked up once (per route, per
feed) and `observe` is a bisect and two additions, with no allocation.
"""

from __future__ import annotations

import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["CONTENT_TYPE", "REGISTRY", "Counter", "Gauge", "Histogram", "expose", "record_poll"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROCESS = str(os.getpid())
START_TIME = time.time()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        """The samples, one exposition line each (every kind of metric says how)."""
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[labels] = value


class HistogramChild:
    """One label set's buckets (not cumulative; summed when exposed)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = tuple(sorted(buckets))
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def child(self, *labels: str) -> HistogramChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = HistogramChild(self.bounds)
        return found

    def observe(self, *labels: str, value: float) -> None:
        self.child(*labels).observe(value)

    def lines(self) -> list[str]:
        out: list[str] = []
        for key, child in sorted(self.children.items()):
            running = 0
            for bound, count in zip((*self.bounds, math.inf), child.counts, strict=True):
                running += count
                le = 'le="' + _number(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(child.sum)}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return out


class Registry:
    """This process's counters and histograms."""

    def __init__(self) -> None:
        self.polls = Counter(
            "roadfeed_polls_total",
            "Polls of a source, by outcome (ok, not_modified, error, interrupted).",
            ("source", "outcome"),
        )
        self.records = Counter(
            "roadfeed_poll_records_total",
            "Records a poll stored, by result (new, updated, unchanged, quarantined).",
            ("source", "result"),
        )
        self.poll_bytes = Counter("roadfeed_poll_bytes_total", "Bytes a poll fetched.", ("source",))
        self.poll_duration = Histogram(
            "roadfeed_poll_duration_seconds", "Duration of a poll, fetch to stored.", ("source",), POLL_BUCKETS
        )
        self.polls_in_flight = Gauge("roadfeed_polls_in_flight", "Polls running in this process.")
        self.http = Histogram(
            "roadfeed_http_request_duration_seconds",
            "Time to answer an HTTP request (body handed to the socket), by route template, "
            "status class and server path (fast: the feeds' fast path; app: aiohttp).",
            ("route", "status", "via"),
        )
        self.http_in_flight = Gauge("roadfeed_http_requests_in_flight", "aiohttp requests being handled.")
        self.polls_in_flight.set(value=0)
        self.http_in_flight.set(value=0)

    def own(self) -> list[_Metric]:
        return [
            self.polls,
            self.records,
            self.poll_bytes,
            self.poll_duration,
            self.polls_in_flight,
            self.http,
            self.http_in_flight,
        ]


REGISTRY = Registry()


# --------------------------------------------------------------------------- what the work records


def record_poll(source: str, outcome: str, records: Mapping[str, int], fetched: int, duration: float) -> None:
    """One poll of `source`: its outcome (ok, not_modified, error, interrupted), the records it
    stored by result (new, updated, unchanged, quarantined), the bytes it fetched and its seconds."""
    REGISTRY.polls.inc(source, outcome)
    for result, n in records.items():
        REGISTRY.records.inc(source, result, amount=n)
    REGISTRY.poll_bytes.inc(source, amount=fetched)
    REGISTRY.poll_duration.observe(source, value=duration)


# --------------------------------------------------------------------------- scrape


def _gauge_lines(
    name: str, help_text: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]], kind: str = "gauge"
) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out.extend(f"{name}{_labels(labels, values)} {_number(v)}" for values, v in rows)
    return out


def _feed_lines(publisher: Any) -> list[str]:
    gen, comp, size, renders, published, state = [], [], [], [], [], []
    for path in publisher.paths:
        st = publisher.state(path)
        renders.append(((path,), st.renders))
        state.append(((path, st.condition), 1))
        cur = st.current
        if cur is None:
            continue
        gen.append(((path,), cur.generation_ms / 1000))
        comp.append(((path,), cur.compression_ms / 1000))
        published.append(((path,), cur.published_at.timestamp()))
        size.append(((path, "identity"), len(cur.body)))
        size.extend(((path, coding), len(body)) for coding, body in sorted(cur.encoded.items()))
    return [
        *_gauge_lines(
            "roadfeed_feed_generation_seconds", "Rendering time of the feed's current version.", ("feed",), gen
        ),
        *_gauge_lines(
            "roadfeed_feed_compression_seconds", "Compression time of the feed's current version.", ("feed",), comp
        ),
        *_gauge_lines(
            "roadfeed_feed_size_bytes",
            "Size of the feed's current version, by content coding.",
            ("feed", "encoding"),
            size,
        ),
        *_gauge_lines(
            "roadfeed_feed_published_timestamp_seconds",
            "When the feed's current version was published.",
            ("feed",),
            published,
        ),
        *_gauge_lines(
            "roadfeed_feed_renders_total",
            "Renderings of the feed since the process started.",
            ("feed",),
            renders,
            kind="counter",
        ),
        *_gauge_lines(
            "roadfeed_feed_state",
            "1 for the feed's condition (ok, stale, empty, error, pending).",
            ("feed", "state"),
            state,
        ),
    ]


def _source_lines(rows: Sequence[Mapping[str, Any]] | None) -> list[str]:
    if rows is None:
        return _gauge_lines("roadfeed_database_up", "1 when the scrape could read the database.", (), [((), 0)])
    return [
        *_gauge_lines("roadfeed_database_up", "1 when the scrape could read the database.", (), [((), 1)]),
        *_gauge_lines(
            "roadfeed_source_last_success_timestamp_seconds",
            "End of the source's last successful poll (from the database: any process).",
            ("source",),
            [((r["id"],), r["ok"]) for r in rows if r["ok"] is not None],
        ),
        *_gauge_lines(
            "roadfeed_source_last_error_timestamp_seconds",
            "When the source's last poll failed.",
            ("source",),
            [((r["id"],), r["err"]) for r in rows if r["err"] is not None],
        ),
    ]


def _pool_lines(pool: Any) -> list[str]:
    return [
        *_gauge_lines(
            "roadfeed_db_pool_connections", "Connections the database pool holds.", (), [((), pool.get_size())]
        ),
        *_gauge_lines(
            "roadfeed_db_pool_idle_connections",
            "Connections of the pool free to use.",
            (),
            [((), pool.get_idle_size())],
        ),
        *_gauge_lines("roadfeed_db_pool_max_connections", "The pool's maximum size.", (), [((), pool.get_max_size())]),
    ]


def _process_lines(publisher: Any) -> list[str]:
    role = "follower" if type(publisher).__name__ == "FeedMirror" else "leader"
    out = [
        *_gauge_lines("roadfeed_process_info", "This process (pid) and its role.", ("role",), [((role,), 1)]),
        *_gauge_lines(
            "roadfeed_process_start_time_seconds", "When this process started (Unix time).", (), [((), START_TIME)]
        ),
    ]
    described = publisher.processes() if getattr(publisher, "processes", None) is not None else None
    if described:
        out += _gauge_lines(
            "roadfeed_workers",
            "HTTP processes: configured, serving, and follower restarts.",
            ("state",),
            [((k,), v) for k, v in sorted(described.items())],
        )
    elif role == "leader":
        out += _gauge_lines(
            "roadfeed_workers",
            "HTTP processes: configured, serving, and follower restarts.",
            ("state",),
            [(("configured",), 1), (("serving",), 1)],
        )
    return out


def _add_process_label(lines: list[str]) -> list[str]:
    label = f'process="{PROCESS}"'
    out = []
    for line in lines:
        if line.startswith("#"):
            out.append(line)
            continue
        name, _, rest = line.rpartition(" ")  # values have no spaces; label values might
        if name.endswith("}"):
            out.append(f"{name[:-1]},{label}}} {rest}")
        else:
            out.append(f"{name}{{{label}}} {rest}")
    return out


def expose(publisher: Any, pool: Any, sources: Sequence[Mapping[str, Any]] | None) -> str:
    """The whole exposition of this process: `pool` is the database pool, `sources` each
    source's `id`, last success `ok` and last error `err` (Unix times), None when unreadable."""
    lines: list[str] = []
    for metric in REGISTRY.own():
        lines += metric.header() + metric.lines()
    lines += _feed_lines(publisher) + _pool_lines(pool) + _process_lines(publisher)
    lines += _source_lines(sources)
    return "\n".join(_add_process_label(lines)) + "\n"
