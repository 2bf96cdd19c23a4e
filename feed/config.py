"""The one TOML configuration file, validated with pydantic.

`ROADFEED_DATABASE_URL` overrides `[database] url`, `ROADFEED_DATABASE_READ_URL`
`[database] read_url`. Errors name the key, the
value and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feed.errors import ConfigError
from feed.holidays import Calendar

SourceKind = Literal["opendatasoft", "datex2", "comptage-mobilites"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseConfig(_Section):
    url: str | None = None  # None: the embedded cluster started by `roadfeed db up`
    # A hot standby of `url` that `serve` reads from (feed.store.replica); collectors always write to `url`.
    read_url: str | None = None
    pool_size: int = Field(default=10, ge=1, le=200)
    statement_timeout_ms: int = Field(default=15000, ge=100)
    retention_days: int | None = Field(default=None, ge=1)  # raw measurements kept; rollups stay forever
    quarantine_retention_days: int = Field(default=90, ge=1)  # quarantined records not seen again since go

    @model_validator(mode="after")
    def _standby_needs_primary(self) -> DatabaseConfig:
        if self.read_url is not None and self.url is None:
            raise ValueError("read_url (a standby) needs url (its primary): changes are heard on the primary")
        return self


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=0, ge=0, le=64)  # HTTP processes sharing the port; 0: one per CPU
    admin_token: str | None = None
    feed_max_age: int = Field(default=30, ge=0)  # Cache-Control max-age of live feeds
    # Per-client token bucket (feed.http.security): refill rate, bucket size; 0 disables the limit.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    rate_limit_burst: int = Field(default=300, ge=1)
    # Proxies whose X-Forwarded-For names the client (addresses or networks, e.g. "10.0.0.0/8").
    trusted_proxies: list[str] = Field(default_factory=list)
    # Clients never limited (after X-Forwarded-For): loopback, so that a local front proxy left
    # out of trusted_proxies does not throttle everyone as one client.
    rate_limit_exempt: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)  # request bodies larger get 413


class PublicationConfig(_Section):
    publisher: str = "Département de l'Hérault"
    country: str = Field(default="fr", min_length=2, max_length=2)
    national_identifier: str = "FR-HERAULT"
    licence: str = "Licence Ouverte 2.0"
    licence_url: str = "https://www.etalab.gouv.fr/licence-ouverte-open-licence/"
    languages: list[str] = Field(default_factory=lambda: ["fr", "en"], min_length=1)
    timezone: str = "Europe/Paris"
    # Area accepted from sources (lon_min, lat_min, lon_max, lat_max): Hérault.
    bbox: tuple[float, float, float, float] = (2.53, 43.2, 4.2, 43.98)
    bbox_margin_deg: float = Field(default=0.5, ge=0)
    ended_events_hours: int = Field(default=24, ge=0)  # how long ended events stay in live feeds
    coverage_threshold: float = Field(default=0.95, ge=0, le=1)
    holidays: Calendar = "fr"  # public holidays left out of TMJO (working days): "fr" or "none"

    # The public origin (e.g. https://trafic.example.fr) the DCAT catalogue's URLs start
    # with; without it, the scheme and host of each request.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")

    @field_validator("country")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


MIN_POLL_TIMEOUT = 30.0
# A first backfill reads days, or a year, in one export: it gets its own deadline
# (source option `backfill_timeout`), not the interval's.
BACKFILL_TIMEOUT = 3600.0


class SourceConfig(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: SourceKind
    url: str
    interval: int = Field(default=60, ge=1)  # seconds between polls
    # Seconds one poll may last, retries included; then it is recorded as timed out. Default:
    # three quarters of the interval, so that a hanging source does not run into its next poll,
    # but at least MIN_POLL_TIMEOUT, so that a short interval leaves a backlog time to be read.
    poll_timeout: float | None = Field(default=None, gt=0)
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def deadline(self) -> float:
        return self.poll_timeout if self.poll_timeout is not None else max(self.interval * 0.75, MIN_POLL_TIMEOUT)

    def deadline_for(self, watermark: str | None) -> float:
        """The deadline of the next poll: a first backfill (no watermark yet) has its own."""
        if watermark is None and self.kind == "opendatasoft" and "backfill_days" in self.options:
            return float(self.options.get("backfill_timeout", BACKFILL_TIMEOUT))
        return self.deadline


class MqttConfig(_Section):
    """MQTT push (feed.publish.mqtt), from the nodes that run the collectors (`run`)."""

    url: str = Field(pattern=r"^mqtt://")  # mqtt://[user:password@]host[:port]
    prefix: str = Field(default="roadfeed/v1", pattern=r"^[^+#]+$")
    qos: Literal[1, 2] = 1  # acknowledged by the broker before the push moves on
    client_id: str | None = None  # default: roadfeed-<random>
    ack_timeout: float = Field(default=30.0, gt=0)


class Config(_Section):
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    publication: PublicationConfig = Field(default_factory=PublicationConfig)
    mqtt: MqttConfig | None = None  # no push without it
    sources: list[SourceConfig] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in v:
            if s.id in seen:
                raise ValueError(f"source id {s.id!r} is used twice")
            seen.add(s.id)
        return v


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a table"
        lines.append(f"  {loc} = {shown}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin)) from None


def load_config(path: str | Path | None) -> Config:
    """Read the TOML file (or the defaults with no file), then apply the environment."""
    raw: dict[str, Any] = {}
    origin = "environment"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such configuration file") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML: {err}") from None
    # Before validation, so that checks between keys (read_url needs url) see the environment's.
    overrides = {
        key: os.environ[env]
        for key, env in (("url", "ROADFEED_DATABASE_URL"), ("read_url", "ROADFEED_DATABASE_READ_URL"))
        if os.environ.get(env)
    }
    if overrides:
        database = raw.get("database", {})
        raw = {**raw, "database": {**(database if isinstance(database, dict) else {}), **overrides}}
    return parse_config(raw, origin)
