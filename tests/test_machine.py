"""The machine record against sources it does not read itself: lscpu, platform, git, the modules."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fracture import machine

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("lscpu") is None or not Path("/proc/cpuinfo").is_file(), reason="needs lscpu")
def test_cpu_model_from_cpuinfo_agrees_with_lscpu():
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")]
    if not names:
        pytest.skip("lscpu names no model here")
    assert machine.cpu_model() == names[0]


def test_cpuinfo_parse_reads_the_first_processor_only():
    text = ("processor\t: 0\nmodel name\t: CPU A @ 2.0GHz\nflags\t\t: fpu avx2 fma\n\n"
            "processor\t: 1\nmodel name\t: CPU B\nflags\t\t: fpu\n")
    fields = machine.cpuinfo_fields(text)
    assert fields["model name"] == "CPU A @ 2.0GHz" and fields["flags"].split() == ["fpu", "avx2", "fma"]


def test_record_matches_platform_git_and_the_loaded_modules():
    import keras

    record = machine.describe()
    json.dumps(record)  # plain JSON for metrics.json
    assert record["cores"] == len(os.sched_getaffinity(0)) and record["platform"] == platform.platform()
    assert record["backend"] == keras.backend.backend()
    assert record["versions"]["python"] == platform.python_version()
    assert record["versions"]["keras"] == keras.__version__
    for name in ("tensorflow", "jax", "torch"):
        if name in sys.modules:
            assert record["versions"][name] == sys.modules[name].__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    assert record["git_commit"] == head.stdout.strip()
    changed = subprocess.run(["git", "diff", "HEAD", "--quiet"], cwd=REPO).returncode
    assert record["git_dirty"] is bool(changed)


def test_versions_of_frameworks_not_loaded_come_without_importing_them():
    """In a fresh process that imported no framework: installed versions listed, none imported."""
    probe = ("import json, sys; from fracture import machine; record = machine.describe(); "
             "print(json.dumps([record['versions'], sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') "
             "if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    versions, loaded = json.loads(out)
    assert loaded == []
    import keras

    assert versions["keras"] == keras.__version__
    for name in ("tensorflow", "jax", "torch"):
        if name in sys.modules:
            assert versions[name] == sys.modules[name].__version__, name


def test_tags_are_flat_strings():
    record = {"cpu_model": "X", "cpu_isa": ["avx2", "fma"], "cores": 2, "git_dirty": None,
              "versions": {"keras": "3.0"}}
    assert machine.as_tags(record) == {"machine.cpu_model": "X", "machine.cpu_isa": "avx2,fma", "machine.cores": "2",
                                       "machine.git_dirty": "unknown", "machine.version.keras": "3.0"}


def test_train_writes_the_record_into_metrics_json(trained_alone):
    """metrics.json as train wrote it names this machine and this checkout."""
    stored = trained_alone["metrics"]["machine"]
    assert stored["cpu_model"] == machine.cpu_model() and stored["cores"] == machine.usable_cores()
    assert stored["git_commit"] == machine.git_commit()[0]
    import keras

    assert stored["backend"] == keras.backend.backend() and stored["versions"]["keras"] == keras.__version__
