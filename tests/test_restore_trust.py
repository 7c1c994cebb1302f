"""A replace that reports success leaves the app seeing the same database:
owners, privileges, DB-level settings and grants (issue 11, defects 2-5, 12)."""

from __future__ import annotations

import uuid
from pathlib import Path

from conftest import PASSWORD, last_line
from test_backup import table_fingerprints
from test_restore import backup, databases, target  # noqa: F401 - fixture


def role(pg, name: str, options: str = "NOLOGIN") -> str:
    pg.psql(f'DO $$BEGIN CREATE ROLE "{name}" {options}; EXCEPTION WHEN duplicate_object THEN NULL; END$$',
            "postgres")
    return name


def owners(pg, database: str) -> set[str]:
    return set(pg.psql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                       database).split())


def test_no_owner_backup_replaced_on_its_own_server_keeps_the_owners(cli, pg, target):  # noqa: F811
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


def test_a_privilege_the_app_would_lose_is_refused_before_the_swap(cli, pg, target):  # noqa: F811
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


def test_database_level_settings_and_grants_survive_the_replace(cli, pg, target):  # noqa: F811
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


def test_masking_that_deletes_rows_does_not_block_prod_to_dev(cli, pg, target, tmp_path):  # noqa: F811
    prod_dump = backup(cli, "--env=prod")
    masking = tmp_path / "mask.sql"
    masking.write_text("DELETE FROM public.votes; UPDATE public.members SET email = 'masked-' || id || '@example.invalid';\n")
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=target + "_dev", DB_PASSWORD=PASSWORD,
                  MASKING_SQL=str(masking))
    result = cli("restore-replace", "--env=dev", f"--file={prod_dump}", "--confirm=dev")
    assert result.returncode == 0, result.stderr
    assert pg.psql("SELECT count(*) FROM public.votes", target + "_dev").strip() == "0"


def test_sql_restore_honours_no_owner_and_no_acl(cli, pg, target):  # noqa: F811
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


def test_a_non_superuser_that_cannot_end_sessions_is_told_what_to_grant_before_restoring(cli, pg, target):  # noqa: F811
    kit = role(pg, f"kit_{uuid.uuid4().hex[:6]}", f"LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    pg.psql(f'ALTER DATABASE "{target}" OWNER TO "{kit}"', "postgres")
    dump = backup(cli, "--env=prod")
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_USER=kit, DB_PASSWORD=PASSWORD)
    refused = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert refused.returncode == 1
    assert f"GRANT pg_signal_backend TO {kit}" in refused.stderr
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]


def test_operator_messages_of_replace_rollback_and_drop(cli, pg, target):  # noqa: F811
    dump = backup(cli, "--env=prod")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
    assert replaced.returncode == 0, replaced.stderr
    assert "データベース" in replaced.stderr and dump.name in replaced.stderr  # the banner, without a terminal
    assert "・  環境" not in replaced.stderr
    previous = last_line(replaced.stdout)
    rolled = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
    assert rolled.returncode == 0, rolled.stderr
    assert "_pgrunbook_rolledback_" in last_line(rolled.stdout)  # a result on stdout, as every task
    missing = cli("restore-drop", "--env=prod", f"--db={target}_no_such_db")
    assert missing.returncode == 1 and "ありません" in missing.stderr


def test_replace_with_an_archive_of_an_emptied_database_needs_the_shrink_confirmation(cli, pg, target):  # noqa: F811
    pg.psql("CREATE TABLE public.ledger (id int PRIMARY KEY, amount int)", target)
    dump_empty = backup(cli, "--env=prod")  # the ledger is empty in this archive
    pg.psql("INSERT INTO public.ledger SELECT g, g FROM generate_series(1, 5000) g; ANALYZE public.ledger", target)
    before = table_fingerprints(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dump_empty}", "--confirm=prod")
    assert refused.returncode == 1, refused.stderr
    assert "public.ledger" in refused.stderr and "5,000" in refused.stderr and "--accept-shrink" in refused.stderr
    assert table_fingerprints(pg, target) == before
    assert not [d for d in databases(pg) if d.startswith(target) and "_staging_" in d]
    accepted = cli("restore-replace", "--env=prod", f"--file={dump_empty}", "--confirm=prod", "--accept-shrink")
    assert accepted.returncode == 0, accepted.stderr
    assert pg.psql("SELECT count(*) FROM public.ledger", target).strip() == "0"
    logged = [line for line in (cli.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()
              if '"restore-replace"' in line and '"ok"' in line]
    assert logged and "shrink" in logged[-1]
