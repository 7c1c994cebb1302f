"""The team's own runbook, as written: its sections and code blocks, for the site.

The project keeps the runbook the team approved byte for byte in
``runbooks/original/backup-restore-runbook.ja.md`` (a test compares it with
``../shared/spec/`` when that exists). The site shows it twice and never
retypes it: whole on the page 元の手順書 (marker ``original-runbook``), and
section by section in each step's 元の手順書 tab (marker ``original KEY``,
KEY from ``SECTIONS``). The lines come from the file; only the Markdown
parser (markdown-it-py, CommonMark) decides where a heading or a code block
starts and ends.

A build must show every code block of the runbook beside a step of the kit:
``Coverage`` records what the section markers embedded, and the hook fails
the build when a block (a new one, or one under a renamed heading) was left
out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ORIGINAL_RUNBOOK = Path("runbooks/original/backup-restore-runbook.ja.md")
SHARED_SPEC = Path("../shared/spec/backup-restore-runbook.ja.md")

# Marker key -> the runbook's headings down to the section (the H1 left out).
SECTIONS: dict[str, tuple[str, ...]] = {
    "preflight": ("バックアップ（pg_dump）", "1. 事前確認（本番／dev の切り分け）"),
    "backup": ("バックアップ（pg_dump）", "2. フルバックアップ（推奨: カスタム形式）"),
    "backup-sql": ("バックアップ（pg_dump）", "3. 代替: SQL 形式（psql で復元する場合）"),
    "restore-replace": ("リストア", "A. 既存 DB を消して戻す（本番復旧用）"),
    "restore-scratch": ("リストア", "B. 別 DB に戻して安全に確認する（推奨）"),
    "restore-sql": ("リストア", "SQL 形式の復元（psql）"),
    "cron": ("参考: 自動化案（任意）", "cron の例（ホスト側）"),
    "failures": ("付記: よくある失敗と対策",),
}

THEMATIC_BREAK = re.compile(r"^ {0,3}([-*_])( *\1){2,} *$")
IDCOUNT = re.compile(r"^(.*)_([0-9]+)$")


class OriginalError(Exception):
    """The runbook or a section a page asks for cannot be found."""


@dataclass(frozen=True)
class CodeBlock:
    index: int  # position among the runbook's code blocks, from 0
    start: int  # line of the opening fence, from 0
    end: int  # line after the closing fence
    content: str  # the block's text, without the fences
    heading: tuple[str, ...]  # headings above it (H1 left out)

    def command_lines(self) -> list[str]:
        """Lines that do something: neither blank nor a shell comment."""
        return [line for line in self.content.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...]  # heading texts from the first H2 down to this one
    level: int
    anchor: str | None  # the heading's id on the page 元の手順書 (when a slugify is known)
    start: int  # the heading's line
    body_start: int  # line after the heading
    body_end: int  # line of the next heading, or the end of the file
    code_blocks: tuple[CodeBlock, ...]

    @property
    def title(self) -> str:
        return self.path[-1] if self.path else ""


def _inline_text(token) -> str:
    """A heading's text as a reader sees it (code spans without backticks, no emphasis marks)."""
    return "".join(child.content for child in token.children or []
                   if child.type in ("text", "code_inline", "html_inline", "softbreak"))


def _unique(anchor: str, used: set[str]) -> str:
    """Python-Markdown's toc rule for repeated ids (目的, 目的_1, ...)."""
    while anchor in used or not anchor:
        match = IDCOUNT.match(anchor)
        anchor = f"{match.group(1)}_{int(match.group(2)) + 1}" if match else f"{anchor}_1"
    used.add(anchor)
    return anchor


@dataclass
class Runbook:
    """The runbook file parsed into headings and code blocks (line numbers into ``lines``)."""

    text: str
    lines: list[str]
    title: str
    sections: list[Section]
    code_blocks: list[CodeBlock]

    @classmethod
    def parse(cls, text: str, slugify: Callable[[str, str], str] | None = None) -> Runbook:
        from markdown_it import MarkdownIt  # the docs extra; only a site build needs it

        tokens = MarkdownIt("commonmark").parse(text)
        lines = text.splitlines(keepends=True)
        headings: list[tuple[int, int, str]] = []  # (line, level, text)
        fences: list[tuple[int, int, str]] = []  # (start, end, content)
        for position, token in enumerate(tokens):
            if token.type == "heading_open" and token.map:
                headings.append((token.map[0], int(token.tag[1]), _inline_text(tokens[position + 1])))
            elif token.type == "fence" and token.map:
                fences.append((token.map[0], token.map[1], token.content))

        title = next((name for _, level, name in headings if level == 1), "")
        used: set[str] = set()
        stack: list[tuple[int, str]] = []
        placed: list[tuple[int, int, tuple[str, ...], str | None]] = []  # line, level, path, anchor
        for line, level, name in headings:
            anchor = _unique(slugify(name, "-"), used) if slugify else None
            if level == 1:
                stack = []
                continue
            stack = [(lvl, text_) for lvl, text_ in stack if lvl < level] + [(level, name)]
            placed.append((line, level, tuple(text_ for _, text_ in stack), anchor))

        def path_at(line: int) -> tuple[str, ...]:
            above = [path for start, _, path, _ in placed if start < line]
            return above[-1] if above else ()

        blocks = [CodeBlock(index, start, end, content, path_at(start))
                  for index, (start, end, content) in enumerate(fences)]
        sections = []
        starts = [line for line, _, _ in headings] + [len(lines)]
        for line, level, path, anchor in placed:
            body_end = min(start for start in starts if start > line)
            inside = tuple(block for block in blocks if line < block.start < body_end)
            sections.append(Section(path, level, anchor, line, line + 1, body_end, inside))
        return cls(text, lines, title, sections, blocks)

    @classmethod
    def load(cls, path: Path, slugify: Callable[[str, str], str] | None = None) -> Runbook:
        if not path.is_file():
            raise OriginalError(f"{path} がありません（チームの手順書の原文です）")
        return cls.parse(path.read_text(encoding="utf-8"), slugify)

    def section(self, path: tuple[str, ...]) -> Section:
        for section in self.sections:
            if section.path == path:
                return section
        raise OriginalError(f"元の手順書に見出し「{' › '.join(path)}」がありません"
                            "（手順書が変わったら pgrunbook.original.SECTIONS を直します）")

    def body(self, section: Section) -> str:
        """The section's own lines as written, without the heading and the trailing rule."""
        lines = self.lines[section.body_start:section.body_end]
        while lines and (not lines[-1].strip() or THEMATIC_BREAK.match(lines[-1].rstrip("\n"))):
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        return "".join(lines).rstrip("\n")

    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass
class Coverage:
    """Which code blocks of the runbook the step pages embedded in this build."""

    runbook: Runbook
    embedded: dict[int, list[str]] = field(default_factory=dict)  # block index -> pages

    def record(self, section: Section, page: str) -> None:
        for block in section.code_blocks:
            self.embedded.setdefault(block.index, []).append(page)

    def missing(self) -> list[CodeBlock]:
        return [block for block in self.runbook.code_blocks if block.index not in self.embedded]

    def check(self) -> None:
        missing = self.missing()
        if missing:
            where = "、".join(f"「{' › '.join(block.heading) or '（見出しの前）'}」{block.start + 1} 行目"
                             for block in missing)
            raise OriginalError(
                f"元の手順書のコードブロックがどの手順のページにも載っていません: {where}"
                "（該当する手順の「元の手順書」タブに <!-- pgrunbook:original KEY --> を置き、"
                "KEY を pgrunbook.original.SECTIONS に加えます）"
            )
