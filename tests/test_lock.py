"""The environment the tests run in is exactly the lock: `make test` installs
requirements/test.txt with hashes, and nothing else may slip in or float."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
NOT_LOCKED = {"pip", "roadfeed"}  # the installer of the venv itself, and the project (editable)


def locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m and (m.group(3) is None or Marker(m.group(3)).evaluate()):
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}


def test_every_lock_line_has_hashes():
    for name in ("runtime.txt", "test.txt"):
        text = (ROOT / "requirements" / name).read_text()
        for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
            if PIN.match(block.splitlines()[0]):
                assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"


def test_the_test_environment_is_exactly_the_lock():
    pins = locked(ROOT / "requirements" / "test.txt")
    have = {name: version for name, version in installed().items() if name not in NOT_LOCKED}
    assert {n: have.get(n) for n in pins if have.get(n) != pins[n]} == {}, "installed versions differ from the lock"
    assert sorted(set(have) - set(pins)) == [], "installed but not in the lock"


def test_the_runtime_lock_agrees_with_the_test_lock():
    runtime, test = locked(ROOT / "requirements" / "runtime.txt"), locked(ROOT / "requirements" / "test.txt")
    assert {n: (v, test.get(n)) for n, v in runtime.items() if test.get(n) != v} == {}
