"""Test and benchmark support: start a server on a free local port, wait for it, stop it.

Not used by the package itself. The test suite (tests/test_browser.py, tests/test_tracking.py,
tests/test_weights.py), benchmarks/serve_load.py and docs/make_screenshot_mlflow.py import these,
so there is one copy of each.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from fracture.errors import FractureError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (tests and benchmarks start servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(process, url: str, timeout: float, log_path, health: str = "/healthz") -> float:
    """Poll `url` + `health` until it answers 200; the seconds that took. A server process that exits
    or stays silent past `timeout` raises FractureError with the tail of its log."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise FractureError(f"the server exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + health, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise FractureError(f"the server did not answer {health} within {timeout:.0f} s:\n"
                                f"{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(process, timeout: float = 30, group: bool = False) -> None:
    """Terminate a server process; kill it if it has not exited within `timeout` seconds.
    group=True signals its whole process group (start it with start_new_session=True): the
    `mlflow` CLI runs its uvicorn/gunicorn workers as children that a plain terminate misses."""
    import contextlib
    import os
    import signal

    def send(sig):
        with contextlib.suppress(ProcessLookupError):  # gone already (e.g. it failed to start)
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
