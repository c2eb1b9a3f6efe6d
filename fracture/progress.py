"""Progress for long loops: a live bar where someone watches, a few plain lines where output is kept.

A bar redraws itself with carriage returns and ANSI colours: right in a terminal or a notebook,
but a log file or CI output would keep every redraw (kilobytes of escape codes before the results).
"""

from __future__ import annotations

import sys


def watching() -> bool:
    """Whether stdout is a live display: a terminal, or a Jupyter kernel (which renders '\\r')."""
    return bool(getattr(sys.stdout, "isatty", None) and sys.stdout.isatty()) or "ipykernel" in sys.modules


class LineProgress:
    """The redirected-output stand-in for keras.utils.Progbar: one plain line at each quarter."""

    def __init__(self, total: int, unit_name: str = "step", what: str = "done", lines: int = 4):
        self.total, self.unit_name, self.what = total, unit_name, what
        self.marks = sorted({max(1, round(total * k / lines)) for k in range(1, lines + 1)})

    def update(self, current: int) -> None:
        if self.marks and current >= self.marks[0]:
            while self.marks and current >= self.marks[0]:
                self.marks.pop(0)
            print(f"{self.what} {current}/{self.total} {self.unit_name}s", flush=True)


def bar(total: int, unit_name: str = "step", what: str = "done"):
    """keras.utils.Progbar on a live display, else LineProgress; both have .update(current)."""
    if watching():
        from keras.utils import Progbar

        return Progbar(total, unit_name=unit_name)
    return LineProgress(total, unit_name, what)
