"""A quiet first import of TensorFlow: its C++ start-up banner is dropped, every other line kept.

Importing TensorFlow writes, straight to file descriptor 2 from C++ (so neither
TF_CPP_MIN_LOG_LEVEL, nor Python's `warnings` or `logging`, nor sys.stderr can stop it):

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see slightly different ...
    I0000 00:00:... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available ...
    To enable the following instructions: AVX2 AVX512F ... rebuild TensorFlow with the appropriate ...

(and, on CUDA builds, "Unable to register cuDNN/cuFFT/cuBLAS factory" and "TF-TRT Warning").
They say nothing a user can act on. Turning oneDNN off (TF_ENABLE_ONEDNN_OPTS=0) would silence one
of them but change the numerics, so instead `quiet_startup()` points descriptor 2 at a temporary
file while TensorFlow loads, then writes back every line that is not one of these exact banners:
a real warning or error raised during the import still shows, only after the import.

`install()` (called by `import fracture`) routes the process's first `import tensorflow`, wherever
it comes from (Keras, the CLI, a notebook, the web app), through `quiet_startup()`. A process that
imports TensorFlow before fracture sees the banner as usual.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
import threading

# Whole lines TensorFlow prints while it loads; anything else passes through.
STARTUP_LINES = [re.compile(pattern) for pattern in (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    # absl's prefix: severity, date, time, thread id, source file:line]
    r"[IW]\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\..*",
    r"[IW]\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized .*",
    r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.",
    r"[IWE]\d{4} [\d:.]+ +\d+ cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register cu(DNN|FFT|BLAS) factory: .*",
    r"[IW]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\] TF-TRT Warning: Could not find TensorRT",
)]
QUIETED_MODULES = ("tensorflow",)  # Keras's TensorFlow backend, tf.data and TensorBoard load it

_lock = threading.RLock()
_depth = 0  # nested quiet_startup() blocks share the outermost redirection


def is_startup_line(line: str) -> bool:
    return any(pattern.fullmatch(line.rstrip("\r\n")) for pattern in STARTUP_LINES)


def filter_startup_lines(text: str) -> str:
    """`text` without TensorFlow's start-up lines (line endings of the kept lines unchanged)."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_startup_line(line))


@contextlib.contextmanager
def quiet_startup():
    """Inside the block, file descriptor 2 goes to a temporary file; on leaving, its lines that
    are not start-up banners go to the real descriptor 2, in their order (also on an exception)."""
    global _depth
    with _lock:
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a detached process): nothing to quiet
            yield
            return
        if _depth:  # an outer block already redirects
            os.close(saved)
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        _flush_python_stderr()
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
                _flush_python_stderr()  # what Python wrote during the block belongs in the capture
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = filter_startup_lines(captured.read().decode("utf-8", "replace"))
                if kept:
                    os.write(2, kept.encode("utf-8"))


def _flush_python_stderr() -> None:
    with contextlib.suppress(Exception):  # a closed or replaced sys.stderr is not our business
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """The real loader of a quieted module, with its code run inside quiet_startup()."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with quiet_startup():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code ... of the real one
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in QUIETED_MODULES or name in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None  # not installed: the usual ImportError follows
        spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


def install() -> None:
    """Route later first imports of QUIETED_MODULES through quiet_startup() (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
