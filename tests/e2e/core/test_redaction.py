"""Secrets in output (issue 11, defect 7): every encoding of a password is masked, and
a short password never mangles the names that contain it.

The CLI tests use kit users of their own in the test container, whose passwords
are the hard cases: ``Xy@9/Secret+Pw`` (changed by URL encoding) and ``owl``
(short, and the name of the database).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from helpers import Cli, last_line
from pgrunbook.core.console import Console

HARD = "Xy@9/Secret+Pw"


def encodings(secret: str) -> set[str]:
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe=""))
    return {secret, quote(secret, safe=""), quote_plus(secret), quote(secret), lower_hex}


def test_every_encoding_of_a_secret_is_masked():
    console = Console([HARD], interactive=False)
    for form in encodings(HARD):
        assert console.redact(f"postgresql://kit:{form}@db:5432/app") == "postgresql://kit:***@db:5432/app"
        assert console.redact(f"password={form} end") == "password=*** end"


def test_a_space_in_a_secret_is_masked_in_the_form_encoding_too():
    secret = "correct horse/battery"
    console = Console([secret], interactive=False)
    assert console.redact(f"pw={quote_plus(secret)}&x=1") == "pw=***&x=1"


def test_a_weak_password_is_a_settings_warning(tmp_path):
    from pgrunbook.core.settings import load_settings

    cases = {"app": ["DB_USER", "DB_NAME"], "shop": ["DB_NAME"], "kit": ["DB_USER"],
             "Short1": ["8 文字未満"], "Long-Enough-Pw-1": []}
    for password, words in cases.items():
        (tmp_path / ".env.dev").write_text(f"DB_USER={'kit' if password == 'kit' else 'app'}\n"
                                           f"DB_NAME={'shop' if password == 'shop' else 'app'}\n"
                                           f"DB_PASSWORD={password}\n")
        warnings = load_settings("dev", tmp_path).warnings()
        assert bool(warnings) == bool(words), (password, warnings)
        for word in words:
            assert word in warnings[0], (password, warnings)
        assert all(password not in w.replace("DB_PASSWORD", "") for w in warnings if len(password) > 3)


def test_a_short_secret_is_masked_as_a_word_never_inside_a_longer_name():
    console = Console(["app"], interactive=False)
    assert console.redact("--previous=app_pgrunbook_previous_20261202") == (
        "--previous=app_pgrunbook_previous_20261202")
    assert console.redact("happy apps app1 $app app-1 knot-app-20261202.dump") == (
        "happy apps app1 $app app-1 knot-app-20261202.dump")
    assert console.redact("password app, user=app; x:app@host") == "password ***, user=***; x:***@host"


@pytest.fixture
def kit_user(pg):
    """A superuser of its own (name, password) in the test container; dropped afterwards."""
    made: list[tuple[str, list[str]]] = []

    def create(password: str, databases: list[str]) -> str:
        name = f"kit_{uuid.uuid4().hex[:8]}"
        literal = password.replace("'", "''")
        pg.psql(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{literal}'", "postgres")
        made.append((name, databases))
        return name

    yield create
    for name, prefixes in made:
        for database in pg.psql("SELECT datname FROM pg_database", "postgres").split():
            if any(database.startswith(p) for p in prefixes):
                pg.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', "postgres")
        pg.psql(f"DROP OWNED BY {name}; DROP ROLE {name}", "postgres")


def test_the_url_encoded_password_never_reaches_the_output(tmp_path, pg, kit_user):
    database = f"fox_{uuid.uuid4().hex[:6]}"
    pg.create_database(database, sample=True)
    user = kit_user(HARD, [database])
    cli = Cli(tmp_path)
    cli.write_env("qa", DB_CONTAINER=pg.name, DB_NAME=database, DB_USER=user, DB_PASSWORD=HARD,
                  POST_RESTORE_COMMAND="echo $DATABASE_URL")
    made = cli("backup", "--env=qa")
    assert made.returncode == 0, made.stderr
    restored = cli("restore-scratch", "--env=qa", f"--file={last_line(made.stdout)}",
                   env={"PGRUNBOOK_VERBOSE": "1"})
    assert restored.returncode == 0, restored.stderr
    scratch = last_line(restored.stdout)
    assert f"postgresql://{user}:***@localhost:5432/{scratch}" in restored.stderr  # the command ran
    output = restored.stdout + restored.stderr + (cli.backup_dir("qa") / "worklog.jsonl").read_text()
    for form in encodings(HARD):
        assert form not in output, form


def test_a_short_password_shows_the_rollback_command_whole_and_is_warned_about(tmp_path, pg, kit_user):
    database = f"owl{uuid.uuid4().hex[:4]}"
    password = database  # short, and the database's own name
    pg.create_database(database, sample=True)
    user = kit_user(password, [database])
    cli = Cli(tmp_path)
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=database, DB_USER=user, DB_PASSWORD=password)
    made = cli("backup", "--env=dev")
    assert made.returncode == 0, made.stderr
    replaced = cli("restore-replace", "--env=dev", f"--file={last_line(made.stdout)}", "--confirm=dev")
    assert replaced.returncode == 0, replaced.stderr
    previous = last_line(replaced.stdout)
    assert previous.startswith(f"{database}_pgrunbook_previous_"), previous
    assert f"--previous={previous} " in replaced.stderr  # the printed rollback command works as is
    assert database in pg.psql("SELECT datname FROM pg_database", "postgres").split()
    assert previous in pg.psql("SELECT datname FROM pg_database", "postgres").split()
    assert Path(last_line(made.stdout)).name.startswith("knot-dev-")
    assert "DB_PASSWORD" in made.stderr and "DB_NAME" in made.stderr  # the settings warning
