"""What a new user ran into before any task ran (fresh clone, README only): invoke's
own parse errors in English with exit 1, short flags that changed meaning from task to
task, an --env example naming an env that does not exist, and a shell variable
silently ignored. No engine needed: the CLI stops before it looks for a container.
"""

from __future__ import annotations

import re

import pytest

from helpers import Cli


@pytest.fixture
def dev_only(tmp_path) -> Cli:
    """A fresh checkout as the README's first block leaves it: .env.dev only."""
    cli = Cli(tmp_path)
    cli.write_env("dev", DB_CONTAINER="knot-sandbox").chmod(0o600)
    return cli


def one_japanese_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("エラー: ") and " → " in lines[0], lines[0]
    for english in ("No idea", "Flag <Argument", "needed value", "Traceback"):
        assert english not in lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "words"), [
    (["backup", "--env=dev", "--no-ownr"], ["--no-ownr", "--no-owner のことですか"]),
    (["restore-replace", "--env=dev", "--no-prestagd"], ["--no-prestaged のことですか"]),
    (["backup", "--env"], ["--env に値がありません", "--env=dev"]),
    (["backup", "-e"], ["--env に値がありません", "--env=dev"]),
    (["bakup", "--env=dev"], ["bakup", "backup のことですか", "invoke --list"]),
    (["--help", "restore-scrach"], ["restore-scrach", "restore-scratch のことですか"]),
    (["backup", "dev"], ["--env=dev のことですか"]),
    (["--env=dev", "backup"], ["タスク名の後ろ"]),
    (["backup", "--env=dev", "-o"], ["-o", "invoke --help backup"]),
])
def test_invokes_own_parse_errors_are_one_japanese_line_with_exit_2(dev_only, argv, words):
    result = dev_only(*argv)
    assert result.returncode == 2, (result.returncode, result.stderr)
    line = one_japanese_line(result)
    for word in words:
        assert word in line, line
    assert "prod" not in line  # only dev exists
    assert result.stdout == ""
    assert not (dev_only.home / "backups").exists()


def test_short_flags_mean_one_thing_in_every_task(dev_only):
    for task in ("backup", "restore-scratch", "restore-replace", "verify"):
        shown = dev_only("--help", task)
        assert shown.returncode == 0, shown.stderr
        assert "--, " not in shown.stdout, shown.stdout  # --no-acl shown as "--, --no-acl"
        shorts = set(re.findall(r"^\s+(-[A-Za-z-])[ ,]", shown.stdout, re.MULTILINE))
        assert shorts <= {"-e", "-f"}, (task, shorts)  # -o was --no-acl in backup, --ownership here
        assert "-e STRING, --env=STRING" in shown.stdout
        if task != "backup":
            assert "-f STRING, --file=STRING" in shown.stdout
    short = dev_only("list", "-e", "dev")
    assert short.returncode == 0, short.stderr


def test_the_env_example_names_an_env_that_exists(dev_only):
    missing = dev_only("check")
    assert missing.returncode == 2
    line = one_japanese_line(missing)
    assert "--env=dev" in line and "--env=prod" not in line, line

    empty = Cli(dev_only.home / "empty")
    empty.home.mkdir()
    nothing = empty("check")
    assert nothing.returncode == 2
    assert ".env.dev" in one_japanese_line(nothing)


def test_a_shell_variable_the_files_do_not_use_is_named(dev_only):
    result = dev_only("list", "--env=dev", env={"SANDBOX_IMAGE": "postgres:16", "DB_NAME": "other"})
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "シェルの環境変数" in line]
    assert warning, result.stderr
    assert "SANDBOX_IMAGE" in warning[0] and "DB_NAME" in warning[0] and ".env.dev" in warning[0]
    same = dev_only("list", "--env=dev", env={"DB_CONTAINER": "knot-sandbox"})  # what the file says
    assert "シェルの環境変数" not in same.stderr
