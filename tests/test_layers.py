"""SQL only under feed/store/: no other module of the project holds SQL text or runs a
statement through the drivers' methods. Read from the source (ast), so the rule holds
for code no test reaches."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("feed", "collectors", "exporters")
STORE = Path("feed/store")

# What SQL text looks like: upper-case keywords, as this project writes them.
SQL = re.compile(
    r"\bSELECT\s+\S"
    r"|\bINSERT\s+INTO\b"
    r"|\bUPDATE\s+\S+(\s+\w+)?\s+SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\b(UN)?LISTEN\s+[\w\"]"
    r"|\bNOTIFY\s+[\w\"]"
    r"|\bpg_notify\("
    r"|\bCREATE\s+(OR\s+REPLACE\s+|UNIQUE\s+|TEMP(ORARY)?\s+|MATERIALIZED\s+)?"
    r"(TABLE|INDEX|VIEW|FUNCTION|PROCEDURE|TRIGGER|EXTENSION|ROLE|SCHEMA|SEQUENCE|TYPE|DATABASE)\b"
    r"|\bSET\s+LOCAL\b"
    r"|^\s*(BEGIN|COMMIT|ROLLBACK)\b"
)
# The methods asyncpg's and psycopg's connections, pools and cursors run statements with.
DRIVER_METHODS = frozenset(
    {
        "execute",
        "executemany",
        "fetch",
        "fetchrow",
        "fetchval",
        "fetchone",
        "fetchall",
        "fetchmany",
        "copy_records_to_table",
        "copy_to_table",
        "copy_from_query",
        "copy_from_table",
        "copy_to_query",
    }
)


def _modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if STORE not in relative.parents:
                yield relative


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: prose may name SQL keywords."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _texts(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string constant; an f-string with `{}` for what it interpolates."""
    skip = _docstrings(tree)
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts: list[str] = []
            for value in node.values:
                inside_fstrings.add(id(value))
                parts.append(str(value.value) if isinstance(value, ast.Constant) else "{}")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inside_fstrings
        ):
            yield node.lineno, node.value


def violations(source: str) -> list[str]:
    """Where `source` holds SQL text or calls a driver's statement method."""
    tree = ast.parse(source)
    found = [f"line {line}: SQL text {text.strip()[:60]!r}" for line, text in _texts(tree) if SQL.search(text)]
    found += [
        f"line {node.lineno}: .{node.func.attr}() runs a statement"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DRIVER_METHODS
    ]
    return found


@pytest.mark.parametrize("module", list(_modules()), ids=str)
def test_no_sql_outside_the_store(module: Path) -> None:
    found = violations((ROOT / module).read_text(encoding="utf-8"))
    assert not found, f"{module} holds SQL; move it into a module of feed/store/:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'rows = await conn.fetch("SELECT id FROM sites")',
        'x = f"SELECT {columns} FROM markings WHERE id = $1"',
        'q = """\n    INSERT INTO push_sites SELECT * FROM unnest($1::bigint[])"""',
        'q = "UPDATE agents SET disabled = true WHERE username = %s"',
        'q = "UPDATE measurements m SET quality = 1"',
        'q = "DELETE FROM agent_sessions"',
        'q = "LISTEN roadfeed_changes"',
        'q = "NOTIFY roadfeed_changes"',
        'q = "CREATE INDEX ON sites (road)"',
        "await conn.execute(statement)",
        "value = pool.fetchval(query)",
        'await conn.copy_records_to_table("measurements", records=rows)',
    ],
)
def test_the_check_sees_sql(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        '"""Reads with SELECT ... FROM, as the store does."""',
        'def f():\n    """INSERT INTO markings happens in feed.store.markings."""',
        'message = "select the site from the list"',
        "state = publisher.copy_state(path)",
        'log.info("a look even without notify")',
    ],
)
def test_the_check_leaves_prose_alone(source: str) -> None:
    assert not violations(source)
