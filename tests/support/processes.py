"""Starting what a fixture runs (or failing the tests with the reason), and stopping a process
a test started: politely first, then for sure."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import TypeVar

import pytest

Started = TypeVar("Started")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send `sig`, wait up to `timeout` seconds for the process to exit, then kill it: a test
    never leaves one running, whatever it did with the signal."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_or_fail(start: Callable[[], Started], failure: str) -> Started:
    """What `start()` returns; if it raises, the tests that need it fail (never skip) with
    `failure` and the reason, without a traceback into the start-up code."""
    try:
        return start()
    except Exception as error:
        pytest.fail(f"{failure}: {error}", pytrace=False)
