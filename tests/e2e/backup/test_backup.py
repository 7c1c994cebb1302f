"""backup / backup-sql through the real CLI against a real container."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from helpers import PASSWORD, backup_like_files, last_line, table_fingerprints


def structure(pg, database: str) -> dict[str, str]:
    return {
        "sequences": pg.psql("SELECT string_agg(s, ',' ORDER BY s) FROM (SELECT schemaname || '.' "
                             "|| sequencename || '=' || coalesce(last_value::text, 'null') AS s "
                             "FROM pg_sequences) AS q", database),
        "views": pg.psql("SELECT string_agg(v, ',' ORDER BY v) FROM (SELECT table_schema || '.' "
                         "|| table_name AS v FROM information_schema.views WHERE table_schema "
                         "NOT IN ('pg_catalog', 'information_schema')) AS q", database),
        "foreign_keys": pg.psql("SELECT count(*) FROM pg_constraint WHERE contype = 'f'", database),
        "view_rows": pg.psql("SELECT count(*) || ':' || sum(total) FROM accounting.monthly_totals",
                             database),
    }


@pytest.mark.matrix
def test_backup_custom_restores_every_table_exactly(cli, pg):
    result = cli("backup", "--env=prod")
    assert result.returncode == 0, result.stderr
    path = cli.home / "backups" / "prod" / last_line(result.stdout).rsplit("/", 1)[-1]
    assert last_line(result.stdout) == str(path)
    assert path.name.startswith("knot-prod-") and path.name.endswith(".dump")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for sidecar in (".sha256", ".json"):
        assert stat.S_IMODE(path.with_name(path.name + sidecar).stat().st_mode) == 0o600

    # sha256sum -c accepts the sidecar
    subprocess.run(["sha256sum", "-c", path.name + ".sha256"], cwd=path.parent, check=True,
                   capture_output=True)
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["env"] == "prod" and manifest["database"] == "app"
    assert manifest["format"] == "custom" and manifest["size"] == path.stat().st_size
    assert manifest["container"] == pg.name
    assert manifest["server_version"].split()[0] == pg.version
    counts = {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"]}
    assert counts["accounting.journal_entries"] == 600
    assert counts["audit.audit_log"] == 900

    # restore with plain pg_restore, independently of the kit, into a fresh database
    pg.put(path.read_bytes(), "/tmp/independent.dump")
    pg.create_database("independent_restore")
    pg.exec(["pg_restore", "-U", "app", "-d", "independent_restore", "/tmp/independent.dump"])
    assert table_fingerprints(pg, "independent_restore") == table_fingerprints(pg, "app")
    assert structure(pg, "independent_restore") == structure(pg, "app")
    assert "山田" in pg.psql("SELECT string_agg(name, ',') FROM members", "independent_restore")


@pytest.mark.matrix
def test_backup_sql_restores_with_psql(cli, pg):
    result = cli("backup-sql", "--env=prod")
    assert result.returncode == 0, result.stderr
    path = cli.home / "backups" / "prod" / last_line(result.stdout).rsplit("/", 1)[-1]
    assert path.suffix == ".sql"
    text = path.read_text(encoding="utf-8")
    assert "-- PostgreSQL database dump complete" in text
    subprocess.run(["sha256sum", "-c", path.name + ".sha256"], cwd=path.parent, check=True,
                   capture_output=True)
    pg.create_database("independent_sql")
    pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app", "-d", "independent_sql"],
            stdin=path.read_bytes())
    assert table_fingerprints(pg, "independent_sql") == table_fingerprints(pg, "app")
    assert structure(pg, "independent_sql") == structure(pg, "app")


def test_options_reach_pg_dump(cli, pg):
    pg.psql("GRANT SELECT ON public.members TO PUBLIC")
    plain = cli("backup-sql", "--env=prod", "--no-owner", "--no-acl")
    assert plain.returncode == 0, plain.stderr
    text = open(last_line(plain.stdout), encoding="utf-8").read()
    assert "OWNER TO" not in text and "GRANT " not in text

    custom = cli("backup", "--env=prod", "--no-owner", "--no-acl")
    assert custom.returncode == 0, custom.stderr
    path = last_line(custom.stdout)
    manifest = json.loads(open(path + ".json").read())
    # pg_dump ignores --no-owner for archives: the manifest keeps it for the restore
    assert manifest["options"] == {"no_owner": True, "no_acl": True}
    assert "--no-owner" in custom.stderr
    pg.put(open(path, "rb").read(), "/tmp/options.dump")
    _, listing, _ = pg.exec(["pg_restore", "--list", "/tmp/options.dump"])
    assert b" ACL " not in listing

    reference = cli("backup", "--env=prod")
    pg.put(open(last_line(reference.stdout), "rb").read(), "/tmp/reference.dump")
    _, listing, _ = pg.exec(["pg_restore", "--list", "/tmp/reference.dump"])
    assert b" ACL " in listing  # the check above can fail


def test_dry_run_prints_manual_commands_and_touches_nothing(cli):
    result = cli("backup", "--env=prod", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "pg_dump -U app -d app -F c" in result.stdout
    assert "pg_restore --list" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert not (cli.home / "backups").exists()


def test_two_backups_in_one_second_never_overwrite(cli):
    first = cli("backup", "--env=prod")
    second = cli("backup", "--env=prod")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert last_line(first.stdout) != last_line(second.stdout)
    files = [n for n in backup_like_files(cli.backup_dir("prod")) if n.endswith(".dump")]
    assert len(files) == 2


def test_every_run_is_in_the_work_log(cli, pg):
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME="no_such_db", DB_PASSWORD=PASSWORD)
    ok = cli("backup", "--env=prod")
    failed = cli("backup", "--env=dev")
    assert ok.returncode == 0 and failed.returncode != 0
    prod_log = [json.loads(x) for x in (cli.backup_dir("prod") / "worklog.jsonl").read_text().splitlines()]
    dev_log = [json.loads(x) for x in (cli.backup_dir("dev") / "worklog.jsonl").read_text().splitlines()]
    assert prod_log[-1]["result"] == "ok" and prod_log[-1]["task"] == "backup"
    assert prod_log[-1]["sha256"] and prod_log[-1]["file"].endswith(".dump")
    for key in ("time", "operator", "host", "env", "database", "duration_seconds", "error"):
        assert key in prod_log[-1]
    assert dev_log[-1]["result"] == "failed" and "no_such_db" in dev_log[-1]["error"]
    assert stat.S_IMODE((cli.backup_dir("prod") / "worklog.jsonl").stat().st_mode) == 0o600
