"""Atomic file writes: a reader, or a rerun after `kill -9`, sees the old file or the new one, never half.

    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics))
    with atomic_path(run_dir / "model.keras") as tmp:   # for libraries that write to a path
        model.save(tmp)                                  # (model.save, df.to_csv, fig.savefig)

The temporary file sits in the target's folder (os.replace is atomic only within one file system)
and keeps the target's suffixes, because Keras and matplotlib choose the format by extension.
It is a dot-file named `.<name>.partial-XXXX<suffixes>`, so `remove_partials` can sweep what a
killed process left, and globs such as `*/model.keras` never see it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one step.
    On any error (or a kill) `path` keeps its old content; the temporary file is removed on errors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}", suffix="".join(path.suffixes))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        fsync_file(tmp)  # the data reaches the disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
