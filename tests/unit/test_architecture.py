"""The structure a newcomer reads is the structure the code has.

The import rules themselves are import-linter's contracts (pyproject.toml, run by
.ci/run); here: what import-linter cannot see.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT
from pgrunbook.site import modules

PACKAGE = ROOT / "src" / "pgrunbook"
# optional extras: imported where they are used, so that the kit runs without them
OPTIONAL_EXTRAS = {"boto3", "botocore", "pyrage", "prometheus_client", "markdown_it", "mkdocs", "material"}


def function_level_imports() -> list[tuple[Path, int, str, str]]:
    """(file, line, imported module, the source line) of every import inside a function."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for function in ast.walk(ast.parse(text)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    found.append((path, node.lineno, name, lines[node.lineno - 1]))
    return found


def test_a_function_level_import_is_for_start_up_time_or_an_optional_extra():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {source.strip()}"
             for path, line, name, source in function_level_imports()
             if name.split(".")[0] not in OPTIONAL_EXTRAS and "start-up" not in source]
    assert not wrong, "hoist these imports to the top, or say '# start-up time: ...' on the line:\n" + \
        "\n".join(wrong)


def test_every_module_of_an_area_is_listed_once_in_its_init():
    for area in modules.AREAS:
        listed = [name for name, _ in modules.listed_modules(area)]
        assert len(listed) == len(set(listed)), f"{area}: listed twice"
        assert sorted(listed) == modules.module_files(area), \
            f"pgrunbook/{area}/__init__.py lists {sorted(listed)}, the folder has {modules.module_files(area)}"


def test_every_area_folder_is_an_area():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert folders == sorted(modules.AREAS)


def test_the_readme_holds_the_generated_module_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert modules.with_table(readme) == readme, \
        "README.md の表が古い: python -m pgrunbook.site.modules --write README.md"


def test_tasks_are_thin_and_their_names_are_the_runbooks_steps():
    """tasks.py assembles; each area file of tasks_by_area/ stays small."""
    assert len((ROOT / "tasks.py").read_text(encoding="utf-8").splitlines()) < 60
    for path in sorted((ROOT / "tasks_by_area").glob("*.py")):
        assert len(path.read_text(encoding="utf-8").splitlines()) < 600, path.name


def test_no_test_file_imports_another():
    tests = ROOT / "tests"
    offenders = []
    for path in tests.rglob("*.py"):  # test files, helpers and conftest files alike
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*(from|import) (test_\w+|conftest)\b", line):
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, "share through tests/helpers, not a test or conftest file:\n" + "\n".join(offenders)


def functions_with_too_many_parameters(limit: int = 6) -> list[str]:
    """'file:line name (n)' of every function under src/pgrunbook taking more than ``limit`` parameters.

    Positional, positional-only and keyword-only parameters count; self and cls (the first of a method)
    and *args / **kwargs do not.
    """
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            names = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
            count = len([name for name in names if name not in ("self", "cls")])
            if count > limit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    return found


def test_no_function_takes_more_than_six_parameters():
    """The guide's rule: more than six parameters travel together in a frozen dataclass."""
    wrong = functions_with_too_many_parameters()
    assert not wrong, "bundle these parameters in a frozen dataclass:\n" + "\n".join(wrong)
