"""The app sees the same database after a replace: owners, table, column and
database-level privileges and settings are carried (or the replace is refused
before the swap), also from --no-owner / --no-acl archives and .sql files."""

from __future__ import annotations

import uuid
from pathlib import Path

from helpers import PASSWORD, backup, databases, last_line, owners, role, table_fingerprints


def test_column_privileges_are_carried_and_compared(cli, pg, target):
    """GRANT SELECT (column): a --no-acl backup replaced on its own server must not
    report success while the app gets permission denied on that column, and a
    column grant made after the backup is a difference like a table grant."""
    reader = f"Col Reader {uuid.uuid4().hex[:6]}"  # capitals and a space: quoted everywhere
    pg.psql(f'CREATE ROLE "{reader}" NOLOGIN', "postgres")
    pg.psql(f'GRANT SELECT (name), UPDATE ("joined_on") ON public.members TO "{reader}"', target)

    def can(privilege: str, column: str) -> str:
        return pg.psql(f"SELECT has_column_privilege('{reader}', 'public.members', '{column}', "
                       f"'{privilege}')", target).strip()

    dump = backup(cli, "--env=prod", "--no-acl")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    assert (can("SELECT", "name"), can("UPDATE", "joined_on"), can("SELECT", "email")) == ("t", "t", "f")

    dump = backup(cli, "--env=prod")
    pg.psql(f'GRANT SELECT (email) ON public.members TO "{reader}"', target)  # after the backup
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert "public.members.email" in refused.stderr and reader in refused.stderr
    assert can("SELECT", "email") == "t"


def test_no_owner_replace_keeps_the_owners_of_types_domains_and_aggregates(cli, pg, target):
    """With a --no-owner backup the app's enum, domain and aggregate must stay the
    app owner's: its next migration (ALTER TYPE ... ADD VALUE) needs to own them."""
    owner = f"Type Owner {uuid.uuid4().hex[:6]}"
    pg.psql(f'CREATE ROLE "{owner}" NOLOGIN', "postgres")
    pg.psql(f'CREATE TYPE public."Mood Kind" AS ENUM (\'happy\', \'sad\'); '
            f'ALTER TYPE public."Mood Kind" OWNER TO "{owner}"; '
            f'CREATE DOMAIN public.score AS integer CHECK (VALUE >= 0); '
            f'ALTER DOMAIN public.score OWNER TO "{owner}"; '
            "CREATE AGGREGATE public.total_of(integer) (SFUNC = int4pl, STYPE = integer); "
            f'ALTER AGGREGATE public.total_of(integer) OWNER TO "{owner}"', target)

    def type_owners() -> set[str]:
        return set(pg.psql(
            "SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname IN ('Mood Kind', 'score') "
            "UNION ALL SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'total_of'",
            target).strip().splitlines())

    assert type_owners() == {owner}
    dump = backup(cli, "--env=prod", "--no-owner")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    assert type_owners() == {owner}
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                  "--ownership=restorer")  # every object the kit user's: the check names them
    assert refused.returncode == 1 and "public.total_of(integer)" in refused.stderr, refused.stderr






def test_no_owner_backup_replaced_on_its_own_server_keeps_the_owners(cli, pg, target):
    owner = role(pg, f"owner_{uuid.uuid4().hex[:6]}")
    reader = role(pg, f"reader_{uuid.uuid4().hex[:6]}")
    pg.psql(f'ALTER DATABASE "{target}" OWNER TO "{owner}"', "postgres")
    pg.psql("DO $$DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm') LOOP "
            f"EXECUTE format('ALTER TABLE public.%I OWNER TO %I', r.relname, '{owner}'); END LOOP; END$$",
            target)
    pg.psql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"', target)
    dump = backup(cli, "--env=prod", "--no-owner")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    assert owners(pg, target) == {owner}  # not the kit user's
    assert pg.psql(f"SELECT has_table_privilege('{reader}', 'public.votes', 'SELECT')", target).strip() == "t"
    # the operator can choose: restorer = every object DB_USER's, which the check then refuses
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                  "--ownership=restorer")
    assert refused.returncode == 1 and "所有者" in refused.stderr and "--accept-privilege-changes" in refused.stderr
    assert owners(pg, target) == {owner}


