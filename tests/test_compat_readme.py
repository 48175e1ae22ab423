"""README.md's compatibility table is the one scripts/bench/compat_table.py makes of
bench/compat.json (regenerate it with `python scripts/bench/compat_table.py --readme`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from compat_table import README_END, README_START, readme_table, rewrite_readme  # noqa: E402


def test_readme_table_is_compat_json():
    text = (ROOT / "README.md").read_text()
    region = text[text.index(README_START) + len(README_START):text.index(README_END)]
    expected = readme_table(json.loads((ROOT / "bench" / "compat.json").read_text()))
    assert region.strip() == expected, "run: python scripts/bench/compat_table.py --readme"


def test_rewrite_replaces_only_the_region(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold table\n{README_END}\nafter\n")
    rewrite_readme("| new |", readme)
    assert readme.read_text() == f"before\n{README_START}\n| new |\n{README_END}\nafter\n"
