"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import KEYS, load_settings
from pgrunbook.infra.archive import ArchiveError, parse_header, sql_tail_is_complete
from pgrunbook.store import catalog

ROOT = Path(__file__).resolve().parents[1]


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


def test_backup_names_round_trip():
    when = datetime(2026, 1, 28, 2, 0, 5)
    name = catalog.backup_name("knot", "prod", when, "custom")
    assert name == "knot-prod-20260128-020005.dump"
    parsed = catalog.parse(Path(name))
    assert parsed and parsed.env == "prod" and parsed.created == when and not parsed.legacy
    legacy = catalog.parse(Path("knot-prod-20260128.dump"))
    assert legacy and legacy.legacy and legacy.format == "custom"
    assert catalog.parse(Path("knot-prod-20260128-020005.dump.partial")) is None
    assert catalog.parse(Path("notes.txt")) is None
    assert catalog.parse(Path("knot-prod-20260128-020005-2.sql")).format == "plain"


def test_free_name_never_reuses(tmp_path):
    when = datetime(2026, 1, 28, 2, 0, 5)
    first = catalog.free_name(tmp_path, "knot", "prod", when, "custom")
    first.with_name(first.name + ".json").write_text("{}")
    second = catalog.free_name(tmp_path, "knot", "prod", when, "custom")
    assert second != first and second.name == "knot-prod-20260128-020005-1.dump"


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def _str(text: str) -> bytes:
    data = text.encode()
    return _int(len(data)) + data


def test_parse_header_of_archive_1_14_and_1_15():
    dates = b"".join(_int(v) for v in (5, 0, 2, 28, 0, 126, 0))
    names = _str("app") + _str("15.18") + _str("15.18")
    old = b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + _int(-1) + dates + names
    header = parse_header(old)
    assert header.version == (1, 14, 0) and header.format == "custom"
    assert header.database == "app" and header.pg_dump_major == 15
    new = b"PGDMP" + bytes([1, 15, 0, 4, 8, 1, 3]) + dates + _str("app") + _str("16.4") + _str("17.0")
    header = parse_header(new)
    assert header.compression == "zstd" and header.pg_dump_major == 17
    with pytest.raises(ArchiveError):
        parse_header(b"PGDMP\x01")
    with pytest.raises(ArchiveError):
        parse_header(b"-- PostgreSQL database dump")


def test_sql_completion_comment():
    assert sql_tail_is_complete("...\n--\n-- PostgreSQL database dump complete\n--\n\n")
    assert sql_tail_is_complete("-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")
    assert not sql_tail_is_complete("COPY public.t (id) FROM stdin;\n1\n2\n")


def test_digest_hashes_the_whole_file_however_much_was_sent(tmp_path):
    import hashlib
    import itertools
    import os

    from pgrunbook.core.files import HashingReader

    path = tmp_path / "archive.dump"
    path.write_bytes(os.urandom(5 * (1 << 20) + 123))  # several chunks and a short tail
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert HashingReader(path).hexdigest() == expected  # nothing sent
    whole = HashingReader(path)
    assert b"".join(whole.chunks()) == path.read_bytes()
    assert whole.hexdigest() == expected
    partial = HashingReader(path)  # the reader (pg_restore on a broken file) stopped early
    sender = partial.chunks()  # still suspended, not closed, when the hash is asked for
    assert len(list(itertools.islice(sender, 2))) == 2
    assert partial.hexdigest() == expected
    assert next(sender, None) is None  # a sender still running stops: nothing is hashed twice
    assert partial.hexdigest() == expected


def test_cpuset_size():
    from pgrunbook.infra.container import cpuset_size

    assert cpuset_size("0") == 1
    assert cpuset_size("0-3") == 4
    assert cpuset_size("0-1,4,6-7") == 5
