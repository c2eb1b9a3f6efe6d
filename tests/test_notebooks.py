"""The notebooks: each .ipynb is paired with a jupytext percent .py (the reviewed source) and the
two hold the same cells; the cells are thin (no def/class) and narrated; the first cell holds the
papermill parameters as separate variables; the stored outputs come from one clean top-to-bottom
run and hold at most 1.5 MB of outputs; and papermill's parameters land where they win. Executed
afresh, every cell tagged `figure` must show an image: `pytest --nbval notebooks` checks that.

`make notebooks` re-executes and saves them; `pytest --nbval notebooks/` replays them (see
notebooks/README.md and notebooks/conftest.py)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
IMAGE_TYPES = ("image/png", "image/jpeg")  # matplotlib figures are PNG; nb.picture's screen copies JPEG
MAX_OUTPUT_BYTES = 1_500_000  # per notebook: what every clone stores, and what GitHub's viewer renders
PARAMETERS = {  # the variables each notebook's parameters cell must define, papermill-style
    "1_train.ipynb": {"profile", "config_file", "data_dir", "image_size", "epochs", "batch_size", "run_name",
                      "reuse", "verbose"},
    "2_load.ipynb": {"profile", "run"},
    "3_visualize.ipynb": {"profile", "run", "layers", "methods", "images", "sanity_methods", "sanity_layers",
                          "sanity_images", "localization_layers", "localization_images"},
}


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def figure_cells_without_png(nb) -> list[int]:
    """Indices (among code cells) of the cells tagged `figure` whose outputs hold no image (PNG or JPEG)."""
    return [i for i, cell in enumerate(code_cells(nb)) if "figure" in cell.metadata.get("tags", [])
            and not any(kind in out.get("data", {}) for out in cell.outputs for kind in IMAGE_TYPES)]


def output_bytes(nb) -> int:
    """Bytes the stored outputs take in the .ipynb's JSON (images are base64 text there)."""
    import json

    return sum(len(json.dumps(out)) for cell in code_cells(nb) for out in cell.outputs)


def python_of(cell) -> str:
    """A cell's source as Python: IPython magics (`%matplotlib inline`) left out."""
    return "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))


def test_each_notebook_has_its_percent_source():
    assert [p.name for p in NOTEBOOKS] == ["1_train.ipynb", "2_load.ipynb", "3_visualize.ipynb"]
    for path in NOTEBOOKS:
        assert path.with_suffix(".py").is_file(), f"{path.name} has no paired {path.stem}.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_and_its_py_hold_the_same_cells(path):
    """Read both sides independently: nbformat for the .ipynb, jupytext for the .py."""
    stored = nbformat.read(path, as_version=4)
    source = jupytext.read(path.with_suffix(".py"))
    pairs = list(zip(stored.cells, source.cells))
    assert len(stored.cells) == len(source.cells), (
        f"{path.name} has {len(stored.cells)} cells, {path.stem}.py {len(source.cells)}; "
        f"run `jupytext --sync notebooks/{path.stem}.py` (or save it in Jupyter)")
    for i, (a, b) in enumerate(pairs):
        assert (a.cell_type, a.source, a.metadata.get("tags", [])) == (b.cell_type, b.source, b.metadata.get("tags", [])), (
            f"{path.name} cell {i} differs from {path.stem}.py; run `jupytext --sync notebooks/{path.stem}.py`")
    assert stored.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_come_from_one_clean_top_to_bottom_run(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{path.name}: unexecuted cells; run `make notebooks`"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: executed out of order; run `make notebooks`"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored outputs contain an error"
    assert not figure_cells_without_png(nbformat.read(path, as_version=4)), f"{path.name}: a figure cell stored no image"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_stay_small(path):
    """Pictures at screen resolution (nb.picture, figures at 100 dpi): a notebook's outputs at most
    1.5 MB, measured as the JSON text they take in the file."""
    size = output_bytes(nbformat.read(path, as_version=4))
    assert size <= MAX_OUTPUT_BYTES, (
        f"{path.name} stores {size / 1e6:.1f} MB of outputs (limit {MAX_OUTPUT_BYTES / 1e6:.1f} MB): show pictures "
        "with nb.picture, fewer panels, or nothing that only repeats layer_outputs/")


def test_the_size_check_counts_base64_images():
    image = nbformat.v4.new_output("display_data", data={"image/png": "A" * 2_000_000})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[image])])
    assert 2_000_000 < output_bytes(nb) < 2_000_200


