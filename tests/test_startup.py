"""A quiet start-up: TensorFlow's start-up banner never reaches a user, real messages always do."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fracture import startup

REPO = Path(__file__).resolve().parents[1]
# absl's log-line prefix (severity, date, time, thread, file:line]) and its pre-init notice: any
# such line on stderr came from C++ logging, whatever its text; independent of startup.STARTUP_LINES.
ABSL_LINE = re.compile(r"^([IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |WARNING: All log messages before absl)", re.MULTILINE)


def python(*args, env=None, stdout=subprocess.PIPE):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: no help from the environment
    return subprocess.run([sys.executable, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                           env=env)


def test_filter_keeps_everything_but_the_exact_banner_lines():
    banner = textwrap.dedent("""\
        WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
        I0000 00:00:1796282741.416310    5756 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
        I0000 00:00:1796282741.451927    5756 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
        To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
        E0000 00:00:1700000000.000000    1234 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered
        W0000 00:00:1700000000.000000    1234 tf_trt.cc:38] TF-TRT Warning: Could not find TensorRT
        """)  # noqa: E501
    real = ("E0000 00:00:1796282741.5    5756 op_kernel.cc:1830] OP_REQUIRES failed: out of memory\n"
            "UserWarning: something real\n"
            "W0000 00:00:1796282741.6    5756 port.cc:153] oneDNN could not allocate scratchpad\n")
    assert startup.filter_startup_lines(banner + real) == real
    assert startup.filter_startup_lines(real + banner) == real


@pytest.fixture
def noisy_tensorflow(tmp_path):
    """A stand-in `tensorflow` package that, on import, writes TensorFlow's banner to descriptor 2
    from "C++" (os.write) around a real error line and a Python warning."""
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent("""\
        import os, warnings
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1.5    77 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
        os.write(2, b"E0000 00:00:1.6    77 some_op.cc:12] a real error from C++\\n")
        warnings.warn("a real warning from Python")
        os.write(2, b"I0000 00:00:1.7    77 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to x\\n")
        __version__ = "0.fake"
        """))
    return tmp_path / "fake"


def test_import_through_fracture_drops_the_banner_and_keeps_real_messages(noisy_tensorflow):
    probe = "import fracture, tensorflow, sys; print('imported', tensorflow.__version__)"
    env = {"PYTHONPATH": f"{noisy_tensorflow}{os.pathsep}{REPO}"}
    without = python("-c", "import tensorflow", env=env)
    assert "oneDNN custom operations" in without.stderr and "absl::InitializeLog" in without.stderr
    quiet = python("-c", probe, env=env)
    assert quiet.returncode == 0 and "imported 0.fake" in quiet.stdout
    assert "a real error from C++" in quiet.stderr and "UserWarning: a real warning from Python" in quiet.stderr
    for banner in ("absl::InitializeLog", "oneDNN", "cpu_feature_guard"):
        assert banner not in quiet.stderr, quiet.stderr


def test_an_import_error_inside_the_block_still_reaches_stderr(noisy_tensorflow):
    broken = noisy_tensorflow / "tensorflow" / "__init__.py"
    broken.write_text(broken.read_text() + "raise RuntimeError('broken install')\n")
    result = python("-c", "import fracture, tensorflow", env={"PYTHONPATH": f"{noisy_tensorflow}{os.pathsep}{REPO}"})
    assert result.returncode == 1
    assert "RuntimeError: broken install" in result.stderr and "a real error from C++" in result.stderr
    assert "oneDNN custom operations" not in result.stderr


@pytest.mark.slow
def test_a_real_verb_prints_no_startup_lines(trained_run, synth_root, tmp_path):
    """The real TensorFlow banner, seen without fracture, is absent from a verb that loads the model,
    and the progress of a decode redirected to a file is plain lines (no '\\r', no ANSI codes)."""
    if "tensorflow" not in (os.environ.get("KERAS_BACKEND") or "tensorflow"):
        pytest.skip("the banner comes from TensorFlow; this backend does not load it")
    control = python("-c", "import tensorflow")
    if not ABSL_LINE.search(control.stderr):
        pytest.skip("this TensorFlow build prints no start-up banner: nothing to quiet")
    images = tmp_path / "images"
    images.mkdir()
    one = next(synth_root.glob("valid/XR_HUMERUS/*/*/*.png"))
    for i in range(200):  # 200: where the decode step starts reporting progress
        (images / f"image{i:03d}.png").write_bytes(one.read_bytes())
    with open(tmp_path / "stdout.txt", "w") as out:
        result = python("-m", "fracture", "predict", str(images), "--run", str(trained_run), stdout=out)
    stdout = (tmp_path / "stdout.txt").read_text()
    assert result.returncode == 0, result.stderr
    assert not ABSL_LINE.search(result.stderr), result.stderr
    assert "\r" not in stdout and "\x1b" not in stdout and "\b" not in stdout
    assert "decoded 200/200 images" in stdout and stdout.count("decoded ") <= 4
    assert len(stdout.splitlines()) == 1 + 4 + 200  # the header, the progress lines and one row per image
