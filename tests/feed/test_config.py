"""The configuration file: the example loads, errors name key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from collectors.opendatasoft_parse import mapping_from_options
from feed.config import load_config
from feed.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "roadfeed.example.toml"


def test_example_file_loads_and_every_source_mapping_is_valid():
    config = load_config(EXAMPLE)
    assert config.publication.country == "fr" and config.publication.languages == ["fr", "en"]
    assert {s.kind for s in config.sources} == {"datex2", "opendatasoft"}
    for source in config.sources:
        if source.kind == "opendatasoft":
            mapping_from_options(source.options)


def test_environment_overrides_the_database_url(monkeypatch):
    monkeypatch.setenv("ROADFEED_DATABASE_URL", "postgresql://elsewhere/db")
    assert load_config(EXAMPLE).database.url == "postgresql://elsewhere/db"


@pytest.mark.parametrize(
    "toml,expected",
    [
        ("[server]\nport = 'eighty'\n", "server.port = 'eighty': Input should be a valid integer"),
        ("[server]\nport = 70000\n", "server.port = 70000: Input should be less than or equal to 65535"),
        ("[[sources]]\nid = 'a'\nkind = 'ftp'\nurl = 'x'\n", "sources.0.kind = 'ftp': Input should be"),
        ("[[sources]]\nid = 'Bad Id'\nkind = 'datex2'\nurl = 'x'\n", "sources.0.id = 'Bad Id': String should match"),
        ("[publication]\ncountry = 'france'\n", "publication.country = 'france'"),
        ("[publication]\nholidays = 'de'\n", "publication.holidays = 'de': Input should be 'fr' or 'none'"),
        ("[databse]\nurl = 'x'\n", "databse = a table: Extra inputs are not permitted"),
        (
            "[[sources]]\nid = 'a'\nkind = 'datex2'\nurl = 'x'\n[[sources]]\nid = 'a'\nkind = 'datex2'\nurl = 'y'\n",
            "source id 'a' is used twice",
        ),
    ],
)
def test_invalid_files_name_key_value_and_expectation(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
