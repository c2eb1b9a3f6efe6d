"""What wrote a folder in runs_dir: a training run, a cross-validation summary or an ensemble.

cv and ensemble folders hold `kind.json` ({"kind": "cv", "command": "python -m fracture cv ..."}),
written before their work starts. It lets a hint name the command that finishes *that* folder,
and lets `train` refuse a folder of another kind instead of training an unrelated model into it.
Training runs have no kind.json (and older cv/ensemble folders neither).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from fracture import fileio
from fracture.errors import FractureError

KIND_FILE = "kind.json"


def write(folder, kind: str, command: list[str], **details) -> None:
    fileio.atomic_write_text(Path(folder) / KIND_FILE, json.dumps(
        {"kind": kind, "command": shlex.join(command), **details}, indent=2))


def read(folder) -> dict:
    """The folder's kind.json, or {} (a training run, or unreadable: it only drives messages)."""
    try:
        info = json.loads((Path(folder) / KIND_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def resume_command(folder) -> str | None:
    return read(folder).get("command")


def refuse_other_kind(folder, verb: str) -> None:
    info = read(folder)
    if info.get("kind") and info["kind"] != verb:
        raise FractureError(f"{folder} is a {info['kind']} folder, not a {verb} run: `{verb}` would write an unrelated "
                            f"model into it. Pick another run_name; to finish that {info['kind']}, run "
                            f"`{info.get('command', '...')}`")
