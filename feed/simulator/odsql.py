"""The subset of Opendatasoft's query language (ODSQL) our collectors send, pure:
`where` (comparisons joined by AND) parsed to conditions and matched against a
record, `select` and `order_by` parsed to field lists. Anything else is refused with
the error a portal answers (`OdsError`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from feed.errors import InputError

__all__ = [
    "OdsError",
    "parse_order_by",
    "parse_select",
    "parse_where",
]


class OdsError(InputError):
    """An error answered the way an Opendatasoft portal answers it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class _Condition:
    field: str
    op: str
    value: Any  # datetime, str, float, bool


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<date>date'(?P<dateval>[^']*)')
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<op>>=|<=|!=|=|>|<)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<word>`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)
)""",
    re.X,
)


_GEO_TYPES = ("geo_point_2d", "geo_shape")


def _odsql_error(message: str) -> OdsError:
    return OdsError(400, "ODSQLError", message)


def _parse_date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _odsql_error(f"Invalid date literal: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_where(text: str, fields: dict[str, str]) -> list[_Condition]:
    """The conditions of a `where` made of comparisons joined by AND (parentheses allowed).

    The subset our collectors send; anything else is refused with an ODSQLError.
    """
    tokens: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _odsql_error(f"Syntax error at position {pos} in where clause: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group("date") is not None:
            tokens.append(("value", _parse_date(m.group("dateval"))))
        elif m.group("str") is not None:
            raw = m.group("str")[1:-1]
            tokens.append(("value", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group("num") is not None:
            tokens.append(("value", float(m.group("num"))))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        elif m.group("lp") is not None:
            tokens.append(("(", None))
        elif m.group("rp") is not None:
            tokens.append((")", None))
        else:
            word = m.group("word")
            lower = word.lower()
            if lower == "and":
                tokens.append(("and", None))
            elif lower in ("or", "not", "in", "like", "search", "within_distance", "in_bbox"):
                raise _odsql_error(f"{word!r} is not supported by the simulator (only comparisons joined by AND)")
            elif lower in ("true", "false"):
                tokens.append(("value", lower == "true"))
            else:
                tokens.append(("field", word.strip("`")))
    conditions: list[_Condition] = []
    i = 0
    depth = 0
    expect_term = True
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "(" and expect_term:
            depth += 1
            i += 1
            continue
        if kind == ")" and not expect_term:
            depth -= 1
            if depth < 0:
                raise _odsql_error("Unbalanced parenthesis in where clause")
            i += 1
            continue
        if kind == "and" and not expect_term:
            expect_term = True
            i += 1
            continue
        if (
            expect_term
            and kind == "field"
            and i + 2 < len(tokens)
            and tokens[i + 1][0] == "op"
            and tokens[i + 2][0] == "value"
        ):
            name = value
            if name not in fields:
                raise _odsql_error(f"Unknown field: {name}")
            if fields[name] in _GEO_TYPES:
                raise _odsql_error(f"Comparisons on the geographic field {name} are not supported")
            conditions.append(_Condition(name, tokens[i + 1][1], tokens[i + 2][1]))
            expect_term = False
            i += 3
            continue
        raise _odsql_error(f"Syntax error in where clause near token {i + 1} ({kind})")
    if depth != 0 or (expect_term and tokens):
        raise _odsql_error("Incomplete where clause")
    return conditions


def parse_select(text: str, fields: dict[str, str]) -> list[str] | None:
    """The fields of a `select` made of plain field names (None: all of them)."""
    names = [n.strip().strip("`") for n in text.split(",") if n.strip()]
    if not names or names == ["*"]:
        return None
    for name in names:
        if name not in fields:
            raise _odsql_error(f"Unknown field in select (only plain field names are supported): {name}")
    return names


def parse_order_by(text: str, fields: dict[str, str]) -> list[tuple[str, bool]]:
    """[(field, ascending)] from `field asc, other desc`."""
    keys = []
    for part in text.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise _odsql_error(f"Invalid order_by expression: {part.strip()!r}")
        name = words[0].strip("`")
        if name not in fields:
            raise _odsql_error(f"Unknown field in order_by: {name}")
        if fields[name] in _GEO_TYPES:
            raise _odsql_error(f"Cannot order by the geographic field {name}")
        keys.append((name, len(words) == 1 or words[1].lower() == "asc"))
    return keys


def _compare(left: Any, op: str, right: Any) -> bool:
    if left is None:
        return False
    if isinstance(left, datetime) and isinstance(right, str):
        right = _parse_date(right)
    if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, str):
        try:
            right = float(right)
        except ValueError:
            return False
    if isinstance(left, str) and isinstance(right, float):
        right = f"{right:g}"
    try:
        if op == "=":
            return left == right
        if op == "!=":
            return left != right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
    except TypeError:
        return False
    raise _odsql_error(f"Unknown operator {op}")


def _matches(record: dict[str, Any], conditions: Sequence[_Condition]) -> bool:
    return all(_compare(record.get(c.field), c.op, c.value) for c in conditions)


def _sort(records: list[dict[str, Any]], keys: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    for name, ascending in reversed(keys):
        records.sort(key=lambda r: (r.get(name) is None, r.get(name)), reverse=not ascending)
    return records
