"""Processes the dev environment starts, and the run dirs they live in.

A `Component` is one restartable process that dies with its parent; a `RunContext` is a
thing started in a run dir of its own (the control plane, a node, a registry) whose `with`
block stops it and keeps its logs on failure. Run dirs record their owner, so a later run
can tell a dead run's leftovers from a live one's. Stdlib only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

STOP_GRACE = 10.0
T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """Something of the dev environment could not be built or started; the message says
    where the logs are. The base of every error the package raises."""


def log(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port nobody listens on right now, chosen below the kernel's ephemeral range:
    a port the kernel picked (bind to 0) can be taken by any outgoing connection before the
    server that was given it binds it, and a busy suite saw exactly that (EADDRINUSE)."""
    low, high = _ephemeral_ports()
    candidates = range(10000, low) if low > 11000 else range(high + 1, 65536)
    for port in random.sample(candidates, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ControlPlaneError("no free loopback port outside the ephemeral range")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the process that started it dies.

    Covers the case no atexit hook can: the test runner itself being SIGKILLed.
    Linux-only; harmless elsewhere.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy (and return that); ControlPlaneError on
    the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except ControlPlaneError:
            raise
        except Exception as error:  # not up yet: connection refused, TLS, 5xx ...
            last = error
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Component:
    """One control-plane process, restartable in place with the same arguments and ports."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            out.flush()
            preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=preexec,
                                            env={**os.environ, **self.env} if self.env else None)

    def check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ControlPlaneError(f"{self.name} exited (code {code}); see {self.log_path.name}")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (grace 0: SIGKILL at once, like a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if grace <= 0:
            process.kill()
            process.wait()
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RunContext:
    """Something started in a run dir of its own: a context manager whose exit stops it
    (keeping the logs when the block raised), and paths inside the run dir."""

    dir: Path | None = None
    kept_logs: Path | None = None
    error_type: type[ControlPlaneError] = ControlPlaneError

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self, failed: bool = False) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop(failed=exc is not None and not isinstance(exc, KeyboardInterrupt))

    @contextlib.contextmanager
    def stopped_on_failure(self, why: Callable[[], str] = lambda: "") -> Iterator[None]:
        """Around a start: on any failure stop (keeping the logs unless it was Ctrl-C) and
        re-raise as `error_type`, with `why()` and where the logs are."""
        try:
            yield
        except BaseException as error:
            detail = why() if isinstance(error, ControlPlaneError) else ""
            self.stop(failed=not isinstance(error, KeyboardInterrupt))
            if isinstance(error, ControlPlaneError) and self.kept_logs:
                raise self.error_type(f"{error}{detail}; logs kept in {self.kept_logs}") from error
            raise

    def run_path(self, relative: str) -> Path:
        if self.dir is None:
            raise ControlPlaneError(f"{type(self).__name__} not started")
        return self.dir / relative

    @property
    def log_dir(self) -> Path:
        """Where the processes' logs go (kept on failure, see `keep_logs`)."""
        return self.run_path("logs")



def make_run_dir(prefix: str) -> Path:
    """A fresh temp dir that records its owner (pid and start time), so a later run can tell
    a dead run's leftovers from a live run's files (see `orphaned_run_dirs`)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    (directory / "owner.pid").write_text(f"{os.getpid()} {_process_start_time(os.getpid())}")
    return directory


def _process_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def orphaned_run_dirs(prefix: str) -> list[Path]:
    """Temp dirs made by `make_run_dir(prefix)` whose owner is gone (SIGKILLed: its processes
    died with it, see `_die_with_parent`, but nothing could remove its files)."""
    orphans = []
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            pid, _, started = (directory / "owner.pid").read_text().partition(" ")
            alive = Path(f"/proc/{int(pid)}").exists() and (
                not started or _process_start_time(int(pid)) == started.strip())
        except (OSError, ValueError):
            continue  # no pid file yet, or not ours to judge
        if not alive:
            orphans.append(directory)
    return orphans



def keep_logs(source: Path) -> Path:
    """Copy a log dir somewhere that outlives the temp dir."""
    base = os.environ.get("REGCRED_CONTROLPLANE_LOGS")
    root = Path(base) if base else Path.home() / ".cache" / "regcred" / "logs"
    target = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


# --- CLI --------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all raise KeyboardInterrupt, so `finally` blocks clean up
    (SIGINT explicitly too: a shell starts background jobs with it ignored)."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_command(command: Callable[[], None]) -> int:
    """A CLI command's exit code: 0; 130 after Ctrl-C, SIGTERM or SIGHUP (everything it
    started cleaned up by its `with` blocks); 1 with the message on a ControlPlaneError."""
    try:
        with interruptible():
            command()
    except KeyboardInterrupt:
        log("stopped")
        return 130
    except ControlPlaneError as error:
        log(f"error: {error}")
        return 1
    return 0


def keep_running(components: Iterable[Component]) -> None:
    """`up`: until interrupted, failing as soon as one of `components` exits."""
    log("running; Ctrl-C or SIGTERM stops it and removes everything")
    watched = list(components)
    while True:
        for component in watched:
            component.check_running()
        time.sleep(1)  # a liveness check, not synchronisation

