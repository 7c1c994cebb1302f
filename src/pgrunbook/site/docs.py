"""Build-time content of the runbook site, generated from the code so it cannot drift.

The mkdocs hook (``docs_hooks.py`` beside mkdocs.yml) replaces page markers
with what this module renders:

* ``<!-- pgrunbook:manual STEP -->``: the hand commands of a step, from
  ``pgrunbook.manual`` with example settings (``.env.example`` read as if it
  were ``.env.prod``; real ``.env.*`` files are never read).
* ``<!-- pgrunbook:task-reference -->``: every task of the invoke namespace
  with its docstring and each argument's flags, help and default.
* ``<!-- pgrunbook:settings-reference -->``: every key of ``.env.example``
  with its example value, built-in default and Japanese comment.
* ``<!-- pgrunbook:file NAME -->``: a file of the checkout, verbatim.
* ``<!-- pgrunbook:original KEY -->``: one section of the team's own runbook
  (``runbooks/original/``), as written, under a line naming it; KEY from
  ``pgrunbook.original.SECTIONS``. ``<!-- pgrunbook:original-runbook -->``:
  the whole runbook; ``<!-- pgrunbook:original-digest -->``: its path and
  sha256. ``check_original_coverage`` fails the build when a code block of
  the runbook is on no step page.

A marker keeps its indentation, so it works inside content tabs and
admonitions. An unknown marker or a missing file raises ``DocsError``: the
build fails instead of publishing a page with a hole.

Nothing here imports invoke or mkdocs: the namespace arrives as an object
(duck-typed ``Collection``), loaded by the hook.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import inspect
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pgrunbook import restore
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import KEYS, Settings, load_settings
from pgrunbook.infra import manual
from pgrunbook.offsite import keydrill
from pgrunbook.pitr import pgbackrest as pitr
from pgrunbook.site import original
from pgrunbook.store import catalog

MARKER = re.compile(
    r"^(?P<indent>[ \t]*)<!--\s*pgrunbook:(?P<kind>[a-z-]+)(?:\s+(?P<arg>[^\s>]+))?\s*-->[ \t]*$",
    re.MULTILINE,
)
EXAMPLE_ENV = "prod"
EXAMPLE_WHEN = datetime(2026, 1, 28, 2, 0, 0)  # the runbook's own example date
EXAMPLE_YEAR = (date(2025, 4, 1), date(2026, 3, 31))  # the fiscal year around it
EXAMPLE_TOKEN = "4f2a"  # the random part of a kit database's name, fixed in the examples
EMBEDDABLE = {".env.example": "text", "crontab.example": "text",
              # the PITR set-up the tests build and run (runbooks/pitr.md)
              "examples/pitr/compose.yaml": "yaml", "examples/pitr/Dockerfile": "dockerfile",
              "examples/pitr/pgbackrest.conf": "ini"}
ORIGINAL_PAGE = "original.md"  # the page that shows the team's runbook whole


class DocsError(Exception):
    """Something the site needs is missing or wrong: the build must fail."""


# --- example settings and the manual commands --------------------------------


def example_settings(env_example: Path) -> Settings:
    """Settings from .env.example as if it were .env.prod (no password, ever)."""
    if not env_example.is_file():
        raise DocsError(f"{env_example} がありません（設定の見本から手順のコマンドを作ります）")
    with tempfile.TemporaryDirectory(prefix="pgrunbook-docs-") as folder:
        shutil.copyfile(env_example, Path(folder) / f".env.{EXAMPLE_ENV}")
        try:
            settings = load_settings(EXAMPLE_ENV, Path(folder), check_siblings=False)
        except RunbookError as error:
            raise DocsError(f".env.example を読めません: {error.one_line()}") from error
        # Paths print relative to the config folder; the folder itself goes away.
        return dataclasses.replace(settings, db_password=None)


@dataclass(frozen=True)
class Example:
    """The names the runbook pages use in their examples."""

    settings: Settings

    def archive(self, fmt: str = "custom") -> Path:
        name = catalog.backup_name(self.settings.backup_prefix, self.settings.env, EXAMPLE_WHEN, fmt)
        return self.settings.backup_dir / name

    @property
    def scratch(self) -> str:
        return restore.scratch_name(self.settings, EXAMPLE_WHEN)

    @property
    def staging(self) -> str:
        return restore.kit_name(self.settings, "staging", EXAMPLE_WHEN, EXAMPLE_TOKEN)

    @property
    def previous(self) -> str:
        return restore.kit_name(self.settings, "previous", EXAMPLE_WHEN, EXAMPLE_TOKEN)

    @property
    def failed(self) -> str:
        return restore.kit_name(self.settings, "rolledback", EXAMPLE_WHEN, EXAMPLE_TOKEN)

    @property
    def restore_test(self) -> str:
        return restore.kit_name(self.settings, "verify", EXAMPLE_WHEN, EXAMPLE_TOKEN)

    @property
    def evidence(self) -> str:
        first, last = EXAMPLE_YEAR
        return f"evidence-{self.settings.env}-{first:%Y%m%d}-{last:%Y%m%d}.html"

    @property
    def prestaged(self) -> str:
        return restore.kit_name(self.settings, "prestaged", EXAMPLE_WHEN, EXAMPLE_TOKEN)

    @property
    def partial(self) -> str:
        return restore.kit_name(self.settings, "partial", EXAMPLE_WHEN)


def manual_steps(example: Example) -> dict[str, Callable[[], list[str]]]:
    """Step name (as used in page markers) -> the hand commands of that step."""
    s = example.settings
    return {
        "preflight": lambda: manual.preflight_commands(s),
        "preflight-check": lambda: manual.check_commands(s),
        "backup": lambda: manual.backup_commands(s, "custom", example.archive("custom")),
        "backup-sql": lambda: manual.backup_commands(s, "plain", example.archive("plain")),
        "backup-no-owner": lambda: manual.backup_commands(
            s, "plain", example.archive("plain"), no_owner=True, no_acl=True
        ),
        "verify": lambda: manual.verify_commands(s, example.archive("custom")),
        "verify-sql": lambda: manual.verify_commands(s, example.archive("plain")),
        "restore-scratch": lambda: manual.restore_scratch_commands(
            s, example.archive("custom"), example.scratch
        ),
        "restore-scratch-sql": lambda: manual.restore_scratch_commands(
            s, example.archive("plain"), example.scratch
        ),
        "restore-scratch-no-owner": lambda: manual.restore_scratch_commands(
            s, example.archive("custom"), example.scratch, no_owner=True, no_acl=True
        ),
        "restore-replace": lambda: manual.restore_replace_commands(
            s, example.archive("custom"), example.staging, example.previous
        ),
        "rollback": lambda: manual.rollback_commands(s, example.previous, example.failed),
        "drop-previous": lambda: manual.drop_database_commands(s, example.previous),
        "recover": lambda: manual.recover_commands(s),
        "drop-scratch": lambda: manual.drop_database_commands(s, example.scratch),
        "restore-test": lambda: manual.restore_test_commands(
            s, example.archive("custom"), example.restore_test
        ),
        "prestage": lambda: manual.prestage_commands(
            s, example.archive("custom"), example.prestaged, example.staging, example.previous
        ),
        "check": lambda: manual.table_summary_commands(s, s.db_name),
        "evidence": lambda: manual.evidence_commands(s, *EXAMPLE_YEAR, example.archive("custom").name),
        "evidence-verify": lambda: manual.evidence_verify_commands(
            s, os.path.relpath(s.backup_dir / example.evidence, s.config_dir)),
        "key-drill": lambda: keydrill.manual_commands(s, example.archive("custom").name),
        "partial": lambda: manual.partial_commands(s, example.archive("custom"), example.partial,
                                                   "public.votes", "id"),
        "partial-undo": lambda: manual.partial_undo_commands(s, example.partial, "public.votes", "id"),
        **pitr.manual_steps(s),
    }


def fenced(text: str, language: str) -> str:
    """A fenced code block that survives any backticks inside the text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}"


