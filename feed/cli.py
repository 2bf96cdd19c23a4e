"""The `roadfeed` command."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Callable

import aiohttp
import asyncpg
import psycopg

from collectors.fetch import Fetcher
from feed.collect.poll import poll_source
from feed.config import Config, SourceConfig, load_config
from feed.errors import ConfigError
from feed.http import agents
from feed.logs import FORMATS, resolve_format, setup_logging
from feed.publish.static_export import ExportError, export_feeds
from feed.roads import ReferentialError, Road, parse_referential
from feed.server.demo import run_demo
from feed.server.service import NotMigrated, run
from feed.simulator.national import NationalNetwork
from feed.simulator.server import run_simulator
from feed.store import agents as accounts
from feed.store import embedded, roads
from feed.store.cluster import ClusterError
from feed.store.migrations import MigrationError, detect_engine, migrate, storage_mode, table_sizes
from feed.store.storage import Storage


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def cmd_db_up(args: argparse.Namespace) -> int:
    url = embedded.up()
    print(f"embedded PostgreSQL running: {url}")
    print("later roadfeed commands use it unless ROADFEED_DATABASE_URL is set")
    return 0


def cmd_db_down(args: argparse.Namespace) -> int:
    print("embedded PostgreSQL stopped" if embedded.down() else "embedded PostgreSQL was not running")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    report = migrate(embedded.database_url(_config(args)))
    for name in report.applied:
        print(f"applied {name}")
    print(
        f"{len(report.applied)} applied, {len(report.already)} already applied; "
        f"storage mode: {report.engine.storage_mode}"
    )
    for note in report.engine.notes:
        print(f"note: {note}")
    return 0


def cmd_db_info(args: argparse.Namespace) -> int:
    url = embedded.database_url(_config(args))
    with psycopg.connect(url) as conn:
        info = detect_engine(conn)
        mode = storage_mode(conn)
        sizes = table_sizes(conn)
    print(f"server:       PostgreSQL {info.server_version}")
    print(f"PostGIS:      {info.postgis_version or 'not available'}")
    print(
        f"TimescaleDB:  {info.timescaledb_version or 'not available'}"
        + (f" (licence: {info.timescaledb_license})" if info.timescaledb_license else "")
    )
    print(f"storage mode: {mode if mode is not None else 'not migrated yet (run roadfeed db migrate)'}")
    for note in info.notes:
        print(f"note:         {note}")
    if sizes:
        print("tables:")
        for name, size in sizes:
            print(f"  {name:<24}{_human(size):>10}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    config = _config(args)
    sources = {s.id: s for s in config.sources}
    if args.source not in sources:
        known = ", ".join(sources) or "none"
        raise ConfigError(f"{args.config}: no source {args.source!r} (sources: {known})")
    if resolve_format(getattr(args, "log_format", None)) == "text":
        logging.getLogger("roadfeed.collect").setLevel(logging.WARNING)  # the report is printed instead
    return asyncio.run(_collect(config, sources[args.source], args.once))


async def _collect(config: Config, source: SourceConfig, once: bool) -> int:
    storage = await Storage.open(embedded.database_url(config), max_size=4)
    try:
        async with aiohttp.ClientSession() as session:
            fetcher = Fetcher(session)
            while True:
                report = await poll_source(source, storage, fetcher, config.publication)
                print(report.line(), flush=True)
                if once:
                    return 0 if report.stats.error is None else 1
                await asyncio.sleep(source.interval)
    finally:
        await storage.close()


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.workers is not None and not 0 <= args.workers <= 64:
        raise ConfigError(f"--workers {args.workers}: expected 0 (one per CPU) to 64")
    asyncio.run(
        run(
            config,
            embedded.database_url(config),
            args.host or config.server.host,
            args.port or config.server.port,
            collect=args.command == "run",
            workers=args.workers,
        )
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        raise ConfigError(f"--speed {args.speed:g}: must be greater than 0 (1 = real time)")
    national = None
    if args.sites is not None:
        try:
            national = NationalNetwork(sites=args.sites, step=args.step)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    asyncio.run(run_simulator(args.host, args.port, args.seed, args.speed, args.history_days, national=national))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.interval < 1:
        raise ConfigError("--speed must be greater than 0 and --interval at least 1 second")
    asyncio.run(run_demo(args.host, args.port, args.seed, args.speed, args.interval))
    return 0


def cmd_export_feeds(args: argparse.Namespace) -> int:
    config = _config(args)

    async def export() -> dict:
        storage = await Storage.open(embedded.database_url(config), max_size=4)
        try:
            return await export_feeds(storage, config, args.dir)
        finally:
            await storage.close()

    index = asyncio.run(export())
    print(f"{len(index['feeds'])} feeds written to {args.dir} (index.json, .gz beside each)")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _log_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        help="log lines on stderr: text (default) or json (one object a line); default from ROADFEED_LOG_FORMAT",
    )


def cmd_users(args: argparse.Namespace) -> int:
    url = embedded.database_url(_config(args))
    with psycopg.connect(url) as conn:
        if args.users_command == "add":
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
            agents.add_agent(conn, args.username, args.role, password, args.display_name)
            print(f"added {args.username} ({args.role})")
        elif args.users_command == "list":
            for a in accounts.list_agents(conn):
                print(f"{a.username:<24}{a.role:<15}{'disabled' if a.disabled else 'active':<10}{a.display_name}")
        elif args.users_command == "disable":
            agents.disable_agent(conn, args.username)
            print(f"disabled {args.username}: its sessions ended, its tokens refused")
        else:
            print(agents.create_token(conn, args.username, args.label))
    return 0


def cmd_roads_import(args: argparse.Namespace) -> int:
    url = embedded.database_url(_config(args))
    with open(args.file, "rb") as f:
        data = f.read()
    referential = parse_referential(data, args.file)
    count = asyncio.run(_store_roads(url, referential))
    print(f"imported {count} roads, {sum(len(r.prs) for r in referential)} PR from {args.file}")
    return 0


async def _store_roads(url: str, referential: list[Road]) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await roads.store_referential(conn, referential)
    finally:
        await conn.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roadfeed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the database: embedded cluster and migrations")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    for name, func, text in [
        ("up", cmd_db_up, "create and start the embedded cluster under ./var/pg"),
        ("down", cmd_db_down, "stop the embedded cluster"),
        ("migrate", cmd_db_migrate, "apply the migrations in sql/"),
        ("info", cmd_db_info, "server, PostGIS and TimescaleDB versions, storage mode, table sizes"),
    ]:
        p = dbsub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML configuration file (for [database] url)")
        p.set_defaults(func=func)

    for name, text in (("run", "collectors, scheduler and the HTTP server"), ("serve", "the HTTP server only")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=name == "run", help="TOML configuration file")
        p.add_argument("--host", help="address to listen on (default from [server], 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default from [server], 8080)")
        p.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="HTTP processes sharing the port (default from [server] workers; 0: one per CPU)",
        )
        _log_format_option(p)
        p.set_defaults(func=cmd_run)

    simulate = sub.add_parser("simulate", help="serve a simulated Hérault (Opendatasoft API + DATEX II feeds)")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8081)
    simulate.add_argument("--seed", type=int, default=34, help="same seed, same département")
    simulate.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    simulate.add_argument("--history-days", type=float, default=30, help="days of counts before now")
    simulate.add_argument(
        "--sites",
        type=int,
        help="add the national scenario: this many sites measured per lane (DATEX II v3 under /national/, e.g. 20000)",
    )
    simulate.add_argument("--step", type=int, default=60, help="seconds between national publications")
    simulate.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="embedded database + simulated département + collectors + feeds")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--seed", type=int, default=34)
    demo.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    demo.add_argument("--interval", type=int, default=60, help="seconds between polls of each source")
    _log_format_option(demo)
    demo.set_defaults(func=cmd_demo)

    export = sub.add_parser("export-feeds", help="write every live feed (+ .gz, index.json) into a directory")
    export.add_argument("--config", help="TOML configuration file")
    export.add_argument("--dir", required=True, help="target directory (files replaced atomically)")
    export.set_defaults(func=cmd_export_feeds)

    collect = sub.add_parser("collect", help="poll one source and print what the poll did")
    collect.add_argument("--config", required=True, help="TOML configuration file")
    collect.add_argument("--source", required=True, help="the source id")
    collect.add_argument("--once", action="store_true", help="one poll, then exit (else poll at its interval)")
    _log_format_option(collect)
    collect.set_defaults(func=cmd_collect)

    users = sub.add_parser("users", help="road agents' accounts")
    usersub = users.add_subparsers(dest="users_command", required=True)
    add = usersub.add_parser("add", help="create an account (password asked, or read from stdin)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=agents.ROLES)
    add.add_argument("--display-name", default="")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    usersub.add_parser("list", help="every account with its role and state")
    disable = usersub.add_parser("disable", help="disable an account (its sessions and tokens stop working)")
    disable.add_argument("username")
    token = usersub.add_parser("token", help="print a new personal API token for scripts (shown once)")
    token.add_argument("username")
    token.add_argument("--label", default="", help="what the token is for")
    for p in usersub.choices.values():
        p.add_argument("--config", help="TOML configuration file (for [database] url)")
    users.set_defaults(func=cmd_users)

    road = sub.add_parser("roads", help="the road referential (roads and their PR)")
    roadsub = road.add_subparsers(dest="roads_command", required=True)
    imp = roadsub.add_parser("import", help="import a CSV or GeoJSON of PR points per road (replaces those roads)")
    imp.add_argument("file")
    imp.add_argument("--config", help="TOML configuration file (for [database] url)")
    imp.set_defaults(func=cmd_roads_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        log_format = resolve_format(getattr(args, "log_format", None))
    except ValueError as err:
        print(f"roadfeed: {err} (ROADFEED_LOG_FORMAT)", file=sys.stderr)
        return 2
    setup_logging(log_format)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (
        ConfigError,
        ClusterError,
        MigrationError,
        embedded.NoDatabase,
        NotMigrated,
        ExportError,
        agents.AgentError,
        ReferentialError,
    ) as err:
        print(f"roadfeed: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the port is taken
        print(f"roadfeed: {err}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as err:
        print(
            f"roadfeed: cannot reach the database ({str(err).strip()}); "
            "is it running? `roadfeed db up` starts the embedded one",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
