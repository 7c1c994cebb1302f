"""The database itself is the same after a replace: its locale provider and ICU or
builtin locale (so the app's ORDER BY sorts as before), collation, tablespace,
connection limit, template flag and comment, on every version (the locale
providers a version has: libc only before 15, ICU from 15, builtin from 17)."""

from __future__ import annotations

import uuid

import pytest

from helpers import PASSWORD, backup, databases, minimal_rights

# what a database is, as pg_database says it on every version (to_jsonb: the columns
# 15 and 17 added or renamed are simply absent before)
PROPERTIES = """
SELECT concat_ws(' | ', coalesce(to_jsonb(d)->>'datlocprovider', 'c'),
                 coalesce(to_jsonb(d)->>'datlocale', to_jsonb(d)->>'daticulocale', '-'),
                 d.datcollate, d.datctype, t.spcname, d.datconnlimit, d.datistemplate,
                 coalesce(shobj_description(d.oid, 'pg_database'), '-'))
FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = '{name}'
"""
SORTED = "SELECT string_agg(x, ',' ORDER BY x) FROM (VALUES ('a'), ('B'), ('A'), ('b'), ('ä')) v(x)"


def providers(major: int) -> list[str]:
    return ["libc"] + (["icu"] if major >= 15 else []) + (["builtin"] if major >= 17 else [])


def locale_clause(provider: str) -> str:
    if provider == "icu":
        return "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'"
    if provider == "builtin":
        return "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'"
    return ""


@pytest.fixture
def tablespace(pg):
    """A tablespace of the test's own: a directory inside the container owned by postgres."""
    name = f"fast_{uuid.uuid4().hex[:6]}"
    path = f"/var/lib/postgresql/{name}"
    pg.exec(["sh", "-c", f"mkdir -p {path} && chown postgres:postgres {path} && chmod 700 {path}"])
    pg.psql(f"CREATE TABLESPACE {name} LOCATION '{path}'", "postgres")
    yield name
    for db in pg.psql(f"SELECT d.datname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                      f"WHERE t.spcname = '{name}'", "postgres").split():
        pg.psql(f'ALTER DATABASE "{db}" IS_TEMPLATE false', "postgres")
        pg.psql(f'DROP DATABASE "{db}" WITH (FORCE)', "postgres")
    pg.psql(f"DROP TABLESPACE {name}", "postgres")
    pg.exec(["rm", "-rf", path])


@pytest.mark.matrix
def test_locale_provider_tablespace_limit_template_and_comment_survive_the_replace(cli, pg, tablespace):
    for provider in providers(pg.major):
        name = f"props_{provider}_{uuid.uuid4().hex[:6]}"
        pg.psql(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
                f"{locale_clause(provider)} TABLESPACE {tablespace} CONNECTION LIMIT 40", "postgres")
        pg.psql(f"COMMENT ON DATABASE {name} IS 'knot の本番 DB（{provider}）'", "postgres")
        pg.psql("CREATE TABLE words (w text); INSERT INTO words VALUES ('a'), ('B'), ('A'), ('b'), ('ä')", name)
        pg.psql(f"ALTER DATABASE {name} IS_TEMPLATE true", "postgres")
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=name, DB_PASSWORD=PASSWORD)
        before = pg.psql(PROPERTIES.format(name=name), "postgres").strip()
        order = pg.psql(SORTED, name).strip(), pg.psql("SELECT string_agg(w, ',' ORDER BY w) FROM words", name)
        dump = backup(cli, "--env=prod")
        result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert result.returncode == 0, (provider, result.stderr)
        assert pg.psql(PROPERTIES.format(name=name), "postgres").strip() == before, provider
        assert (pg.psql(SORTED, name).strip(),
                pg.psql("SELECT string_agg(w, ',' ORDER BY w) FROM words", name)) == order, provider
        [previous] = [d for d in databases(pg) if d.startswith(name + "_pgrunbook_previous_")]
        dropped = cli("restore-drop", "--env=prod", f"--db={previous}", "--confirm=prod")  # a template too
        assert dropped.returncode == 0, dropped.stderr


def test_a_non_superuser_is_told_the_tablespace_grant_before_anything_then_carries_it_all(
        cli, pg, tablespace):
    name = f"props_kit_{uuid.uuid4().hex[:6]}"
    pg.psql(f"CREATE DATABASE {name} TABLESPACE {tablespace} CONNECTION LIMIT 40", "postgres")
    pg.psql("CREATE TABLE words (w text); INSERT INTO words VALUES ('a'), ('B')", name)
    _owner, kit = minimal_rights(cli, pg, name)
    pg.psql(f"ALTER DATABASE {name} IS_TEMPLATE true", "postgres")
    before = pg.psql(PROPERTIES.format(name=name), "postgres").strip()
    dump = backup(cli, "--env=prod")
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert f"GRANT CREATE ON TABLESPACE {tablespace} TO {kit}" in refused.stderr, refused.stderr
    assert not [d for d in databases(pg) if d.startswith(name + "_")]  # refused before anything
    pg.psql(f"GRANT CREATE ON TABLESPACE {tablespace} TO {kit}", "postgres")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    assert pg.psql(PROPERTIES.format(name=name), "postgres").strip() == before
    [previous] = [d for d in databases(pg) if d.startswith(name + "_pgrunbook_previous_")]
    dropped = cli("restore-drop", "--env=prod", f"--db={previous}", "--confirm=prod")
    assert dropped.returncode == 0, dropped.stderr