def test_a_privilege_the_app_would_lose_is_refused_before_the_swap(cli, pg, target):
    dump = backup(cli, "--env=prod")
    reader = role(pg, f"reader_{uuid.uuid4().hex[:6]}")
    pg.psql(f'GRANT SELECT, INSERT ON public.votes TO "{reader}"', target)  # granted after the backup
    before = table_fingerprints(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert "public.votes" in refused.stderr and reader in refused.stderr
    assert table_fingerprints(pg, target) == before
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]
    accepted = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                   "--accept-privilege-changes")
    assert accepted.returncode == 0, accepted.stderr


def test_database_level_settings_and_grants_survive_the_replace(cli, pg, target):
    reader = role(pg, f"reader_{uuid.uuid4().hex[:6]}")
    pg.psql(f'ALTER DATABASE "{target}" SET search_path = "$user", public', "postgres")
    pg.psql(f'ALTER DATABASE "{target}" SET statement_timeout = \'30s\'', "postgres")
    pg.psql(f'ALTER ROLE "{reader}" IN DATABASE "{target}" SET work_mem = \'8MB\'', "postgres")
    pg.psql(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{target}" FROM PUBLIC', "postgres")
    pg.psql(f'GRANT CONNECT ON DATABASE "{target}" TO "{reader}"', "postgres")
    settings_sql = ("SELECT coalesce(pg_get_userbyid(setrole), '-') || ' ' || array_to_string(setconfig, ';') "
                    "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                    "WHERE d.datname = '{db}' ORDER BY 1")
    acl_sql = "SELECT datacl FROM pg_database WHERE datname = '{db}'"
    before = (pg.psql(settings_sql.format(db=target), "postgres"), pg.psql(acl_sql.format(db=target), "postgres"))
    dump = backup(cli, "--env=prod")
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert result.returncode == 0, result.stderr
    after = (pg.psql(settings_sql.format(db=target), "postgres"), pg.psql(acl_sql.format(db=target), "postgres"))
    assert after == before
    public_role = role(pg, f"someone_{uuid.uuid4().hex[:6]}")
    assert pg.psql(f"SELECT has_database_privilege('{public_role}', '{target}', 'CONNECT')",
                   "postgres").strip() == "f"  # PUBLIC still cannot connect


def test_sql_restore_honours_no_owner_and_no_acl(cli, pg, target):
    other = role(pg, f"other_{uuid.uuid4().hex[:6]}")
    pg.psql(f'CREATE TABLE public.owned_by_other (id int); ALTER TABLE public.owned_by_other OWNER TO "{other}"; '
            f'GRANT SELECT ON public.members TO "{other}"', target)
    result = cli("backup-sql", "--env=prod")
    assert result.returncode == 0, result.stderr
    sql = Path(last_line(result.stdout))
    # the role is gone where the file is restored
    pg.psql(f'REASSIGN OWNED BY "{other}" TO app; DROP OWNED BY "{other}"', target)
    pg.psql(f'DROP ROLE "{other}"', "postgres")
    failed = cli("restore-scratch", "--env=prod", f"--file={sql}", f"--db={target}_sqlfail")
    assert failed.returncode == 1 and "--no-acl" in failed.stderr
    assert f"{target}_sqlfail" not in databases(pg)
    restored = cli("restore-scratch", "--env=prod", f"--file={sql}", f"--db={target}_sqlok",
                   "--no-owner", "--no-acl")
    assert restored.returncode == 0, restored.stderr
    assert pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'owned_by_other'",
                   f"{target}_sqlok").strip() == "app"
    assert table_fingerprints(pg, f"{target}_sqlok").keys() >= {"public.members", "public.votes"}


def test_a_non_superuser_that_cannot_end_sessions_is_told_what_to_grant_before_restoring(cli, pg, target):
    kit = role(pg, f"kit_{uuid.uuid4().hex[:6]}", f"LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    pg.psql(f'ALTER DATABASE "{target}" OWNER TO "{kit}"', "postgres")
    dump = backup(cli, "--env=prod")
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_USER=kit, DB_PASSWORD=PASSWORD)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1
    assert f"GRANT pg_signal_backend TO {kit}" in refused.stderr
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]
