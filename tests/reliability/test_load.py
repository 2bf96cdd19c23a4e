"""The load benchmark's short variant: a few seconds of concurrent conditional
polling of the feeds while `roadfeed run` ingests from the simulator; no errors,
memory flat. The long variant: `python bench/load.py` (500 clients, 60 s), or
`scripts/reliability --long`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


@pytest.fixture
def load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_load_while_ingesting(load_bench, db_url, server):
    if server.engine.root is not None:
        pytest.skip("the load bench runs on the host engine's database (the service is engine-agnostic here)")
    line = load_bench.main(
        [
            "--database-url",
            db_url,
            "--clients",
            "50",
            "--duration",
            "4",
            "--history-days",
            "2",
            "--max-rss-growth-mb",
            "40",
        ]
    )
    results, targets = line["results"], line["targets"]
    assert results["requests"] > 1000 and results["not_modified_304"] > 0
    assert targets["errors"]["value"] == 0
    assert targets["ingest_polls"]["value"] >= 1
    assert targets["rss_growth_mb"]["value"] <= 40
