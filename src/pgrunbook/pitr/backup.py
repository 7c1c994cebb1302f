"""``pitr-backup``: ``backup --type=full|diff`` (expiry follows the repository's retention
settings, as pgBackRest does after every backup).
"""

from __future__ import annotations

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.pitr import observation
from pgrunbook.pitr.pgbackrest import (
    BACKUP_TYPES,
    Stanza,
    archive_settings,
    backup_commands,
    check_archiving,
    live_server,
    repository_backups,
    require_stanza,
    run_pgbackrest,
    stanza_lock,
    work_entry,
)


def pitr_backup(settings: Settings, kind: str, dry_run: bool, console: Console) -> list[str] | str:
    """A base backup (full or differential); returns its label."""
    if kind not in BACKUP_TYPES:
        raise RunbookError(f"--type={kind!r} は使えません", "--type=full か --type=diff", exit_code=2)
    stanza = require_stanza(settings)
    if dry_run:
        return backup_commands(settings, kind)
    entry = work_entry(settings, "pitr-backup")
    entry.details["type"] = kind
    with worklog.recorded(settings.worklog_path, entry, console.redact), stanza_lock(settings, "pitr-backup"):
        container, pg = live_server(settings)
        check_archiving(archive_settings(pg), stanza, console)
        repository = Stanza(container, settings, stanza, console)
        before = {item.label for item in repository_backups(repository, "backup")}
        output = run_pgbackrest(repository, [f"--type={kind}", "backup"], "backup")
        label = output.value(r"new backup label = (\S+)")
        if not output.complete:  # made (exit code 0), its log lost: the repository names it
            label = _new_label(repository, before)
        if not label:
            raise RunbookError("pgBackRest のバックアップのラベルが出力にありません",
                               f"invoke pitr-status --env={settings.env} と pgbackrest info で確認")
        entry.file = label
        size = output.value(r"backup size = ([^,\n]+)")
        entry.details["size"] = size
        if kind == "diff" and label.endswith("F"):
            console.warn("以前のフルバックアップがないため、フルバックアップになりました")
        _refresh_backup_metrics(repository)
    console.summary(f"ベースバックアップ {label} を作りました（{kind}, {size or '?'}）")
    return label


def _refresh_backup_metrics(repository: Stanza) -> None:
    """The repository's base backups for the metrics (before the work-log line rewrites
    METRICS_FILE); a failure here is a warning, the backup is made."""
    console = repository.console
    try:
        sets = repository_backups(repository, "backup")
    except RunbookError as error:
        console.warn(f"pgbackrest info を読めませんでした（メトリクスは次の pitr-status で更新）: "
                     f"{error.message}")
        return
    observation.record_backups(repository.settings, sets, console)


def _new_label(repository: Stanza, before: set[str]) -> str | None:
    """The one base backup the repository has now and had not before the run."""
    repository.console.warn("pgBackRest の出力が届きませんでした（終了コード 0）。"
                            "リポジトリの一覧で新しいバックアップを確かめます")
    new = [item.label for item in repository_backups(repository, "backup")
           if item.label not in before]
    return new[-1] if len(new) == 1 else None


