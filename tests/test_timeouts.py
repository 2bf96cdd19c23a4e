"""The suite's time limit (tests/timeouts.py) on real hung tests, run by a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).parent

HUNG = """
import asyncio
import threading

async def wait_for_a_notification_that_never_comes(event):
    await event.wait()

async def test_hangs_in_an_awaited_coroutine():
    await wait_for_a_notification_that_never_comes(asyncio.Event())

def test_hangs_in_a_thread_join():
    threading.Event().wait()

from hypothesis import given, settings, strategies as st

@settings(max_examples=10**6, deadline=None)
@given(st.integers())
def test_hangs_inside_a_property(n):
    threading.Event().wait(0.2)  # each example slow: the limit falls inside hypothesis

async def test_still_runs_after_the_hung_ones():
    await asyncio.sleep(0)
"""


def run_child(tmp_path: Path, source: str, *args: str, grace: float = 30) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from timeouts import pytest_timeout_set_timer  # noqa: F401
    """)
    )
    (tmp_path / "test_child.py").write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(tmp_path / "test_child.py"),
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "timeout=1",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ROADFEED_TEST_TIMEOUT_GRACE": str(grace)},
    )


def test_a_hung_test_fails_with_every_thread_and_task_stack_and_the_run_goes_on(tmp_path: Path):
    child = run_child(tmp_path, HUNG)
    out = child.stdout + child.stderr
    assert child.returncode == 1, out
    assert "3 failed, 1 passed" in out  # hypothesis does not swallow the timeout
    assert "test_hangs_in_an_awaited_coroutine exceeded 1 s" in out
    assert "Timeout: the test exceeded its limit of 1 s" in out
    # the task's whole await chain, down to the coroutine that waits
    assert "asyncio task(s) of the running loop" in out
    assert "wait_for_a_notification_that_never_comes" in out
    # threads are dumped too, with the main thread's frame in the hung sync test
    assert "--- thread MainThread" in out and "test_hangs_in_a_thread_join" in out


def test_a_test_that_ignores_its_limit_ends_the_run(tmp_path: Path):
    source = """
import signal
import time

def test_blocks_the_alarm():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(600)
"""
    child = run_child(tmp_path, source, grace=1)
    out = child.stdout + child.stderr
    assert child.returncode == 1
    assert "still running" in out and "ending the run" in out
