"""The one adapter between invoke and the package: errors become clean exits.

Every task body runs through ``guarded``: a RunbookError becomes one line on
stderr and a nonzero exit; SIGTERM (cron killing a job, a system shutdown)
unwinds like Ctrl-C so partial files are removed.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from invoke import Exit

from pgrunbook.core import journal, worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, config_dir_from, load_settings
from pgrunbook.monitoring import metrics, notify

T = TypeVar("T")


class LazyModule:
    """A pgrunbook module imported on first use, so that ``invoke backup`` does not
    pay for the imports of offsite, the docs or restore (about 50 ms of a tiny
    backup's fixed time)."""

    def __init__(self, name: str) -> None:
        self._name = f"pgrunbook.{name}"

    def __getattr__(self, attribute: str) -> object:
        return getattr(importlib.import_module(self._name), attribute)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (every cleanup runs, the work log says
    "interrupted"), then ends with 128 + the signal's number and one line saying so."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


INTERRUPTED = "中断しました（{}。作成途中のファイルは削除済み）"


def guarded(action: Callable[[], T], console: Console | None = None) -> T:
    # SIGTERM (cron, shutdown) and SIGHUP (the ssh session dropped) unwind like
    # Ctrl-C, so cleanups run: no partial file, no database left closed
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        return action()
    except RunbookError as error:
        text = console.redact(error.one_line()) if console else error.one_line()
        raise Exit(text, code=error.exit_code) from None
    except KeyboardInterrupt:
        raise Exit(INTERRUPTED.format("Ctrl-C"), code=130) from None
    except Terminated as stop:
        raise Exit(INTERRUPTED.format(f"{stop.signal_name} を受信"), code=int(stop.code or 1)) from None
    except OSError as error:
        # a full disk anywhere (the work log, the lock file, a download): not a bug
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{error.filename}: " if error.filename else ""
        text = (f"エラー: ホストのディスクがいっぱいで書き込めません（{where}{error.strerror}） → "
                "df -h で確かめ、空きを作ってから再実行（バックアップなら invoke prune --env=...）")
        raise Exit(console.redact(text) if console else text, code=1) from None


def settings_for(
    project_root: Path, env: str | None, resolve: bool = False, apps: bool = False,
    task: str | None = None,
) -> tuple[Settings, Console]:
    """Load an env's settings, or exit with the one-line reason.

    ``resolve`` (tasks that touch the database): find the env's container
    (DB_CONTAINER, or DB_SERVICE by Compose's labels) and refuse an env that
    resolves to the same container and database as another env; ``apps``
    resolves APP_SERVICES too (restore-replace stops them). ``task``: the
    work-log name of the task, so that a container that cannot be found is
    logged and notified like any other failure of that task (cron's backup
    with the DB container down must still reach the webhook).
    """
    try:
        settings = load_settings(env, config_dir_from(project_root))
    except RunbookError as error:
        raise Exit(error.one_line(), code=error.exit_code) from None
    console = Console(settings.secrets())
    metrics.install(settings, console)  # every work-log line rewrites METRICS_FILE (when set)
    for warning in settings.warnings():
        console.warn(warning)
    notify.install(settings, console)  # every work-log line of this env notifies
    left = journal.notice(settings)  # what an interrupted run left: one line, at every task
    if left:
        console.warn(left)
    if resolve or apps:
        from pgrunbook.infra import discovery  # start-up time: only tasks that touch the DB need the SDK

        try:
            settings = _bound(settings, apps, task, console, discovery)
        except RunbookError as error:
            raise Exit(console.redact(error.one_line()), code=error.exit_code) from None
    return settings, console


def _bound(settings: Settings, apps: bool, task: str | None, console: Console, discovery) -> Settings:
    """The resolved settings; a failure is logged (and notified) as the task's failure,
    a success writes nothing (the task writes its own line)."""
    try:
        return discovery.bind(settings, apps=apps)
    except RunbookError:
        if task is not None:
            entry = worklog.Entry(task, settings.env, settings.db_name,
                                  settings.db_container or discovery.reference(settings))
            with contextlib.suppress(RunbookError), worklog.recorded(
                settings.worklog_path, entry, console.redact
            ):
                raise
        raise


def print_lines(lines: list[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
