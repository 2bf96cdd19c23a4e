"""Coverage-guided fuzzing (atheris/libFuzzer) of every source parser, seeded with
the real samples in tests/data. The contract fuzzed is the one the hypothesis
properties in tests/collectors check on fewer, random inputs: any bytes give
records (or quarantined records) or the parser's typed ParseError, nothing else.

    python tests/reliability/fuzz_parsers.py datex2 -runs=200000
    python tests/reliability/fuzz_parsers.py opendatasoft -max_total_time=60
    python tests/reliability/fuzz_parsers.py comptage -max_total_time=60

Needs `pip install atheris` (a binary wheel for CPython 3.11 on x86-64 Linux).
A crash is written to ./crash-<sha1>; rerun the target on that file to reproduce.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from collectors import comptage_parse, datex2_parse, opendatasoft_parse

from feed.errors import ParseError  # noqa: E402
from feed.model import ChannelRecord, EventRecord, MeasurementRecord, Quarantined, SiteRecord  # noqa: E402

DATA = ROOT / "tests" / "data"
NOW = datetime(2026, 6, 22, tzinfo=UTC)
ITEMS = (SiteRecord, ChannelRecord, MeasurementRecord, EventRecord, Quarantined)
COUNTERS = opendatasoft_parse.CounterMapping(site_id="iu_ac", time="t_1h", count="q")


def _check(items) -> None:
    for item in items:
        assert isinstance(item, ITEMS), type(item)


def fuzz_datex2(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        _check(datex2_parse.parse_datex2(io.BytesIO(data), source_id="fuzz", now=NOW))


def fuzz_opendatasoft(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        opendatasoft_parse.parse_records_page(data, COUNTERS, source="fuzz", now=NOW)
    with contextlib.suppress(ParseError):
        _check(
            opendatasoft_parse.parse_export_json(
                (data[i : i + 97] for i in range(0, len(data), 97)), COUNTERS, source="fuzz", now=NOW
            )
        )


def fuzz_comptage(data: bytes) -> None:
    for parse in (comptage_parse.parse_sites, comptage_parse.parse_channels, comptage_parse.parse_measures):
        with contextlib.suppress(ParseError):
            _check(parse(data, source="fuzz"))


TARGETS = {
    "datex2": (fuzz_datex2, [p for p in (DATA / "datex2").glob("*.xml") if p.stat().st_size < 200_000]),
    "opendatasoft": (fuzz_opendatasoft, sorted((DATA / "opendatasoft").glob("*.json"))),
    "comptage": (fuzz_comptage, sorted((DATA / "comptage").glob("*.csv"))),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: fuzz_parsers.py {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target, seeds = TARGETS[sys.argv[1]]
    corpus = Path(tempfile.mkdtemp(prefix=f"roadfeed-fuzz-{sys.argv[1]}-"))
    for seed in seeds:
        (corpus / seed.name).write_bytes(seed.read_bytes()[:64_000])
    atheris.Setup([sys.argv[0], *sys.argv[2:], "-max_len=65536", str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
