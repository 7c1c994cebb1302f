"""cli.py's pure parts: invoke's parse errors in the kit's words, and the short flags."""

from __future__ import annotations

import importlib

import pytest

from helpers import ROOT
from pgrunbook.cli import SHORT_FLAGS, Usage, usage_error

TASKS = ("backup", "backup-sql", "restore-scratch", "restore-replace", "verify")
BACKUP = Usage("backup", ("--env", "--dry-run", "--no-owner", "--no-acl"), TASKS, ("dev",))


@pytest.mark.parametrize(("message", "usage", "words"), [
    ("No idea what '--no-ownr' is!", BACKUP, ["backup", "--no-ownr", "（--no-owner のことですか？）"]),
    ("No idea what '--no-ownr=1' is!", BACKUP, ["--no-ownr というオプション"]),
    ("No idea what 'bakup' is!", Usage(None, (), TASKS, ("dev",)), ["タスク bakup", "backup のことですか"]),
    ("No idea what \"it's\" is!", BACKUP, ["タスク it's はありません"]),
    ("No idea what 'prod' is!", Usage("backup", (), TASKS, ("dev", "prod")), ["--env=prod のことですか"]),
    ("No idea what '--env' is!", Usage(None, (), TASKS, ("prod",)), ["タスク名の後ろ", "--env=prod"]),
    ("Flag <Argument: env (e)> needed value and was not given one!", BACKUP,
     ["--env に値がありません", "--env=dev", "利用できる環境: dev"]),
    ("Flag <Argument: file (f)> needed value and was not given one!", BACKUP, ["--file に値がありません"]),
    ("Flag <Argument: dry-run [bool]> doesn't take any value!", BACKUP, ["--dry-run は値を取りません"]),
    ("'x' is ambiguous when given after an optional-value flag", BACKUP, ["invoke: 'x' is ambiguous"]),
])
def test_parse_errors_become_one_japanese_line_with_exit_2(message, usage, words):
    error = usage_error(message, usage)
    assert error.exit_code == 2
    line = error.one_line()
    assert line.startswith("エラー: ") and " → " in line and "\n" not in line
    for word in words:
        assert word in line, line


def test_the_env_example_prefers_dev_and_never_names_a_missing_env():
    only_prod = Usage("backup", (), TASKS, ("prod",))
    line = usage_error("Flag <Argument: env (e)> needed value and was not given one!", only_prod).one_line()
    assert "--env=prod" in line and "dev" not in line
    both = Usage("backup", (), TASKS, ("dev", "prod"))
    line = usage_error("Flag <Argument: env (e)> needed value and was not given one!", both).one_line()
    assert "例: --env=dev" in line


def test_every_task_has_only_the_kits_short_flags(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # tasks.py and tasks_by_area/, as the invoke command finds them
    tasks = importlib.import_module("tasks")
    seen = {}
    for name in tasks.namespace.task_names:
        for argument in tasks.namespace[name].get_arguments():
            shorts = [n for n in argument.names if len(n) == 1]
            long_name = max(argument.names, key=len)
            assert shorts in ([], [SHORT_FLAGS.get(long_name)]), (name, argument.names)
            for short in shorts:
                assert seen.setdefault(short, long_name) == long_name, (name, short)
    assert seen == {"e": "env", "f": "file"}
