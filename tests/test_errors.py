"""The one error tree (feed.errors) and the one status table (feed.http.errors).

Exception classes are found by importing every module of the packages, not from a
list, so a class added anywhere without the tree's root fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import collectors
import exporters
import feed
from feed.errors import BadParameter, NotFound, RequestError, RoadfeedError, Unauthorized, Unavailable
from feed.http.errors import STATUS, json_error, refusal, status_of


def _modules() -> list[ModuleType]:
    modules = []
    for package in (feed, collectors, exporters):
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                modules.append(importlib.import_module(info.name))
    return modules


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for module in _modules():
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                found.append(cls)
    return found


def _subclasses(cls: type[RequestError]) -> list[type[RequestError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_exception_class_derives_from_the_root() -> None:
    classes = _exception_classes()
    assert len(classes) > 20  # the walk found the packages' classes
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, RoadfeedError))
    assert outside == []


def test_every_request_error_has_a_status() -> None:
    _exception_classes()  # every module imported: every subclass defined
    for cls in [RequestError, *_subclasses(RequestError)]:
        if cls is RequestError:
            continue
        assert any(base in STATUS for base in cls.__mro__), f"{cls.__qualname__} has no HTTP status"
    assert all(400 <= status < 600 for status in STATUS.values())


def test_the_root_request_error_has_no_status() -> None:
    with pytest.raises(LookupError, match=re.escape("add it to feed.http.errors.STATUS")):
        status_of(RequestError("refused", "a refusal of no kind"))


def test_a_refusal_is_its_status_document_and_headers() -> None:
    response = refusal(Unavailable("busy", "every slot is in use", retry_after=30))
    assert response.status == 503
    assert response.headers["Retry-After"] == "30" and response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.body == (
        b'{"error":"busy","parameter":null,"value":null,"expected":null,"detail":"every slot is in use"}'
    )

    response = refusal(Unauthorized("unauthorized", "log in", realm="roadfeed"), cors=False, compact=False)
    assert response.status == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="roadfeed"'
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.body == (
        b'{"error": "unauthorized", "parameter": null, "value": null, "expected": null, "detail": "log in"}'
    )

    assert refusal(NotFound("id", "7", "a site id", "no site 7")).status == 404


def test_a_bad_parameter_echoes_printable_text() -> None:
    error = BadParameter("q\x01", "x" * 300, "a short text", "q\x01 is too long")
    assert str(error) == "q\x01 is too long"  # the message as given; the body escapes it
    assert error.as_json() == {
        "error": "invalid_parameter",
        "parameter": "q\\u0001",
        "value": "x" * 200 + "…",
        "expected": "a short text",
        "detail": "q\\u0001 is too long",
    }
    assert isinstance(error, ValueError) and status_of(error) == 400


def test_json_error_keeps_the_call_shape_of_the_feeds() -> None:
    response = json_error(503, {"status": "not_ready"}, {"Retry-After": "5"})
    assert response.status == 503 and response.body == b'{"status":"not_ready"}'
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Retry-After"] == "5"
