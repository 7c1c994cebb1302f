"""``pitr-setup``: refuses unless archive_mode is on and archive_command pushes to this
stanza (saying exactly what to set), then ``stanza-create`` and ``check``.
"""

from __future__ import annotations

from pgrunbook.core import worklog
from pgrunbook.core.console import Console
from pgrunbook.core.settings import Settings
from pgrunbook.pitr.pgbackrest import (
    Stanza,
    archive_settings,
    check_archiving,
    live_server,
    pgbackrest_version,
    require_stanza,
    run_pgbackrest,
    setup_commands,
    stanza_lock,
    work_entry,
)


def pitr_setup(settings: Settings, dry_run: bool, console: Console) -> list[str] | str:
    """stanza-create + check; returns the pgBackRest version (or the hand commands)."""
    stanza = require_stanza(settings)
    if dry_run:
        return setup_commands(settings)
    console.step(f"接続先: {settings.describe()} stanza={stanza}")
    logged = work_entry(settings, "pitr-setup")
    with worklog.recorded(settings.worklog_path, logged, console.redact) as entry, \
            stanza_lock(settings, "pitr-setup"):
        container, pg = live_server(settings)
        found = archive_settings(pg)
        check_archiving(found, stanza, console)
        version = pgbackrest_version(container)
        entry.details["pgbackrest_version"] = version
        console.step(f"{version}: stanza-create")
        repository = Stanza(container, settings, stanza, console)
        run_pgbackrest(repository, ["stanza-create"], "setup")
        console.step("check（WAL を 1 つ切り替えて、リポジトリに届くことを確かめます）")
        run_pgbackrest(repository, ["check"], "setup")
        if not found.track_commit_timestamp:
            console.warn("track_commit_timestamp=off: pitr-drill は対象時刻の行数を本番側で数えられません"
                         "（-c track_commit_timestamp=on を推奨）")
    console.summary(f"PITR の準備ができました: stanza={stanza}（{version}）")
    return version


