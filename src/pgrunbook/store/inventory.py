"""What an env's backup folder holds, and whether the newest good backup is fresh.

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

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pgrunbook.backup import pin as pinning
from pgrunbook.core import worklog
from pgrunbook.core.console import human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.store import catalog, drift

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
        until = pinning.keep_until(own)
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


def sound(items: list[Inventoried]) -> list[Inventoried]:
    """The backups a restore may trust as "the newest": not dated in the future, not
    suspect (content drift), and not in disagreement with their manifest's checksum."""
    return [item for item in items
            if not item.future and not item.suspect and item.checksum != CHECKSUM_MISMATCH]


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


# ---- status -------------------------------------------------------------------------

DURATION = re.compile(r"(\d+)\s*([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'26h', '90m', '2d', '1d12h' -> timedelta. Exit code 2 on anything else."""
    compact = (text or "").strip().lower()
    if not compact or DURATION.sub("", compact).strip():
        raise RunbookError(
            f"期間 {text!r} を解釈できません",
            "数字と単位で指定（例: 26h, 90m, 2d, 1d12h。単位 s/m/h/d/w）",
            exit_code=2,
        )
    seconds = sum(int(n) * UNIT_SECONDS[u] for n, u in DURATION.findall(compact))
    if seconds <= 0:
        raise RunbookError(f"期間 {text!r} は 0 より大きくしてください", exit_code=2)
    return timedelta(seconds=seconds)


def describe_age(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    if minutes < 0:
        return "未来の日時"
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}日{hours}時間"
    if hours:
        return f"{hours}時間{minutes}分"
    return f"{minutes}分"


SUSPECT_EXIT = 3  # the newest backup's content looks wrong (issue 12)
WORKLOG_EXIT = 4  # the work log's hash chain is broken (issue 12)


@dataclass(frozen=True)
class Freshness:
    exit_code: int  # 0 fresh, 1 stale, 2 none, 3 newest suspect, 4 work log broken
    line: str


def _warnings(settings: Settings, items: list[Inventoried]) -> list[tuple[int, str]]:
    """(exit code, text) of what status must warn about besides freshness."""
    found = []
    newest_of_series: dict[str, Inventoried] = {}
    for item in items:  # oldest first: the last one of each format wins
        newest_of_series[item.backup.format] = item
    for newest in sorted(newest_of_series.values(),
                         key=lambda i: catalog.order_key(i.name, i.backup.created)):
        if not newest.suspect:
            continue
        manifest = newest.backup.manifest() or {}
        reasons = drift.describe((manifest.get("drift") or {}).get("findings") or [])
        found.append((SUSPECT_EXIT, f"最新のバックアップ {newest.name} は疑わしい内容です"
                      f"（{'; '.join(reasons[:3])}{' ほか' if len(reasons) > 3 else ''}）→ DB を確認し、"
                      f"意図した変化なら invoke accept-drift --env={settings.env} --file={newest.name} "
                      "--reason=..."))
    chain = worklog.verify_chain(settings.worklog_path)
    if not chain.intact:
        found.append((WORKLOG_EXIT, f"{chain.describe()}（それ以降の行は信用しません）→ "
                      f"invoke worklog-verify --env={settings.env}"))
    return found


def freshness(settings: Settings, max_age: timedelta, now: datetime | None = None) -> Freshness:
    """The newest verified, non-suspect database backup against max_age (globals do not
    count), then the warnings: a suspect newest backup, a broken work log.

    A backup dated in the future (beyond catalog.FUTURE_TOLERANCE) is an error of its
    own: it would otherwise read as fresh for as long as it is ahead."""
    now = now or datetime.now()
    label = f"env={settings.env}"
    note = future_note(inventory(settings, with_globals=True, now=now))
    if note:
        return Freshness(2, f"CRITICAL {label}: {note}")
    everything = inventory(settings, with_globals=False, now=now)
    items = [i for i in everything if i.verified and i.valid and not i.suspect]
    warnings = _warnings(settings, [i for i in everything if i.made_by_kit])
    extra = "".join(f" / WARNING: {text}" for _, text in warnings)
    if not items:
        suspects = sum(1 for i in everything if i.suspect)
        more = (f"（未検証のバックアップは {len(everything) - suspects} 件"
                + (f"、疑わしいものは {suspects} 件" if suspects else "") + "）") if everything else ""
        return Freshness(
            2,
            f"CRITICAL {label}: 検証済みのバックアップがありません{more} → "
            f"invoke backup --env={settings.env} && invoke verify --env={settings.env}{extra}",
        )
    newest = items[-1]
    age = max(now - newest.backup.created, timedelta(0))  # within the tolerance: "0分前"
    limit = describe_age(max_age)
    if age > max_age:
        return Freshness(
            1,
            f"STALE {label}: 最新の検証済みバックアップ {newest.name} は "
            f"{describe_age(age)}前（上限 {limit}）→ cron とログを確認{extra}",
        )
    fresh = f"最新の検証済みバックアップ {newest.name}（{describe_age(age)}前、上限 {limit}）"
    if warnings:
        code, text = warnings[0]
        rest = "".join(f" / {other}" for _, other in warnings[1:])
        return Freshness(code, f"WARNING {label}: {text}{rest}（{fresh}）")
    return Freshness(0, f"OK {label}: {fresh}")
