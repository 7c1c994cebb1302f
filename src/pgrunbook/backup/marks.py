"""The operator's marks on a backup: ``pin``, ``unpin`` and ``accept-drift``.

Each changes the backup's manifest under the env's lock and writes one
work-log line with the operator: a pin keeps a year-end (年度締め) or
pre-release copy beyond retention, ``accept-drift`` records that a suspect
backup's shrinkage was intended. The pure rules (keep dates, labels, the
drift verdict) live in ``store/pins`` and ``store/drift``. Extending an
offsite copy's Object Lock to a new pin is the offsite area's (the task
calls ``offsite.lock.extend_to_pin`` after ``pin``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.safety import exclusive_lock
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, now_iso, operator, recorded
from pgrunbook.store import catalog, drift, pins
from pgrunbook.store.inventory import manifest_matches
from pgrunbook.store.select import resolve_file


def _kit_backup(settings: Settings, file: str | None,
                made_by_kit: Callable[[catalog.BackupFile, dict[str, Any] | None], bool]
                ) -> tuple[Path, dict[str, Any]]:
    path = resolve_file(settings, file)
    backup = catalog.parse(path)
    manifest = catalog.read_manifest(path)
    if backup is None or backup.legacy or not made_by_kit(backup, manifest):
        raise RunbookError(f"{path.name} はこの環境でキットが作ったバックアップではありません"
                           "（マニフェストがありません）",
                           f"invoke list --env={settings.env} で確認")
    assert manifest is not None
    return path, manifest


def _change(settings: Settings, entry: Entry, file: str, console: Console,
            update: Callable[[dict[str, Any]], bool],
            made_by_kit: Callable[[catalog.BackupFile, dict[str, Any] | None], bool] | None = None
            ) -> tuple[Path, dict[str, Any]]:
    """Under the env's lock and one work-log line: find the kit's backup, let ``update``
    change its manifest (it returns False when there is nothing to change), write it."""
    made_by_kit = made_by_kit or (lambda backup, manifest: manifest_matches(backup, manifest, settings.env))
    with recorded(settings.worklog_path, entry, console.redact), exclusive_lock(
        settings.backup_dir, settings.db_container, settings.db_name, entry.task
    ):
        path, manifest = _kit_backup(settings, file, made_by_kit)
        entry.file, entry.sha256 = str(path), manifest.get("sha256")
        if update(manifest):
            catalog.write_manifest(path, manifest)
    return path, manifest


def _require_file(settings: Settings, file: str | None, what: str = "") -> str:
    if not file:
        raise RunbookError("--file が指定されていません", f"invoke list --env={settings.env} で{what}確認", 2)
    return file


def _pin_entry(settings: Settings, task: str, file: str) -> tuple[Entry, Callable[[dict[str, Any]], None]]:
    """The work-log line of a pin change, and what records the pin before and after."""
    entry = Entry(task, settings.env, settings.db_name, settings.db_container, file=file)

    def note(manifest: dict[str, Any], before: bool) -> None:
        if before:
            entry.details["previous_keep_until"] = manifest.get("keep_until")
        else:
            entry.details.update(keep_until=manifest.get("keep_until"), label=manifest.get("label"))

    return entry, note


def pin(settings: Settings, file: str | None, keep: str | None, label: str | None = None,
        console: Console | None = None) -> tuple[Path, date]:
    """Keep an existing backup until a date (from today), optionally with a label."""
    console = console or Console(settings.secrets())
    file = _require_file(settings, file)
    if not keep:
        raise RunbookError("--keep が指定されていません", "例: --keep=10y, --keep=2036-03-31", 2)
    until = pins.parse_keep(keep, date.today())
    label = pins.check_label(label)
    entry, note = _pin_entry(settings, "pin", file)

    def update(manifest: dict[str, Any]) -> bool:
        note(manifest, before=True)
        manifest["keep_until"] = until.isoformat()
        if label:
            manifest["label"] = label
        note(manifest, before=False)
        return True

    path, _ = _change(settings, entry, file, console, update)
    console.summary(f"{path.name} を {until.isoformat()} まで保管します（prune・offsite-prune で消えません）")
    return path, until


def unpin(settings: Settings, file: str | None, console: Console | None = None) -> Path:
    """Remove a pin: the backup follows the retention rules again."""
    console = console or Console(settings.secrets())
    file = _require_file(settings, file)
    entry, note = _pin_entry(settings, "unpin", file)

    def update(manifest: dict[str, Any]) -> bool:
        note(manifest, before=True)
        if not manifest.get("keep_until"):
            raise RunbookError(f"{manifest.get('file')} は固定されていません（何もしません）",
                               f"invoke list --env={settings.env} で keep-until を確認")
        manifest["keep_until"] = None
        note(manifest, before=False)
        return True

    path, _ = _change(settings, entry, file, console, update)
    console.summary(f"{path.name} の固定を外しました（次の prune から保持期間の規則に従います）")
    return path


def accept_drift(settings: Settings, file: str | None, reason: str | None,
                 console: Console | None = None) -> Path:
    """Acknowledge an intended shrinkage: the backup stops being suspect (logged)."""
    console = console or Console(settings.secrets())
    file = _require_file(settings, file, "疑わしいバックアップを")
    if not reason or not reason.strip():
        raise RunbookError("--reason が指定されていません（なぜ減ったのかを作業ログに残します）",
                           "例: --reason='2019 年以前の監査ログを削除（チケット #123）'", 2)
    entry = Entry("accept-drift", settings.env, settings.db_name, settings.db_container)
    entry.details["reason"] = reason.strip()
    already: list[dict[str, Any]] = []

    def update(manifest: dict[str, Any]) -> bool:
        if not drift.is_suspect(manifest):
            accepted = (manifest.get("drift") or {}).get("accepted")
            if accepted:
                already.append(accepted)
                return False
            raise Refused(f"{manifest.get('file')} は疑わしいバックアップではありません（何もしません）",
                          f"invoke list --env={settings.env} で「疑わしい」ものを確認")
        block = dict(manifest.get("drift") or {})
        block["accepted"] = {"operator": operator(), "time": now_iso(), "reason": reason.strip()}
        manifest["drift"] = block
        manifest["suspect"] = False
        entry.details["findings"] = drift.describe(block.get("findings") or [])
        return True

    path, _ = _change(settings, entry, file, console, update,
                      lambda backup, manifest: drift.consistent(backup, manifest, settings.env))
    if already:
        console.summary(f"{path.name} は承認済みです（{already[0].get('operator')}、"
                        f"{already[0].get('time')}）。変更なし")
    else:
        console.summary(f"{path.name} の内容の変化を承認しました"
                        "（以後、比較の基準になり、保持期間の計算にも数えます）")
    return path
