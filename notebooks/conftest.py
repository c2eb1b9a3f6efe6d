"""What `pytest --nbval notebooks/` needs, so that the command works as typed (notebooks/README.md).

- The replay runs in the smoke profile: FRACTURE_NOTEBOOK_PROFILE=smoke for the kernels nbval
  starts (a value you set yourself wins).
- The kernel is this interpreter's (nbval's --nbval-current-env), not whatever the notebooks'
  kernelspec `python3` resolves to in the Jupyter installed.
- Start-up log lines of the backends are sanitized with notebooks/sanitize.cfg.
- A cell tagged `figure` fails when it produced no image (image/png from matplotlib, image/jpeg
  from `nb.picture`): nbval never compares images, so a figure that silently stopped rendering
  would otherwise pass.
"""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    if not (config.option.nbval or config.option.nbval_lax):
        return
    os.environ.setdefault("FRACTURE_NOTEBOOK_PROFILE", "smoke")  # inherited by the kernels nbval starts
    if config.option.nbval_sanitize_with is None:
        config.option.nbval_sanitize_with = str(HERE / "sanitize.cfg")
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    cell = getattr(item, "cell", None)
    if cell is not None and "figure" in cell.metadata.get("tags", []):
        shown = [o for o in item.test_outputs or [] if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
        assert shown, f"{item.name} is tagged 'figure' but showed no image"
    return result
