"""Stopping a process a test started: politely first, then for sure."""

from __future__ import annotations

import signal
import subprocess


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