# --- the task reference --------------------------------------------------------


def _flag(argument: Any) -> str:
    names = sorted(argument.names, key=len, reverse=True)
    long_name = names[0]
    dashes = "--" if len(long_name) > 1 else "-"
    flag = f"{dashes}{long_name}"
    if argument.kind is bool:
        return f"--[no-]{long_name}" if argument.default else flag
    kind = {int: "整数", float: "数値", list: "値（複数可）"}.get(argument.kind, "値")
    return f"{flag}={kind}"


def _short(argument: Any) -> str:
    shorts = [name for name in argument.names if len(name) == 1]
    return ", ".join(f"-{name}" for name in shorts)


def _default(argument: Any) -> str:
    if argument.kind is bool:
        return "する" if argument.default else "しない"
    if argument.default in (None, ""):
        return "—"
    return str(argument.default)


def _paragraphs(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def task_entries(namespace: Any) -> list[tuple[str, Any]]:
    """(full name, task) for every task of the namespace, sub-collections included."""
    return [(name, namespace[name]) for name in sorted(namespace.task_names)]


def task_docstring(task: Any) -> str:
    return inspect.cleandoc(task.body.__doc__ or "")


def render_task(name: str, task: Any, aliases: list[str]) -> str:
    """One task as a heading (for the TOC and links) and raw HTML (text kept as is)."""
    lines = [f"### `invoke {name}` {{#{anchor_of(name)}}}", ""]
    for paragraph in _paragraphs(task_docstring(task)) or ["（説明なし）"]:
        lines += [f"<p>{html.escape(paragraph)}</p>", ""]
    arguments = list(task.get_arguments())
    usage = f"invoke {name}" + "".join(f" [{_flag(a)}]" for a in arguments)
    lines += [fenced(usage, "text"), ""]
    if aliases:
        lines += [f"<p>別名: {html.escape(', '.join(aliases))}</p>", ""]
    if not arguments:
        lines += ["<p>引数はありません。</p>", ""]
        return "\n".join(lines)
    rows = []
    for argument in arguments:
        help_text = argument.help or ""
        rows.append(
            "<tr>"
            f"<td><code>{html.escape(_flag(argument))}</code></td>"
            f"<td>{_code_or_dash(_short(argument))}</td>"
            f"<td>{html.escape(_default(argument))}</td>"
            f"<td>{html.escape(help_text)}</td>"
            "</tr>"
        )
    lines += [
        "<table>",  # no class: Material styles only plain tables
        "<thead><tr><th>引数</th><th>短縮</th><th>既定</th><th>説明</th></tr></thead>",
        "<tbody>",
        *rows,
        "</tbody>",
        "</table>",
        "",
    ]
    return "\n".join(lines)


def anchor_of(task_name: str) -> str:
    return "task-" + re.sub(r"[^a-z0-9]+", "-", task_name.lower()).strip("-")


def task_reference(namespace: Any) -> str:
    entries = task_entries(namespace)
    if not entries:
        raise DocsError("tasks.py の namespace にタスクがありません")
    summary = ["| タスク | 内容 |", "|---|---|"]
    for name, task in entries:
        first = (_paragraphs(task_docstring(task)) or [""])[0].replace("\n", " ")
        summary.append(f"| [`{name}`](#{anchor_of(name)}) | {_table_text(first)} |")
    parts = ["\n".join(summary), ""]
    for name, task in entries:
        parts.append(render_task(name, task, list(namespace.task_names.get(name, []))))
    return "\n".join(parts)


def _table_text(text: str) -> str:
    """Text for a Markdown table cell: no HTML, no table breaks, no emphasis."""
    return re.sub(r"([|*_`\\\[\]])", r"\\\1", html.escape(text))


# --- the settings reference ------------------------------------------------------


@dataclass(frozen=True)
class SettingDoc:
    section: str
    key: str
    value: str
    comment: str


SECTION = re.compile(r"^#\s*-{2,}\s*(?P<title>.*?)\s*-*\s*$")
ASSIGNMENT = re.compile(r"^(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def parse_env_example(text: str) -> list[SettingDoc]:
    """Keys of .env.example with the comment lines right above each one."""
    docs: list[SettingDoc] = []
    section, comment = "", []
    for raw in text.splitlines():
        line = raw.strip()
        heading = SECTION.match(line)
        if heading:
            section, comment = heading.group("title"), []
        elif line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif not line:
            comment = []
        else:
            match = ASSIGNMENT.match(line)
            if not match:
                raise DocsError(f".env.example の行を読めません: {raw!r}")
            docs.append(SettingDoc(section, match.group("key"), match.group("value"), " ".join(comment)))
            comment = []
    return docs


def settings_reference(text: str) -> str:
    docs = parse_env_example(text)
    if not docs:
        raise DocsError(".env.example にキーがありません")
    parts: list[str] = []
    section = None
    for doc in docs:
        if doc.section != section:
            if section is not None:
                parts += ["</tbody>", "</table>", ""]
            section = doc.section
            parts += [f"## {section or 'その他'}", "", "<table>",
                      "<thead><tr><th>キー</th><th>見本の値</th><th>既定</th><th>説明</th></tr></thead>",
                      "<tbody>"]
        builtin = KEYS.get(doc.key, (None, ""))[0]
        parts.append(
            "<tr>"
            f'<td><code id="{html.escape(doc.key.lower())}">{html.escape(doc.key)}</code></td>'
            f"<td>{_code_or_dash(doc.value)}</td>"
            f"<td>{_code_or_dash(builtin or '')}</td>"
            f"<td>{html.escape(doc.comment) or '—'}</td>"
            "</tr>"
        )
    parts += ["</tbody>", "</table>", ""]
    return "\n".join(parts)


def _code_or_dash(value: str) -> str:
    return f"<code>{html.escape(value)}</code>" if value else "—"


# --- markers ----------------------------------------------------------------------


class SiteContent:
    """Renders the markers of one build; the namespace is loaded only when asked for."""

    def __init__(self, root: Path, load_namespace: Callable[[], Any],
                 slugify: Callable[[str, str], str] | None = None) -> None:
        self.root = root
        self._load_namespace = load_namespace
        self._namespace: Any = None
        self._example: Example | None = None
        self._slugify = slugify  # the site's heading ids, to link into the page 元の手順書
        self._coverage: original.Coverage | None = None

    @property
    def example(self) -> Example:
        if self._example is None:
            self._example = Example(example_settings(self.root / ".env.example"))
        return self._example

    @property
    def namespace(self) -> Any:
        if self._namespace is None:
            self._namespace = self._load_namespace()
        return self._namespace

    @property
    def coverage(self) -> original.Coverage:
        if self._coverage is None:
            try:
                runbook = original.Runbook.load(self.root / original.ORIGINAL_RUNBOOK, self._slugify)
            except original.OriginalError as error:
                raise DocsError(str(error)) from error
            self._coverage = original.Coverage(runbook)
        return self._coverage

    def original_section(self, key: str | None, page: str | None) -> str:
        if key not in original.SECTIONS:
            raise DocsError(f"元の手順書の節 {key!r} はありません（{', '.join(original.SECTIONS)}）")
        runbook = self.coverage.runbook
        try:
            section = runbook.section(original.SECTIONS[key])
        except original.OriginalError as error:
            raise DocsError(str(error)) from error
        self.coverage.record(section, page or "?")
        link = posixpath.relpath(ORIGINAL_PAGE, posixpath.dirname(page or "") or ".")
        if section.anchor:
            link += f"#{section.anchor}"
        # Linked tabs remember 元の手順書 across pages: say on each block that it is not what to run.
        caption = (f"元の手順書「{' › '.join(section.path)}」の原文です"
                   f"（[元の手順書の全文]({link})）。"
                   "**参考のための原文です。手で行うときは「手作業」タブのコマンドを使います。**")
        return f"{caption}\n\n{runbook.body(section)}"

    def check_original_coverage(self) -> None:
        try:
            self.coverage.check()
        except original.OriginalError as error:
            raise DocsError(str(error)) from error

    def read(self, name: str) -> str:
        if name not in EMBEDDABLE:
            raise DocsError(f"埋め込めないファイルです: {name}（{', '.join(sorted(EMBEDDABLE))}）")
        path = self.root / name
        if not path.is_file():
            raise DocsError(f"{path} がありません（手順書に埋め込むファイルです）")
        return path.read_text(encoding="utf-8")

    def render(self, kind: str, argument: str | None, page: str | None = None) -> str:
        if kind == "manual":
            steps = manual_steps(self.example)
            if argument not in steps:
                raise DocsError(f"手作業の手順 {argument!r} はありません（{', '.join(steps)}）")
            return fenced("\n".join(steps[argument]()), "bash")
        if kind == "task-reference":
            return task_reference(self.namespace)
        if kind == "settings-reference":
            return settings_reference(self.read(".env.example"))
        if kind == "file" and argument:
            return fenced(self.read(argument), EMBEDDABLE[argument])
        if kind == "original":
            return self.original_section(argument, page)
        if kind == "original-runbook" and not argument:
            return self.coverage.runbook.text.rstrip("\n")
        if kind == "original-digest" and not argument:
            return (f"`{original.ORIGINAL_RUNBOOK.as_posix()}`"
                    f"（sha256 `{self.coverage.runbook.digest()}`）")
        raise DocsError(f"不明なマーカー pgrunbook:{kind} {argument or ''}".rstrip())

    def expand(self, markdown: str, page: str | None = None) -> str:
        """Replace the markers of one page (page: its path under docs_dir, for relative links)."""

        def replace(match: re.Match[str]) -> str:
            rendered = self.render(match.group("kind"), match.group("arg"), page)
            indent = match.group("indent")
            return "\n".join(indent + line if line else line for line in rendered.split("\n"))

        return MARKER.sub(replace, markdown)


AREA_TASKS = "tasks_by_area"  # the package of task modules beside tasks.py


def load_namespace(tasks_file: Path) -> Any:
    """The invoke namespace of a tasks.py, loaded by path (no import of invoke here)."""

    if not tasks_file.is_file():
        raise DocsError(f"{tasks_file} がありません")
    spec = importlib.util.spec_from_file_location("_pgrunbook_docs_tasks", tasks_file)
    if spec is None or spec.loader is None:
        raise DocsError(f"{tasks_file} を読み込めません")
    module = importlib.util.module_from_spec(spec)
    # tasks.py imports its area modules (tasks_by_area/) from beside it, as invoke's
    # loader lets it: fresh each time, so that a changed task changes the site
    folder = str(tasks_file.parent.resolve())
    for name in [name for name in sys.modules if name.split(".")[0] == AREA_TASKS]:
        del sys.modules[name]
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    namespace = getattr(module, "namespace", None) or getattr(module, "ns", None)
    if namespace is None:
        raise DocsError(f"{tasks_file} に namespace（invoke の Collection）がありません")
    return namespace


# --- building and previewing (for invoke docs / docs-build) ------------------------


def _mkdocs_environment() -> dict[str, str]:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # keep the output to our own build lines


def _mkdocs_available() -> None:

    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        raise RunbookError(
            "mkdocs / mkdocs-material がインストールされていません",
            "pip install -e '.[docs]' を実行",
        )


def build_site(root: Path, output: Path) -> Path:
    """mkdocs build --strict into output; returns output/index.html."""
    _mkdocs_available()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
         "-f", str(root / "mkdocs.yml"), "-d", str(output)],
        cwd=root, check=False, env=_mkdocs_environment(),
    )
    if done.returncode != 0:
        raise RunbookError(
            f"手順書サイトのビルドに失敗しました（mkdocs 終了コード {done.returncode}）",
            "上に表示された WARNING / ERROR の行を直して再実行",
        )
    return output / "index.html"


def serve_site(root: Path, port: int) -> None:
    """mkdocs serve on 127.0.0.1 only (the preview is not published on the network)."""
    _mkdocs_available()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mkdocs", "serve", "--strict",
             "-f", str(root / "mkdocs.yml"), "-a", f"127.0.0.1:{port}"],
            cwd=root, check=False, env=_mkdocs_environment(),
        )
    except KeyboardInterrupt:
        return  # Ctrl-C is how a preview ends
    if done.returncode not in (0, -2, 130):
        raise RunbookError(
            f"プレビューを起動できません（mkdocs 終了コード {done.returncode}）",
            f"ポート {port} が使用中なら --port で変更",
        )
