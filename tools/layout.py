"""Rewrite README.md's module table from the package (tests/test_layout.py checks they agree).

Every module of fracture/ gets one row: its path and the first line of its docstring, which is
therefore written as a one-line summary (PEP 257). The table sits between the `<!-- layout -->`
and `<!-- /layout -->` lines of README.md.

    .venv/bin/python tools/layout.py
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- layout -->", "<!-- /layout -->"


def summaries() -> dict[str, str]:
    """'fracture/cam/draw.py' -> the first line of its docstring, for every module, sorted by path."""
    found = {}
    for path in sorted((ROOT / "fracture").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found[path.relative_to(ROOT).as_posix()] = doc.split("\n")[0].strip()
    return found


def table() -> str:
    rows = ["| module | what it holds |", "|---|---|"]
    rows += [f"| [`{path}`]({path}) | {line.replace('|', '&#124;')} |" for path, line in summaries().items()]
    return "\n".join(rows)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = re.compile(re.escape(START) + r"\n(?:.*\n)*?" + re.escape(END))
    if not block.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    readme.write_text(block.sub(lambda _: f"{START}\n{table()}\n{END}", text, count=1), encoding="utf-8")
    print(f"rewrote the module table in {readme}")


if __name__ == "__main__":
    main()
