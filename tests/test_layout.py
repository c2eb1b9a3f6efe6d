"""README's module table against the package itself (the table is written by tools/layout.py;
this reads both sides on its own): every module of fracture/ has exactly one row, holding the
first line of its docstring, and that first line is a one-line summary (PEP 257)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| \[`(?P<path>fracture/[^`]+)`\]\((?P=path)\) \| (?P<summary>.*) \|$")


def readme_rows() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- layout -->\n", 1)[1].split("\n<!-- /layout -->", 1)[0]
    rows = [ROW.match(line) for line in block.splitlines()[2:]]  # after the header and the rule
    assert all(rows), "README's layout block holds a row that is not `| [`path`](path) | summary |`"
    return [(m["path"], m["summary"].replace("&#124;", "|")) for m in rows]


def module_docstrings() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
            for p in (ROOT / "fracture").rglob("*.py")}


def test_every_module_has_one_row_with_its_docstrings_first_line():
    rows = readme_rows()
    docs = module_docstrings()
    paths = [path for path, _ in rows]
    assert len(paths) == len(set(paths)), "a module is listed twice"
    assert set(paths) == set(docs), (
        f"README's layout lacks {sorted(set(docs) - set(paths))} and lists {sorted(set(paths) - set(docs))} "
        "that do not exist: run tools/layout.py")
    stale = [path for path, summary in rows if summary != docs[path].split("\n")[0].strip()]
    assert not stale, f"README's layout is stale for {stale}: run tools/layout.py"


def test_each_module_docstring_opens_with_a_one_line_summary():
    for path, doc in module_docstrings().items():
        lines = doc.split("\n")
        assert lines[0].strip(), f"{path} has no docstring"
        assert len(lines) == 1 or not lines[1].strip(), (
            f"{path}: the docstring's first line runs on; make it a summary followed by a blank line")
        assert len(lines[0]) <= 110, f"{path}: summary line longer than 110 characters"
