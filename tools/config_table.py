"""Rewrite the config-key table of docs/config.md from fracture/config.py (tests/test_config.py
checks they agree).

    .venv/bin/python tools/config_table.py
"""

import re
from pathlib import Path

from fracture.config import markdown_table

page = Path(__file__).resolve().parent.parent / "docs" / "config.md"
text = page.read_text()
table = re.compile(r"^\| key \| default \| meaning \|\n(?:^\|.*\n)+", re.MULTILINE)
if not table.search(text):
    raise SystemExit(f"{page} has no '| key | default | meaning |' table")
page.write_text(table.sub(lambda _: markdown_table(), text, count=1))
print(f"rewrote the config table in {page}")
