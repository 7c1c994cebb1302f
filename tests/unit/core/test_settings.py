"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import KEYS, load_settings


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_defaults_and_backup_dir(tmp_path):
    write(tmp_path / ".env.prod", "DB_PASSWORD=s3cret\n")
    settings = load_settings("prod", tmp_path)
    assert settings.db_container == "knot-db" and settings.db_user == "app"
    assert settings.db_name == "app" and settings.backup_prefix == "knot"
    assert settings.backup_dir == tmp_path / "backups" / "prod"
    assert settings.protected is True
    assert "s3cret" not in repr(settings)


def test_shared_env_file_and_override(tmp_path):
    write(tmp_path / ".env", "DB_CONTAINER=shared-db\nBACKUP_PREFIX=knot\n")
    write(tmp_path / ".env.dev", "DB_NAME=app_dev\n")
    settings = load_settings("dev", tmp_path)
    assert settings.db_container == "shared-db" and settings.db_name == "app_dev"
    assert settings.protected is False


def test_process_environment_never_overrides(tmp_path, monkeypatch):
    write(tmp_path / ".env.prod", "DB_NAME=app\n")
    monkeypatch.setenv("DB_NAME", "other")
    monkeypatch.setenv("BACKUP_DIR", "/tmp/other")
    settings = load_settings("prod", tmp_path)
    assert settings.db_name == "app" and settings.backup_dir == tmp_path / "backups" / "prod"


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    write(tmp_path / ".env.prod", "DB_NMAE=app\n")
    with pytest.raises(RunbookError, match="DB_NAME"):
        load_settings("prod", tmp_path)


def test_unknown_env_lists_the_known_ones(tmp_path):
    write(tmp_path / ".env.prod", "")
    write(tmp_path / ".env.dev", "DB_NAME=app_dev\n")
    with pytest.raises(RunbookError) as raised:
        load_settings("stage", tmp_path)
    assert "dev, prod" in raised.value.one_line()
    with pytest.raises(RunbookError):
        load_settings(None, tmp_path)


def test_envs_may_not_share_a_folder_or_a_database(tmp_path):
    write(tmp_path / ".env.prod", "")
    write(tmp_path / ".env.dev", "")  # same container and database as prod
    with pytest.raises(RunbookError, match="同じ DB"):
        load_settings("dev", tmp_path)
    write(tmp_path / ".env.dev", "DB_NAME=app_dev\nBACKUP_DIR=backups/prod\n")
    with pytest.raises(RunbookError, match="BACKUP_DIR"):
        load_settings("dev", tmp_path)


def test_shared_file_may_not_hold_per_env_values(tmp_path):
    write(tmp_path / ".env", "BACKUP_DIR=backups\n")
    write(tmp_path / ".env.prod", "")
    with pytest.raises(RunbookError, match="BACKUP_DIR"):
        load_settings("prod", tmp_path)
    write(tmp_path / ".env", "BACKUP_DIR=/srv/backups/{env}\n")
    assert load_settings("prod", tmp_path).backup_dir == Path("/srv/backups/prod")


def test_identifiers_are_validated(tmp_path):
    write(tmp_path / ".env.prod", 'DB_NAME=app"; DROP DATABASE x; --\n')
    with pytest.raises(RunbookError, match="DB_NAME"):
        load_settings("prod", tmp_path)


def test_env_example_documents_every_key():
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    assert documented == set(KEYS)
