"""One writer per run folder: an OS lock that the holder's death releases.

    with runlock.hold(run_dir, "train"):   # RunLocked naming the holder's PID when another process has it
        ...write the run folder...

The lock is `fcntl.flock` on `<runs_dir>/.<run name>.lock`, a file *beside* the run folder, so it
can be taken before the folder exists and without touching anything in it. The kernel drops the
lock when the holding process exits in any way (kill -9 included), so a stale lock cannot block a
rerun. The file also holds the holder's PID, host and verb, only to name it in the message.
Where flock does not exist (Windows) there is no lock and a warning says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from fracture import diskspace
from fracture.errors import FractureError

log = logging.getLogger(__name__)


class RunLocked(FractureError):
    """Another live process is writing this run folder."""


def lock_path(run_dir) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def hold(run_dir, verb: str):
    """Hold the run folder's lock for the block (RunLocked at once if another process holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows
        log.warning("no file locking on this system: make sure no other process writes %s", run_dir)
        yield
        return

    path = lock_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise diskspace.storage_error(exc, path) or exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(f"{run_dir} is being written by {holder}: wait for it to finish (or stop it), then "
                            f"rerun; two processes writing one run folder would corrupt it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} ({verb})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # the lock file stays (removing it would race with the next taker)
    finally:
        handle.close()  # releases the lock
