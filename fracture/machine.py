"""Which machine and software made a number: CPU model, cores, backend, versions, git commit.

    describe() -> {"cpu_model": "Intel(R) Xeon(R) ...", "cores": 2, "backend": "tensorflow", ...}

Stored in every run's metrics.json (key "machine") and as MLflow tags (`machine.*`), and printed by
the benchmarks: the same recipe lands on slightly different numbers on another CPU (oneDNN and XLA
choose kernels by instruction set; docs/reproducibility.md), so a number without its machine
cannot be checked. Nothing here imports a deep-learning framework: versions come from the loaded
module when there is one, else from the installed package's metadata.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

# module -> the distributions that may provide it (the first installed one answers)
FRAMEWORKS = {"keras": ("keras",), "tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
              "jaxlib": ("jaxlib",), "torch": ("torch",)}
# Instruction-set extensions that change which kernels oneDNN/XLA pick (and so the last bits of a sum).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


def cpuinfo_fields(text: str | None = None) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """'Intel(R) Xeon(R) Processor', 'AMD EPYC 7B13' ...: /proc/cpuinfo, else lscpu, else platform."""
    name = cpuinfo_fields().get("model name")
    if not name:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
            name = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                         if line.startswith("Model name:")), "")
        except (OSError, subprocess.SubprocessError):
            name = ""
    if not name and sys.platform == "darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
    return name or platform.processor() or "unknown"


def cpu_isa() -> list[str]:
    """Which of ISA_FLAGS this CPU has (from /proc/cpuinfo's flags; [] where not readable)."""
    flags = set(cpuinfo_fields().get("flags", "").split())
    return [flag for flag in ISA_FLAGS if flag in flags]


def usable_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def keras_backend() -> str:
    """The loaded Keras's backend; without importing Keras, the one it would load (KERAS_BACKEND,
    else keras.json's "backend", else Keras's default)."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return json.loads((home / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def versions() -> dict[str, str]:
    """{"python": ..., "keras": ..., "tensorflow": ...}: the frameworks that are installed."""
    out = {"python": platform.python_version()}
    for module, distributions in FRAMEWORKS.items():
        loaded = getattr(sys.modules.get(module), "__version__", None)
        version = loaded if isinstance(loaded, str) else _installed_version(distributions)
        if version:
            out[module] = version
    return out


def _installed_version(distributions) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit() -> tuple[str, bool | None]:
    """(HEAD commit of the checkout holding this package, whether tracked files differ) or ("unknown", None)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(status.strip())


def describe() -> dict:
    """The machine record of metrics.json: plain JSON values."""
    commit, dirty = git_commit()
    return {
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "backend": keras_backend(),
        "versions": versions(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def as_tags(record: dict) -> dict[str, str]:
    """describe()'s record as flat MLflow tags: machine.cpu_model, machine.version.keras, ..."""
    tags = {}
    for key, value in record.items():
        if isinstance(value, dict):
            tags.update({f"machine.version.{name}": str(v) for name, v in value.items()})
        elif isinstance(value, list):
            tags[f"machine.{key}"] = ",".join(value)
        else:
            tags[f"machine.{key}"] = "unknown" if value is None else str(value).lower() if isinstance(value, bool) \
                else str(value)
    return tags


def one_line(record: dict | None = None) -> str:
    """'Intel(R) Xeon(R) Processor (2 cores; avx2,avx512f), tensorflow, keras 3.x, ...' for benchmark output."""
    record = record or describe()
    isa = f"; {','.join(record['cpu_isa'])}" if record["cpu_isa"] else ""
    names = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    commit = record["git_commit"][:10] + ("+dirty" if record["git_dirty"] else "")
    return f"{record['cpu_model']} ({record['cores']} cores{isa}), backend {record['backend']}, {names}, commit {commit}"
