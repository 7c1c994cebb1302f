"""Pinned and labelled backups: the year-end (年度締め) and pre-release copies.

A pin is a ``keep_until`` date in the backup's manifest; ``prune`` and
``offsite-prune`` keep the backup until that date whatever the other rules say.
A label names the occasion: in the file name when given to ``backup``, in the
manifest always. Pins are set by ``backup --keep=10y`` or later by ``pin``, and
removed by ``unpin``; each change writes a work-log line.
"""

from __future__ import annotations

import calendar
import json
import re
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.store import catalog

KEEP = re.compile(r"^(\d{1,3})([ymd])$")


def add_months(start: date, months: int) -> date:
    year, month = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month + 1)[1])  # 29 Feb -> 28 Feb
    return date(year, month + 1, day)


def parse_keep(text: str, start: date) -> date:
    """'10y', '18m', '90d' after ``start``, or a date 'YYYY-MM-DD'. Exit code 2 otherwise."""
    value = (text or "").strip().lower()
    match = KEEP.match(value)
    keep: date | None = None
    if match:
        number, unit = int(match.group(1)), match.group(2)
        if number > 0:
            if unit == "d":
                keep = date.fromordinal(start.toordinal() + number)
            else:
                keep = add_months(start, number * (12 if unit == "y" else 1))
    else:
        try:
            keep = date.fromisoformat(value)
        except ValueError:
            keep = None
    if keep is None or keep <= start:
        raise RunbookError(
            f"保管期限 {text!r} を解釈できません（今日より後の日付にしてください）",
            "例: --keep=10y（10 年）, --keep=7y, --keep=18m, --keep=90d, --keep=2036-03-31",
            exit_code=2,
        )
    return keep


def check_label(label: str | None) -> str | None:
    if label is None or label == "":
        return None
    if len(label) > catalog.LABEL_MAX or not catalog.LABEL.match(label):
        raise RunbookError(
            f"ラベル {label!r} は使えません",
            f"英小文字で始まる英小文字・数字・- の {catalog.LABEL_MAX} 文字以内（例: fy2025-close, "
            "release-2026-04）",
            exit_code=2,
        )
    return label


def keep_until(manifest: dict[str, Any] | None) -> date | None:
    """The pin of a manifest, or None (also for a malformed date)."""
    text = (manifest or {}).get("keep_until")
    try:
        return date.fromisoformat(str(text)) if text else None
    except ValueError:
        return None


def pinned_until(manifest: dict[str, Any] | None) -> datetime | None:
    """The end of the pin's last day, for comparisons with timestamps."""
    until = keep_until(manifest)
    return datetime.combine(until, time.max) if until else None


def _kit_backup(settings: Settings, file: str | None) -> tuple[Path, dict[str, Any]]:
    from pgrunbook.backup.verify import resolve_file
    from pgrunbook.store.inventory import manifest_matches

    if not file:
        raise RunbookError("--file が指定されていません", f"invoke list --env={settings.env} で確認", 2)
    path = resolve_file(settings, file)
    backup = catalog.parse(path)
    manifest = catalog.read_manifest(path)
    if backup is None or backup.legacy or not manifest_matches(backup, manifest, settings.env):
        raise RunbookError(f"{path.name} はこの環境でキットが作ったバックアップではありません"
                           "（マニフェストがありません）",
                           f"invoke list --env={settings.env} で確認")
    assert manifest is not None
    return path, manifest


def _change(settings: Settings, task: str, file: str | None, console: Console,
            update: Any) -> tuple[Path, dict[str, Any]]:
    from pgrunbook.backup.dump import write_private

    entry = Entry(task, settings.env, settings.db_name, settings.db_container, file=file)
    with recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
        settings.backup_dir, settings.db_container, settings.db_name, task
    ):
        path, manifest = _kit_backup(settings, file)
        entry.file, entry.sha256 = str(path), manifest.get("sha256")
        entry.details["previous_keep_until"] = manifest.get("keep_until")
        update(manifest)
        entry.details.update(keep_until=manifest.get("keep_until"), label=manifest.get("label"))
        write_private(path.with_name(path.name + ".json"),
                      json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return path, manifest


def pin(settings: Settings, file: str | None, keep: str | None, label: str | None = None,
        console: Console | None = None) -> tuple[Path, date]:
    """Keep an existing backup until a date (from today), optionally with a label."""
    console = console or Console(settings.secrets())
    if not keep:
        raise RunbookError("--keep が指定されていません", "例: --keep=10y, --keep=2036-03-31", 2)
    until = parse_keep(keep, date.today())
    label = check_label(label)

    def update(manifest: dict[str, Any]) -> None:
        manifest["keep_until"] = until.isoformat()
        if label:
            manifest["label"] = label

    path, _ = _change(settings, "pin", file, console, update)
    console.summary(f"{path.name} を {until.isoformat()} まで保管します（prune・offsite-prune で消えません）")
    if settings.offsite_bucket and settings.offsite_object_lock:
        _extend_offsite_lock(settings, path, until, console)
    return path, until


def _extend_offsite_lock(settings: Settings, path: Path, until: date, console: Console) -> None:
    """A copy already offsite gets its lock extended to the pin (the local pin stands
    whatever happens here: a failure is a warning with the manual command)."""
    from pgrunbook.offsite import remote as offsite

    try:
        extended = offsite.extend_lock(settings, path.name, datetime.combine(until, time.max))
    except RunbookError as error:
        console.warn(f"オフサイトのロックを延ばせませんでした（{error.message}）。ローカルの固定は済んでいます。"
                     "手で: aws s3api put-object-retention（runbooks/guards.md）")
        return
    for url in extended:
        console.summary(f"オフサイトのロックを {until.isoformat()} まで延ばしました: {url}")


def unpin(settings: Settings, file: str | None, console: Console | None = None) -> Path:
    """Remove a pin: the backup follows the retention rules again."""
    console = console or Console(settings.secrets())

    def update(manifest: dict[str, Any]) -> None:
        if not manifest.get("keep_until"):
            raise RunbookError(f"{manifest.get('file')} は固定されていません（何もしません）",
                               f"invoke list --env={settings.env} で keep-until を確認")
        manifest["keep_until"] = None

    path, _ = _change(settings, "unpin", file, console, update)
    console.summary(f"{path.name} の固定を外しました（次の prune から保持期間の規則に従います）")
    return path
