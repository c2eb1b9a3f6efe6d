"""Atomic file writes: a reader, or a rerun after `kill -9`, sees the old file or the new one, never half.

    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics))
    with atomic_path(run_dir / "model.keras") as tmp:   # for libraries that write to a path
        model.save(tmp)                                  # (model.save, df.to_csv, fig.savefig)

The temporary file sits in the target's folder (os.replace is atomic only within one file system)
and keeps the target's suffixes, because Keras and matplotlib choose the format by extension.
It is a dot-file named `.<name>.partial-XXXX<suffixes>`, so `remove_partials` can sweep what a
killed process left, and globs such as `*/model.keras` never see it.

The new file gets the mode an ordinary `open(path, "w")` would give it (the old file's mode, or
0666 less the umask): mkstemp's private 0600 would hide a shared run from the rest of the lab.
A full disk, a read-only folder or a denied permission becomes one `diskspace.StorageError`
naming the file (the temporary file is removed, the old file stays).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from fracture import diskspace

PARTIAL = ".partial-"


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (a power cut after os.replace could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable enough for us
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (/proc on Linux):
    os.umask can only be read by setting it, which races with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(path) -> int:
    """The permission bits `open(path, "w")` would leave: the existing file's, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one step.
    On any error (or a kill) `path` keeps its old content; the temporary file is removed on errors.
    No space, a read-only folder or a denied permission raise `diskspace.StorageError` naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}", suffix="".join(path.suffixes))
        os.close(fd)
        tmp = Path(tmp)
        os.chmod(tmp, ordinary_mode(path))
        yield tmp
        fsync_file(tmp)  # the data reaches the disk before the name points at it
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        storage = diskspace.storage_error(exc, path)
        if storage is not None:
            raise storage from exc
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_copy(source, target) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def remove_partials(folder) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` (not recursive); returns them."""
    found = [p for p in Path(folder).glob(f".*{PARTIAL}*") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found
