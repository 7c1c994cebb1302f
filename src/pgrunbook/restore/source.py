"""What we know of the file to restore: its checks, manifest, sidecars and digest."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pgrunbook.backup.verify import check_file
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra.archive import ArchiveHeader, read_header
from pgrunbook.infra.postgres import (
    Postgres,
    ServerFacts,
)
from pgrunbook.store import catalog
from pgrunbook.store.select import resolve_file


@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    env: str | None
    manifest: dict[str, Any] | None
    header: ArchiveHeader | None
    size: int
    expected_sha256: str | None  # from the .sha256 sidecar, else the manifest
    toc: tuple[str, ...] | None = None  # its table of contents as the file's check read it

    @property
    def created(self) -> str:
        if self.manifest and self.manifest.get("started_at"):
            return str(self.manifest["started_at"])
        parsed = catalog.parse(self.path)
        return parsed.created.isoformat(sep=" ") if parsed else "不明"

    @property
    def carries_statistics(self) -> bool:
        """The archive holds the planner's statistics (pg_dump 18+ --statistics): a
        restore loads them, and the database plans as the live one did when it was
        dumped, with no ANALYZE first (a table the live database had never analyzed
        has none, as it had none there: autovacuum makes them)."""
        return bool((self.manifest or {}).get("statistics")) and self.format == "custom"

    def table_counts(self) -> dict[str, int] | None:
        if not self.manifest or self.manifest.get("row_counts") in (None, "none"):
            return None
        return {f"{t['schema']}.{t['name']}": int(t["rows"]) for t in self.manifest.get("tables", [])}


def inspect_source(settings: Settings, file: str | None, console: Console) -> Source:
    """Check the file (no env decision here) and describe it."""
    path = resolve_file(settings, file, console)  # without --file: named in a step line
    # The sha256 is computed while the file is sent to the container (one read,
    # not two) and compared before anything is swapped: see restore_into.
    report = check_file(settings, path, console, expected_env=None, full_read=False, checksum=False)
    for warning in report.warnings:
        console.warn(warning)
    if not report.ok:
        first = report.failures[0]
        raise RunbookError(f"{path.name} は使えません [{first.name}]: {first.detail}", first.hint)
    if report.format == catalog.GLOBALS:
        raise Refused(
            f"{path.name} はロール（pg_dumpall --globals-only）のファイルで、DB のバックアップではありません",
            "ロールは新しいサーバーで psql -d postgres -f に流してから DB を戻す（手順書「運用」参照）",
        )
    parsed = catalog.parse(path)
    manifest = catalog.read_manifest(path)
    env = (manifest or {}).get("env") or (parsed.env if parsed else None)
    header = read_header(path) if report.format == "custom" else None
    expected = catalog.read_checksum(path)
    expected = expected or (manifest or {}).get("sha256")
    return Source(path, report.format or "custom", env, manifest, header, path.stat().st_size,
                  expected, report.toc)


First = TypeVar("First")
Second = TypeVar("Second")


def side_by_side(first: Callable[[], First], second: Callable[[], Second]) -> tuple[First, Second]:
    """Two independent round trips to the container at once (each costs ~50 ms).
    ``first``'s error wins; ``second`` is always waited for."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="beside") as pool:
        pending = pool.submit(second)
        try:
            result = first()
        except BaseException:
            with contextlib.suppress(Exception):
                pending.result()
            raise
        return result, pending.result()


def inspect_with_facts(
    pg: Postgres, settings: Settings, file: str | None, console: Console
) -> tuple[Source, ServerFacts]:
    """The file's checks (a ``pg_restore --list`` in the container) beside the
    server's facts."""
    return side_by_side(lambda: inspect_source(settings, file, console),
                        lambda: pg.facts(settings.db_name))


def check_digest(source: Source, digest: str) -> None:
    if source.expected_sha256 and source.expected_sha256 != digest:
        raise RunbookError(
            f"{source.path.name} の sha256 が記録と一致しません（記録 {source.expected_sha256[:12]}…、"
            f"実際 {digest[:12]}…）",
            "ファイルが壊れているか差し替えられています。別のバックアップを使う",
        )