def test_picture_is_a_screen_size_jpeg_and_leaves_the_file(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from fracture import notebook as nb

    path = tmp_path / "panel.png"
    pixels = np.random.default_rng(0).integers(0, 255, (300, 2400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    before = path.read_bytes()
    shown = nb.picture(path, width=1000)
    decoded = Image.open(io.BytesIO(shown.data))
    assert (decoded.format, decoded.size) == ("JPEG", (1000, 125)) and path.read_bytes() == before
    assert nb.picture(path, width=4000).data[:3] == b"\xff\xd8\xff"  # never enlarged, still a JPEG
    assert Image.open(io.BytesIO(nb.picture(path, width=4000).data)).size == (2400, 300)


def test_relative_paths_to_the_data_folder(monkeypatch):
    import pandas as pd

    from fracture import notebook as nb

    monkeypatch.chdir(ROOT / "notebooks")
    frame = pd.DataFrame({"path": ["data/d/MURA-v1.1/valid/a.png", str(ROOT / "data/d/MURA-v1.1/train/b.png"),
                                   "/elsewhere/c.png"]})
    assert nb.relative_paths(frame)["path"].tolist() == [
        "data/d/MURA-v1.1/valid/a.png", "data/d/MURA-v1.1/train/b.png", "/elsewhere/c.png"]
    for to in ("data/d/MURA-v1.1", str(ROOT / "data/d/MURA-v1.1")):
        assert nb.relative_paths(frame, to=to)["path"].tolist() == ["valid/a.png", "train/b.png", "/elsewhere/c.png"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_narrated(path):
    nb = nbformat.read(path, as_version=4)
    for cell in code_cells(nb):
        tree = ast.parse(python_of(cell))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{path.name}: logic belongs in the fracture package, not in a cell:\n{cell.source}"
    # opens with markdown, and every step (at most two code cells) follows a markdown cell
    kinds = "".join("m" if c.cell_type == "markdown" else "c" for c in nb.cells)
    assert kinds.startswith("m") and "ccc" not in kinds, kinds


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_holds_separate_parameters(path):
    first = code_cells(nbformat.read(path, as_version=4))[0]
    assert "parameters" in first.metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    tree = ast.parse(first.source)
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
               for node in tree.body), "the parameters cell holds only `name = value` lines (papermill -p name value)"
    names = {node.targets[0].id for node in tree.body}
    assert names == PARAMETERS[path.name]
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body}
    assert values["profile"] == "full", "stored notebooks show the full profile; the smoke one is for checks"


def test_the_figure_check_fails_on_a_figure_that_did_not_render():
    """The check behind the executing test and notebooks/conftest.py, on hand-made outputs: a figure
    cell that printed only `<Figure ...>` (what a notebook shows when matplotlib's Agg backend is
    forced or `%matplotlib inline` is missing) is caught; one with image/png or image/jpeg is not."""
    text_only = nbformat.v4.new_output("execute_result", data={"text/plain": "<Figure size 640x480 with 1 Axes>"})
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    jpeg = nbformat.v4.new_output("display_data", data={"image/jpeg": "/9j/4AAQ", "text/plain": "<Image>"})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("fig", metadata={"tags": ["figure"]}, outputs=[text_only]),
        nbformat.v4.new_code_cell("fig", metadata={"tags": ["figure"]}, outputs=[png]),
        nbformat.v4.new_code_cell("1 + 1", outputs=[]),
        nbformat.v4.new_code_cell("pic", metadata={"tags": ["figure"]}, outputs=[jpeg]),
    ])
    assert figure_cells_without_png(nb) == [0]


