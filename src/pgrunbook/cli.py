"""The one adapter between invoke and the package: errors become clean exits.

Every task body runs through ``guarded``: a RunbookError becomes one line on
stderr and a nonzero exit; SIGTERM (cron killing a job, a system shutdown)
unwinds like Ctrl-C so partial files are removed. invoke's own parse errors
(an unknown task or option, a flag without its value) become one Japanese line
with a "did you mean" and exit 2 (``install_usage_errors``); every task is made
with ``task``, whose only short flags are ``-e`` (--env) and ``-f`` (--file).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import errno
import importlib
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import invoke
from invoke import Exit, ParseError
from invoke.program import Program

from pgrunbook.core import journal, worklog
from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings, available_envs, config_dir_from, example_env, load_settings
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


# ---- the tasks' options: one meaning per short flag ---------------------------------------

# invoke gives each option the first free letter of its name, task by task: -o was
# --no-acl in backup and --ownership in the restores, and --no-acl ended as "--".
# The kit's only short flags, the same in every task:
SHORT_FLAGS = {"env": "e", "file": "f"}


class KitTask(invoke.Task):
    """An invoke task whose short flags are SHORT_FLAGS only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: object, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        return opts


def task(*args: Any, **kwargs: Any) -> Any:
    """invoke's ``@task`` (bare or with options), making a KitTask."""
    return invoke.task(*args, klass=KitTask, **kwargs)


# ---- invoke's own parse errors: one Japanese line, exit 2 ------------------------------

# invoke 3's wording of the errors its parser raises
NO_IDEA = re.compile(r"^No idea what (?P<token>'.*'|\".*\") is!$")
NEEDS_VALUE = re.compile(r"^Flag <Argument: (?P<name>[^\s>]+).*> needed value and was not given one!$")
TAKES_NO_VALUE = re.compile(r"^Flag <Argument: (?P<name>[^\s>]+).*> doesn't take any value!$")


@dataclass(frozen=True)
class Usage:
    """What a parse error is explained with: the task being parsed (None: before any
    task), its long options, every task's name, the envs that exist."""

    task: str | None
    options: Sequence[str]
    tasks: Sequence[str]
    envs: Sequence[str]


def _guess(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"（{close[0]} のことですか？）" if close else ""


def usage_error(message: str, usage: Usage) -> RunbookError:
    """invoke's parse error ``message`` as the kit's one line (exit 2)."""
    where = f"invoke --help {usage.task} でオプションを確認" if usage.task else "invoke --list でタスクを確認"
    unknown = NO_IDEA.match(message)
    if unknown:
        token = str(ast.literal_eval(unknown["token"]))
        if token.startswith("-"):
            option = token.split("=", 1)[0]
            if usage.task:
                return RunbookError(f"タスク {usage.task} に {option} というオプションはありません"
                                    f"{_guess(option, usage.options)}", where, 2)
            return RunbookError(f"{option} というオプションはありません",
                                f"タスクのオプションはタスク名の後ろに書く（例: invoke check "
                                f"--env={example_env(list(usage.envs))}）。invoke --list でタスクを確認", 2)
        guess = f"（--env={token} のことですか？）" if token in usage.envs else _guess(token, usage.tasks)
        return RunbookError(f"タスク {token} はありません{guess}", "invoke --list で一覧を確認", 2)
    needs = NEEDS_VALUE.match(message)
    if needs:
        flag = ("--" if len(needs["name"]) > 1 else "-") + needs["name"]
        listing = ", ".join(usage.envs) or "なし"
        example = (f"{flag}={example_env(list(usage.envs))}。利用できる環境: {listing}"
                   if flag == "--env" else f"{flag}=値")
        return RunbookError(f"{flag} に値がありません（例: {example}）", where, 2)
    no_value = TAKES_NO_VALUE.match(message)
    if no_value:
        flag = ("--" if len(no_value["name"]) > 1 else "-") + no_value["name"]
        return RunbookError(f"{flag} は値を取りません（{flag} とだけ書く）", where, 2)
    return RunbookError(f"引数を解釈できません（invoke: {message}）", where, 2)


def install_usage_errors(project_root: Path) -> None:
    """Make invoke's own parse errors the kit's one line and exit 2 (the README's exit-code
    table: 2 is a usage error; invoke itself prints English and exits 1).

    The ``invoke`` command loads tasks.py before it parses the tasks and their options,
    so tasks.py calls this: it wraps the two Program steps that can raise a ParseError
    after that (the tasks' arguments, and ``--help TASK``). Idempotent."""
    if getattr(Program, "_pgrunbook_usage_errors", False):
        return

    def wrapped(step: Callable[[Program], None]) -> Callable[[Program], None]:
        def run(program: Program) -> None:
            try:
                step(program)
            except ParseError as error:
                context = error.context
                task_name = getattr(context, "name", None)
                options = ([*context.flags.keys(), *context.inverse_flags.keys()]
                           if task_name and context is not None else [])
                usage = Usage(task_name, [o for o in options if o.startswith("--")],
                              sorted(program.collection.task_names),
                              available_envs(config_dir_from(project_root)))
                raise Exit(usage_error(str(error), usage).one_line(), code=2) from None

        return run

    Program.parse_tasks = wrapped(Program.parse_tasks)  # type: ignore[method-assign]
    Program.parse_cleanup = wrapped(Program.parse_cleanup)  # type: ignore[method-assign]
    Program._pgrunbook_usage_errors = True  # type: ignore[attr-defined]
