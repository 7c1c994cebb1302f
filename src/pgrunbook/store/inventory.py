"""What an env's backup folder holds (``list``; ``status`` in monitoring reads it too).

``list`` and ``status`` read only the host's files and the work log: they
never touch the database, so they work when the server is down, and they
write no work-log line (status runs every hour).

Checksum state (cheap, no hashing unless asked): the ``.sha256`` sidecar is
there, agrees with the manifest, and the file has the recorded size.
"Verified": the work log holds a ``verify`` line with result ``ok`` for a file
of this name with the same sha256, so a file replaced after its check is not
counted as verified. Only the work log's lines before a broken hash chain are
trusted (issue 12): a forged ``verify ok`` line appended by hand counts for nothing.

Issue 12 adds what the manifest says: the backup's label, its pin
(``keep_until``) and whether its content looked wrong (``suspect``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import human_size
from pgrunbook.core.durations import describe_age
from pgrunbook.core.settings import Settings
from pgrunbook.store import catalog, drift, pins

CHECKSUM_OK = "ok"
CHECKSUM_MISSING = "なし"
CHECKSUM_MISMATCH = "不一致"
CHECKSUM_NO_MANIFEST = "マニフェストなし"


@dataclass(frozen=True)
class Inventoried:
    backup: catalog.BackupFile
    size: int
    checksum: str
    recorded_sha256: str | None
    made_by_kit: bool
    verified_at: str | None
    label: str | None = None
    keep_until: str | None = None  # ISO date of the pin
    suspect: bool = False
    drift_accepted: bool = False
    ahead: timedelta | None = None  # dated this far in the future (a clock was wrong)

    @property
    def name(self) -> str:
        return self.backup.name

    @property
    def verified(self) -> bool:
        """A successful verify of exactly these bytes: never for a file that no longer
        has the size and checksum its manifest records (truncated after its check)."""
        return self.verified_at is not None and self.checksum != CHECKSUM_MISMATCH

    @property
    def future(self) -> bool:
        return self.ahead is not None

    @property
    def valid(self) -> bool:
        """Kit-made and internally consistent (checksum, manifest and size agree)."""
        return self.made_by_kit and self.checksum == CHECKSUM_OK


def manifest_matches(backup: catalog.BackupFile, manifest: dict[str, Any] | None, env: str) -> bool:
    """The manifest the kit wrote for exactly this file of this env."""
    return (bool(manifest) and manifest.get("env") == env
            and manifest.get("file") in catalog.names_of(backup.path))


def checksum_state(backup: catalog.BackupFile, manifest: dict[str, Any] | None, size: int) -> str:
    recorded = catalog.read_checksum(backup.path)
    if recorded is None:
        return CHECKSUM_MISSING
    if not manifest:
        return CHECKSUM_NO_MANIFEST
    if recorded != manifest.get("sha256") or manifest.get("size") not in (None, size):
        return CHECKSUM_MISMATCH
    return CHECKSUM_OK


def verified_index(records: Iterable[dict[str, Any]], env: str) -> dict[tuple[str, str], str]:
    """(file name, sha256) -> time of the latest successful verify, from the work log."""
    index: dict[tuple[str, str], str] = {}
    for record in records:
        if record.get("task") != "verify" or record.get("result") != "ok":
            continue
        if record.get("env") != env or not record.get("file") or not record.get("sha256"):
            continue
        index[(Path(record["file"]).name, record["sha256"])] = str(record.get("time"))
    return index


def inventory(
    settings: Settings, with_globals: bool = True, now: datetime | None = None
) -> list[Inventoried]:
    """Every backup of this env in its folder, oldest first."""
    now = now or datetime.now()
    backups = [
        b
        for b in catalog.backups_in(settings.backup_dir, settings.backup_prefix, with_globals=with_globals)
        if b.env == settings.env
    ]
    records, _ = worklog.read_trusted(settings.worklog_path)
    verified = verified_index(records, settings.env)
    found = []
    for backup in backups:
        try:
            size = backup.path.stat().st_size
        except OSError:
            continue  # removed while we looked
        manifest = backup.manifest()
        kit = not backup.legacy and manifest_matches(backup, manifest, settings.env)
        recorded = catalog.read_checksum(backup.path)
        state = checksum_state(backup, manifest if kit else None, size)
        own = manifest if kit else None
        until = pins.keep_until(own)
        found.append(Inventoried(
            backup=backup,
            size=size,
            checksum=state,
            recorded_sha256=recorded,
            made_by_kit=kit,
            verified_at=verified.get((backup.name, recorded)) if recorded else None,
            label=(own or {}).get("label") or backup.label,
            keep_until=until.isoformat() if until else None,
            suspect=drift.is_suspect(own),
            drift_accepted=bool(((own or {}).get("drift") or {}).get("accepted")),
            ahead=catalog.ahead_of(backup, manifest, now),
        ))
    return found


def future_note(items: list[Inventoried]) -> str | None:
    """One sentence about backups dated in the future, with what to do; None if none."""
    future = [item for item in items if item.future]
    if not future:
        return None
    worst = max(future, key=lambda item: item.ahead or timedelta(0))
    more = f" ほか {len(future) - 1} 件" if len(future) > 1 else ""
    return (
        f"未来の日時のバックアップ {worst.name}（{describe_age(worst.ahead or timedelta(0))}先）{more}"
        "があり、最新とはみなしません → ホストの時計を確認（timedatectl）。時計が正しければ"
        "ファイルの日時が誤りなので、その一式（.sha256・.json も）を別の場所へ移す"
    )


# ---- list ---------------------------------------------------------------------------

HEADERS = ("名前", "形式", "サイズ", "作成日時", "検証", "チェックサム", "ラベル", "保管期限", "内容")


def verified_cell(item: Inventoried) -> str:
    if item.verified and item.verified_at:
        return f"済 {item.verified_at[:16]}"
    if item.verified_at:
        return "未（検証後に変化）"  # truncated or replaced after its check
    return "未"


def rows(items: list[Inventoried], prestaged: dict[str, str] | None = None) -> list[tuple[str, ...]]:
    return [
        (
            item.name,
            item.backup.format + ("(旧形式)" if item.backup.legacy else ""),
            human_size(item.size),
            item.backup.created.strftime("%Y-%m-%d %H:%M:%S") + ("（未来）" if item.future else ""),
            verified_cell(item),
            item.checksum,
            item.label or "-",
            item.keep_until or "-",
            content_state(item),
        ) + ((prestaged.get(item.name, "-"),) if prestaged is not None else ())
        for item in items
    ]


def content_state(item: Inventoried) -> str:
    """The drift check's verdict as list shows it."""
    if item.suspect:
        return "疑わしい"
    if item.drift_accepted:
        return "承認済み"
    return "-"


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two columns."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def table(items: list[Inventoried], prestaged: dict[str, str] | None = None) -> list[str]:
    """An aligned table for a terminal (``prestaged``: file name -> prestaged database,
    a last column when RESTORE_PRESTAGE is on)."""
    body = rows(items, prestaged)
    headers = HEADERS + (("事前展開",) if prestaged is not None else ())
    widths = [max([_width(h)] + [_width(row[i]) for row in body]) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), line(tuple("-" * w for w in widths))] + [line(row) for row in body]


def plain_lines(items: list[Inventoried], prestaged: dict[str, str] | None = None) -> list[str]:
    """One tab-separated line per backup (for grep, awk and cron mail), no header."""
    return ["\t".join(row) for row in rows(items, prestaged)]