def test_papermill_injects_the_profile_right_after_the_parameters_cell(tmp_path):
    """`papermill -p profile smoke` (`make notebooks-smoke`) puts its cell right after each
    notebook's `parameters` cell, so the profile it sets wins. Only the injection is checked here:
    running all three notebooks top to bottom in the smoke profile, with every `figure` cell held to
    showing an image, is what `pytest --nbval notebooks` does in `make test` (notebooks/conftest.py),
    and a second full run here would double the suite's longest step."""
    env = {key: value for key, value in os.environ.items() if key != "FRACTURE_NOTEBOOK_PROFILE"}
    for path in NOTEBOOKS:
        out = tmp_path / path.name
        done = subprocess.run([sys.executable, "-m", "papermill", "--prepare-only", "--kernel", "python3",
                               "-p", "profile", "smoke", "--no-progress-bar", str(path), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{path.name} failed:\n{done.stderr[-3000:]}"
        cells = code_cells(nbformat.read(out, as_version=4))
        assert "parameters" in cells[0].metadata.get("tags", []), path.name
        assert "injected-parameters" in cells[1].metadata.get("tags", []), path.name
        assert 'profile = "smoke"' in cells[1].source, path.name


def test_profile_parameter_and_environment_variable(monkeypatch):
    from fracture import notebook as nb
    from fracture.errors import ConfigError

    monkeypatch.delenv("FRACTURE_NOTEBOOK_PROFILE", raising=False)
    assert (nb.profile("full"), nb.profile("Smoke"), nb.profile("")) == ("full", "smoke", "full")
    monkeypatch.setenv("FRACTURE_NOTEBOOK_PROFILE", "smoke")  # the replay's fallback wins over the cell
    assert nb.profile("full") == "smoke"
    monkeypatch.setenv("FRACTURE_NOTEBOOK_PROFILE", "fast")
    with pytest.raises(ConfigError, match="profile must be one of full, smoke"):
        nb.profile("full")


def test_config_resolves_paths_against_the_repo_root_from_notebooks(monkeypatch):
    from fracture import notebook as nb

    monkeypatch.delenv("FRACTURE_NOTEBOOK_PROFILE", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")  # where Jupyter starts the kernel
    cfg = nb.config("full", "configs/demo.yaml", epochs=3, run_name="", image_size=None)
    assert cfg.data_dir == str(ROOT / "data/synthetic/MURA-v1.1") and cfg.runs_dir == str(ROOT / "saved_models")
    in_file = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())
    assert cfg.epochs == 3 and cfg.run_name == "" and cfg.image_size == in_file["image_size"]  # None and "" keep the file's value


def test_reusable_run_is_the_newest_complete_run_of_the_same_recipe(tmp_path):
    import time

    from fracture import config as config_lib
    from fracture import notebook as nb

    base = config_lib.load(overrides={"runs_dir": str(tmp_path), "data_dir": str(tmp_path / "data")})

    def fake_run(name, complete=True, **changes):
        folder = tmp_path / name
        folder.mkdir()
        config_lib.update(base, {"run_name": name, **changes}).to_yaml(folder / "config.yaml")
        (folder / "model.keras").write_bytes(b"")
        if complete:
            (folder / "complete.json").write_text("{}")
        time.sleep(0.02)  # distinct completion times
        return folder

    fake_run("old")
    newest = fake_run("new", mlflow=False, verbose="2")  # bookkeeping keys do not make another recipe
    fake_run("other", epochs=3)
    fake_run("unfinished", complete=False)
    assert nb.reusable_run(base) == newest
    assert nb.reusable_run(config_lib.update(base, {"image_size": 64})) is None
