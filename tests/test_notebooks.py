"""The notebooks' stored outputs must be current: executed top to bottom in one clean kernel, from
the cells that tools/build_notebooks.py defines, thin (no def/class), with a parameters cell first.
`make notebooks` re-executes and re-saves them; `pytest --nbval notebooks` then replays them."""

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["1_train.ipynb", "2_load.ipynb", "3_visualize.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_come_from_one_clean_top_to_bottom_run(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{path.name}: unexecuted cells; run `make notebooks`"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: executed out of order; run `make notebooks`"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored outputs contain an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_source_cells(path):
    expected = {"1_train.ipynb": "TRAIN", "2_load.ipynb": "LOAD", "3_visualize.ipynb": "VISUALIZE"}[path.name]
    source = [c.source for c in getattr(builder(), expected)]
    stored = [c.source for c in nbformat.read(path, as_version=4).cells]
    assert stored == source, f"{path.name} differs from tools/build_notebooks.py; run `make notebooks`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    for cell in code:
        tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{path.name}: logic belongs in the fracture package, not in a cell"
    # narrated: opens with markdown, and every step (at most two code cells) follows a markdown cell
    kinds = "".join("m" if c.cell_type == "markdown" else "c" for c in nb.cells)
    assert kinds.startswith("m") and "ccc" not in kinds, kinds
