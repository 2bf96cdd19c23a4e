"""Every test has a time limit (pytest-timeout's `timeout`, in pyproject.toml, or a
`@pytest.mark.timeout(N)` of its own). When it expires, this plugin prints the stack
of every thread *and of every asyncio task* of the running event loop (a hung async
test is usually an idle loop in `select` with one task waiting: only the task stacks
say which), then fails the test so the run goes on. Should the test still not end
(the main thread stuck where no signal handler can run), a watchdog thread prints
the stacks again and ends the whole run with exit status 1: a hang never outlives
its limit by more than GRACE seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

import pytest

GRACE = float(os.environ.get("ROADFEED_TEST_TIMEOUT_GRACE", "30"))


class TestTimedOut(BaseException):
    """Raised in the main thread when a test's time is up. Not an Exception (nor pytest's
    Failed): hypothesis would take either for a failing example and go on replaying,
    shrinking and printing it past the limit (seen under CPU contention: the watchdog
    had to end the run); pytest reports this one as the test's failure and moves on."""

    __test__ = False  # not a test class, whatever its name


def _await_chain(coro: Any) -> list[FrameType]:
    """The frames of a coroutine and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    while coro is not None and id(coro) not in seen:
        seen.add(id(coro))
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return frames


def dump_everything(out: TextIO, loop: asyncio.AbstractEventLoop | None) -> None:
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"\n--- thread {names.get(ident, '?')} ({ident})\n")
        out.write("".join(traceback.format_stack(frame)))
    if loop is None:
        out.write("\n--- no asyncio event loop is running in the main thread\n")
        return
    tasks = asyncio.all_tasks(loop)
    out.write(f"\n--- {len(tasks)} asyncio task(s) of the running loop\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"\n--- task {task.get_name()}: {task!r}\n")
        frames = _await_chain(task.get_coro())
        out.write("".join(traceback.format_list(traceback.extract_stack(frames[-1]) if frames else [])))
        if len(frames) > 1:
            out.write("  (await chain: " + " -> ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames) + ")\n")
    out.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool:
    limit = float(settings.timeout)

    def expire(_signum: int, _frame: FrameType | None) -> None:
        __tracebackhide__ = True
        sys.stderr.write(f"\n{'+' * 30} Timeout: {item.nodeid} exceeded {limit:g} s {'+' * 30}\n")
        dump_everything(sys.stderr, asyncio._get_running_loop())
        raise TestTimedOut(f"Timeout: the test exceeded its limit of {limit:g} s (stacks above)")

    def last_resort() -> None:
        capture = item.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:  # write to the real stderr, not to a capture lost at exit
            capture.suspend_global_capture(in_=True)
        sys.stderr.write(
            f"\n{'+' * 30} {item.nodeid} still running {GRACE:g} s after its limit: ending the run {'+' * 30}\n"
        )
        dump_everything(sys.stderr, None)
        sys.stderr.flush()
        os._exit(1)

    watchdog = threading.Timer(limit + GRACE, last_resort)
    watchdog.daemon = True
    watchdog.name = f"timeout watchdog {item.nodeid}"

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        watchdog.cancel()

    cancel_timeout: Callable[[], None] = cancel
    item.cancel_timeout = cancel_timeout  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    watchdog.start()
    return True
