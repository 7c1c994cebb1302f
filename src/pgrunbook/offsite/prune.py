"""``offsite-prune``: OFFSITE_RETENTION_DAYS for the offsite copies; never the newest
real copy, never a locked or pinned one.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timedelta

from pgrunbook.core.console import Console
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import Entry, recorded
from pgrunbook.offsite.lock import protection
from pgrunbook.offsite.remote import Remote, RemoteBackup, dated_ahead, future_remote_note


def prune_remote(settings: Settings, dry_run: bool = False,
                 console: Console | None = None) -> list[RemoteBackup]:
    """Delete offsite copies older than OFFSITE_RETENTION_DAYS; never the newest one.

    Returns what was (or, on dry_run, would be) deleted. Each deletion writes
    its own work-log line (task ``offsite-delete``). Takes no lock, so the
    local ``prune`` may call it while holding its own. With bucket versioning
    a deletion leaves a delete marker; the bucket's lifecycle rule removes the
    old version later (runbooks/offsite.md).
    """
    console = console or Console(settings.secrets())
    entry = Entry("offsite-prune", settings.env, settings.db_name, settings.db_container)
    log = nullcontext() if dry_run else recorded(settings.worklog_path, entry, console.redact)
    with log:
        remote = Remote(settings)
        remote.probe()
        backups = remote.list()
        cutoff = datetime.now() - timedelta(days=settings.offsite_retention_days)
        ahead = dated_ahead(backups)
        if ahead:
            console.warn(future_remote_note(backups) or "")
        # the newest real copy stays whatever its age; one dated in the future is never it
        real = [b for b in backups if b not in ahead]
        doomed = []
        for backup in (b for b in real[:-1] if b.created < cutoff):
            reason = protection(settings, remote, backup)
            if reason:
                console.summary(f"残します: {remote.url(backup.key)}（{reason}）")
                continue
            doomed.append(backup)
        entry.details.update(remote=remote.location, kept=len(backups) - len(doomed))
        for backup in doomed:
            if dry_run:
                console.step(f"削除予定: {remote.url(backup.key)}")
                continue
            _delete_logged(settings, remote, backup, console)
        entry.details["deleted"] = len(doomed)
    verb = "削除予定" if dry_run else "削除"
    console.summary(f"オフサイトの保持期間 {settings.offsite_retention_days} 日: {verb} {len(doomed)} 件、"
                    f"残す {len(backups) - len(doomed)} 件（{remote.location}）")
    return doomed


def _delete_logged(settings: Settings, remote: Remote, backup: RemoteBackup, console: Console) -> None:
    entry = Entry("offsite-delete", settings.env, settings.db_name, settings.db_container,
                  file=remote.url(backup.key))
    with recorded(settings.worklog_path, entry, console.redact):
        remote.delete(backup.manifest_key)
        remote.delete(backup.key)
        console.step(f"削除: {remote.url(backup.key)}")
