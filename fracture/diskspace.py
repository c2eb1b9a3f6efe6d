"""Full disks, read-only folders and denied permissions: one clear error instead of a traceback.

    require_free(run_dir, needed, "the epoch-3 checkpoint")  # StorageError before a write that cannot fit
    raise storage_error(exc, path) or exc                     # OSError ENOSPC/EROFS/EACCES -> StorageError

Checking space *before* a large write matters beyond the message: h5py (Keras .h5 and .keras
files) can crash the whole process when the disk fills in the middle of a write, so the
checkpoints are only written when they fit (fracture/resume.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from fracture.errors import FractureError

# errno -> what the user can do about it
ADVICE = {
    errno.ENOSPC: "free some space (or point runs_dir / cache_dir to a larger disk) and rerun the same command: "
                  "a training run resumes after its last committed epoch",
    errno.EDQUOT: "your disk quota is used up: free some space and rerun the same command",
    errno.EROFS: "the folder is on a read-only file system: choose a writable folder (runs_dir=..., cache_dir=...)",
    errno.EACCES: "you may not write there: choose a folder you own (runs_dir=..., cache_dir=...) or ask its owner",
    errno.EPERM: "you may not write there: choose a folder you own (runs_dir=..., cache_dir=...) or ask its owner",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another folder",
}
# A checkpoint needs its own size again while the previous one is still kept (fracture/resume.py
# keeps two commits), plus room for the file system's own overhead.
MARGIN = 1.2


class StorageError(FractureError):
    """A run file that could not be written: no space, a read-only folder, no permission."""


def human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1024 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TB"


def _errno_of(exc: BaseException) -> int | None:
    """The errno of `exc` or of an OSError it wraps (h5py and Keras re-raise with the cause attached)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ADVICE:
            return exc.errno
        text = str(exc)
        for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            if f"errno = {code}," in text or f"[Errno {code}]" in text:  # h5py's wording
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def storage_error(exc: BaseException, path, needed: int | None = None) -> StorageError | None:
    """A StorageError naming `path` for an out-of-space or permission error, else None."""
    if isinstance(exc, StorageError):
        return exc
    code = _errno_of(exc)
    if code is None:
        return None
    need = f" ({human(needed)} needed, {human(free_bytes(path))} free)" if needed else ""
    return StorageError(f"cannot write {path}: {os.strerror(code)}{need}. {ADVICE[code]}")


def free_bytes(path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    try:
        return shutil.disk_usage(existing_parent(path)).free
    except OSError:
        return 0


def existing_parent(path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_free(path, needed: int, what: str) -> None:
    """StorageError unless the disk holding `path` has room for `needed` bytes (with a margin)."""
    free = free_bytes(path)
    if free < needed * MARGIN:
        raise StorageError(f"not enough space for {what} in {existing_parent(path)}: {human(needed)} needed, "
                           f"{human(free)} free. {ADVICE[errno.ENOSPC]}")


def check_writable_folder(folder, key: str) -> None:
    """Before any heavy work: `folder` (a config key's value) can be created and written to.

    Walks up to the nearest existing parent: a file there, a read-only file system or a folder
    without write permission is a StorageError naming the key, in milliseconds, not after the model
    is built."""
    folder = Path(folder)
    parent = existing_parent(folder)
    if not parent.is_dir():
        raise StorageError(f"{key}={folder} cannot be created: {parent} is a file, not a folder. "
                           f"{ADVICE[errno.ENOTDIR]}")
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".fracture-write-test-"):
            pass
    except OSError as exc:
        code = _errno_of(exc)
        advice = ADVICE.get(code, "choose a writable folder")
        raise StorageError(f"{key}={folder} is not writable ({parent}: {exc.strerror or exc}). {advice}") from exc


def model_bytes(model) -> int:
    """Bytes of the model's weights (each checkpoint holds them once, the optimizer state once or twice more)."""
    import math

    return int(sum(math.prod(int(d) for d in v.shape) * 4 for v in model.weights))
