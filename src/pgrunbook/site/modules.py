"""The README's table of areas and modules, generated from the packages themselves.

Each area's ``__init__`` docstring lists its modules, one line each
(``* ``name``: what it holds``). ``module_table`` turns those lines into the
README's table, and a unit test checks that the README holds exactly that
table and that every module file is listed: the table cannot drift from the
code. ``python -m pgrunbook.site.modules --write README.md`` rewrites it.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

AREAS = ("core", "infra", "store", "backup", "restore", "offsite", "pitr", "monitoring", "site", "lab")
BEGIN = "<!-- pgrunbook:modules begin (python -m pgrunbook.site.modules --write README.md) -->"
END = "<!-- pgrunbook:modules end -->"
ENTRY = re.compile(r"^\* ``(?P<name>[a-z_]+)``: (?P<text>.+)$")


def listed_modules(area: str) -> list[tuple[str, str]]:
    """(module, description) as the area's ``__init__`` docstring lists them."""
    doc = importlib.import_module(f"pgrunbook.{area}").__doc__ or ""
    found, current = [], None
    for line in doc.splitlines():
        match = ENTRY.match(line.strip())
        if match:
            current = [match.group("name"), match.group("text")]
            found.append(current)
        elif current is not None and line.startswith("  ") and line.strip():
            current[1] += " " + line.strip()  # a wrapped description
        else:
            current = None
    return [(name, text) for name, text in found]


def module_files(area: str) -> list[str]:
    folder = Path(importlib.import_module(f"pgrunbook.{area}").__file__ or "").parent
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def summary(area: str) -> str:
    doc = importlib.import_module(f"pgrunbook.{area}").__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def module_table() -> str:
    rows = ["| 領域 (area) | モジュール | 内容 |", "|---|---|---|"]
    for area in AREAS:
        rows.append(f"| **`{area}/`** | | {summary(area)} |")
        for name, text in listed_modules(area):
            rows.append(f"| | `{name}` | {text.replace('|', '/')} |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    """The README with the block between the markers replaced by the current table."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + module_table() + "\n" + readme[end:]


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        target = Path(sys.argv[2])
        target.write_text(with_table(target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(module_table())
