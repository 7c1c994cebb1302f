"""Restores through the real CLI: scratch, replace (that cannot lose the live DB), guards."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest

from helpers import (
    APP_COMMAND,
    IMAGE,
    PASSWORD,
    backup,
    comment_of,
    databases,
    last_line,
    log_lines,
    run_on_a_terminal,
    table_fingerprints,
    wait_for,
)


@pytest.mark.matrix
def test_scratch_restore_of_dump_and_sql_reproduces_every_table(cli, pg, target):
    dump = backup(cli, "--env=prod")
    result = cli("restore-scratch", "--env=prod", f"--file={dump}", env={"PGRUNBOOK_VERBOSE": "1"})
    assert result.returncode == 0, result.stderr
    scratch = last_line(result.stdout)
    assert scratch.startswith(f"{target}_restore_")
    assert table_fingerprints(pg, scratch) == table_fingerprints(pg, target)
    # the test server publishes no port: how to look at the scratch database instead of a URL
    assert f"docker exec -it -e PGPASSWORD {pg.name} psql -U app -d {scratch}" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "20250510000000_add_votes" in result.stderr  # prisma: latest applied migration

    again = cli("restore-scratch", "--env=prod", f"--file={dump}")
    assert again.returncode == 1 and "既にあります" in again.stderr
    sql = cli("backup-sql", "--env=prod")
    replaced = cli("restore-scratch", "--env=prod", f"--file={last_line(sql.stdout)}", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert table_fingerprints(pg, scratch) == table_fingerprints(pg, target)

    listing = cli("restore-list", "--env=prod")
    assert scratch in listing.stdout
    refused = cli("restore-drop", "--env=prod", f"--db={target}")
    assert refused.returncode == 1 and target in databases(pg)
    dropped = cli("restore-drop", "--env=prod", f"--db={scratch}")
    assert dropped.returncode == 0 and scratch not in databases(pg)


def test_scratch_never_replaces_a_foreign_database(cli, pg, target):
    dump = backup(cli, "--env=prod")
    pg.create_database(f"{target}_foreign")
    result = cli("restore-scratch", "--env=prod", f"--file={dump}", f"--db={target}_foreign", "--replace")
    assert result.returncode == 1 and "検証用 DB（scratch）ではない" in result.stderr
    live = cli("restore-scratch", "--env=prod", f"--file={dump}", f"--db={target}")
    assert live.returncode == 1
    assert table_fingerprints(pg, target)  # untouched and still there


def test_sql_with_an_error_in_the_middle_leaves_nothing_half_restored(cli, pg, target):
    sql = Path(last_line(cli("backup-sql", "--env=prod").stdout))
    text = sql.read_text(encoding="utf-8")
    middle = text.index("COPY audit.audit_log")
    broken = sql.with_name("knot-prod-20200101.sql")
    broken.write_text(text[:middle] + "SELECT * FROM no_such_table;\n" + text[middle:], encoding="utf-8")
    result = cli("restore-scratch", "--env=prod", f"--file={broken}", "--db=" + target + "_half")
    assert result.returncode == 1 and "no_such_table" in result.stderr
    assert target + "_half" not in databases(pg)


@pytest.mark.matrix
def test_replace_with_open_sessions_keeps_previous_and_can_roll_back(cli, pg, target):
    pg.psql(f"COMMENT ON DATABASE \"{target}\" IS 'knot 本番'", "postgres")
    pg.psql("ANALYZE", target)  # the live database has planner statistics, as one in use does
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
            "('バックアップ後の投票', 1, '賛成', now())", target)
    after_backup = table_fingerprints(pg, target)
    sitting = [pg.run_detached("SELECT pg_sleep(60)", target) for _ in range(2)]  # on the live DB
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name IN "
                             f"('{sitting[0]}', '{sitting[1]}') AND state = 'active'", "postgres").strip() == "2",
             "both sessions connected and running on the live database")
    # --jobs=2: the archive goes into the container whatever the CPU count of the machine
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=2")
    assert result.returncode == 0, result.stderr
    previous = last_line(result.stdout)
    assert previous.startswith(f"{target}_pgrunbook_previous_")
    _, listing, _ = pg.exec(["ls", "-A", "/tmp"])
    assert b"pgrunbook-" not in listing  # the archive's copy is gone when the task returns
    assert table_fingerprints(pg, target) == before
    assert table_fingerprints(pg, previous) == after_backup
    assert not [d for d in databases(pg) if "_staging_" in d]
    assert "restore-rollback" in result.stderr
    assert comment_of(pg, target) == "knot 本番"  # the live database keeps its own comment
    # the new database has planner statistics: from the archive (18+, as the live database had
    # them when dumped) or from the kit's ANALYZE in the background (before 18)
    wait_for(lambda: pg.psql("SELECT count(*) FROM pg_stats WHERE schemaname = 'public'",
                             target).strip() != "0", "planner statistics in the new database")
    assert comment_of(pg, previous).startswith("pgrunbook:previous:prod:")
    assert pg.psql(f"SELECT datallowconn FROM pg_database WHERE datname = '{previous}'", "postgres").strip() == "t"

    rollback = cli("restore-rollback", "--env=prod", f"--previous={previous}", "--confirm=prod")
    assert rollback.returncode == 0, rollback.stderr
    assert table_fingerprints(pg, target) == after_backup
    assert comment_of(pg, target) == "knot 本番"
    tasks = [line["task"] for line in log_lines(cli)]
    assert "restore-replace" in tasks and "restore-rollback" in tasks


@pytest.mark.matrix
def test_replace_with_a_corrupt_archive_leaves_the_live_database_as_it_was(cli, pg, target):
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    data = dump.read_bytes()
    # with its sidecars: refused by the checksum before anything happens
    truncated = dump.with_name("knot-prod-20200101-000000.dump")
    truncated.write_bytes(data[: len(data) // 2])
    for suffix in (".sha256", ".json"):
        Path(str(truncated) + suffix).write_bytes(Path(str(dump) + suffix).read_bytes())
    refused = cli("restore-replace", "--env=prod", f"--file={truncated}", "--confirm=prod")
    assert refused.returncode == 1 and "途中で切れた" in refused.stderr
    # same size, one byte changed: the sha256 taken while restoring stops it before the swap
    tampered = dump.with_name("knot-prod-20200101-000001.dump")
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    tampered.write_bytes(bytes(changed))
    for suffix in (".sha256", ".json"):
        Path(str(tampered) + suffix).write_bytes(Path(str(dump) + suffix).read_bytes())
    refused = cli("restore-replace", "--env=prod", f"--file={tampered}", "--confirm=prod")
    assert refused.returncode == 1 and "sha256" in refused.stderr, refused.stderr
    # a hand-made one without sidecars: the staging restore itself fails
    legacy = dump.with_name("knot-prod-20200102.dump")
    legacy.write_bytes(data[: len(data) // 2])
    failed = cli("restore-replace", "--env=prod", f"--file={legacy}", "--confirm=prod", "--jobs=1")
    assert failed.returncode == 1 and "復元に失敗" in failed.stderr
    assert table_fingerprints(pg, target) == before
    assert not [d for d in databases(pg) if d.startswith(target) and "pgrunbook" in d]
    assert log_lines(cli)[-1]["result"] == "failed"


def test_replace_needs_a_confirmation(cli, pg, target):
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    none = cli("restore-replace", "--env=prod", f"--file={dump}")
    assert none.returncode == 1 and "--confirm=prod" in none.stderr
    wrong = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=dev")
    assert wrong.returncode == 1 and "一致しません" in wrong.stderr
    assert table_fingerprints(pg, target) == before
    assert [line["result"] for line in log_lines(cli)[-2:]] == ["refused", "refused"]
    assert not [d for d in databases(pg) if d.startswith(target) and "pgrunbook" in d]


def test_dev_archive_into_prod_needs_an_approver(cli, pg, target):
    dev_dump = backup(cli, "--env=dev")
    before = table_fingerprints(pg, target)
    refused = cli("restore-replace", "--env=prod", f"--file={dev_dump}", "--confirm=prod")
    assert refused.returncode == 1 and "--approved-by" in refused.stderr
    assert table_fingerprints(pg, target) == before
    approved = cli("restore-replace", "--env=prod", f"--file={dev_dump}", "--confirm=prod",
                   "--approved-by=鈴木部長")
    assert approved.returncode == 0, approved.stderr
    assert "dev-only@example.jp" in pg.psql("SELECT string_agg(email, ',') FROM members", target)
    last = log_lines(cli)[-1]
    assert last["result"] == "ok" and last["approved_by"] == "鈴木部長" and last["source_env"] == "dev"


def test_prod_data_into_dev_is_masked(cli, pg, target, tmp_path):
    prod_dump = backup(cli, "--env=prod")
    masking = tmp_path / "mask.sql"
    masking.write_text("UPDATE public.members SET email = 'masked-' || id || '@example.invalid';\n")
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=target + "_dev", DB_PASSWORD=PASSWORD,
                  MASKING_SQL=str(masking))
    result = cli("restore-replace", "--env=dev", f"--file={prod_dump}", "--confirm=dev")
    assert result.returncode == 0, result.stderr
    assert "個人情報" in result.stderr
    emails = pg.psql("SELECT string_agg(email, ',') FROM members", target + "_dev")
    assert "@example.jp" not in emails and "masked-1@example.invalid" in emails


def test_app_containers_are_stopped_for_the_swap_and_started_again(cli, pg, target, docker_engine):
    app_name = f"pgrunbook-app-{uuid.uuid4().hex[:6]}"
    app = docker_engine.containers.run(IMAGE, APP_COMMAND, name=app_name, detach=True,
                                       network_mode="none", entrypoint=[])
    try:
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                      APP_CONTAINERS=app_name)
        dump = backup(cli, "--env=prod")
        started_before = app.attrs["State"]["StartedAt"]
        result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod")
        assert result.returncode == 0, result.stderr
        app.reload()
        assert app.status == "running"
        assert app.attrs["State"]["StartedAt"] != started_before  # it was stopped and started

        broken = dump.with_name("knot-prod-20200102.dump")
        broken.write_bytes(dump.read_bytes()[:2000])
        started_before = app.attrs["State"]["StartedAt"]
        failed = cli("restore-replace", "--env=prod", f"--file={broken}", "--confirm=prod")
        assert failed.returncode == 1
        app.reload()
        assert app.status == "running"
    finally:
        app.remove(force=True)


def test_version_guard_refuses_a_newer_archive(cli, pg, target):
    dump = backup(cli, "--env=prod")
    data = bytearray(dump.read_bytes())
    # header strings: database, server version "15.x (...)", then pg_dump's version
    server = data.find(b"15.", 0, 400)
    made_by = data.find(b"15.", data.find(b")", server) + 1, 400)
    data[made_by:made_by + 2] = b"99"
    patched = dump.with_name("knot-prod-20200103.dump")
    patched.write_bytes(bytes(data))
    result = cli("restore-scratch", "--env=prod", f"--file={patched}")
    assert result.returncode == 1 and "99." in result.stderr
    assert re.search(r"PostgreSQL 15\.\d+ には戻せません", result.stderr)  # the server's version
    assert not [d for d in databases(pg) if d.startswith(target + "_restore")]


@pytest.mark.matrix
def test_verify_restore_test(cli, pg, target):
    dump = backup(cli, "--env=prod")
    ok = cli("verify", "--env=prod", "--restore-test")
    assert ok.returncode == 0, ok.stderr
    assert "復元テスト OK" in ok.stderr
    manifest_path = Path(str(dump) + ".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"][0]["rows"] += 1
    manifest_path.write_text(json.dumps(manifest))
    different = cli("verify", "--env=prod", "--restore-test")
    assert different.returncode == 1 and "差異" in different.stderr
    assert not [d for d in databases(pg) if "_verify_" in d]


def test_replace_on_a_terminal_asks_for_env_and_database(cli, pg, target):
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    wrong = run_on_a_terminal(cli, ["restore-replace", "--env=prod", f"--file={dump}"],
                              b"prod\nwrong_db\n")
    assert wrong.returncode == 1 and "一致しません" in wrong.stderr
    assert "コンテナ" in wrong.stderr and dump.name in wrong.stderr  # the banner
    assert table_fingerprints(pg, target) == before
    right = run_on_a_terminal(cli, ["restore-replace", "--env=prod", f"--file={dump}"],
                              f"prod\n{target}\n".encode())
    assert right.returncode == 0, right.stderr
    assert last_line(right.stdout).startswith(f"{target}_pgrunbook_previous_")


def test_post_restore_checks_report_prisma_state_and_run_the_host_command(cli, pg, target):
    pg.psql("INSERT INTO public._prisma_migrations (id, checksum, migration_name, started_at) "
            "VALUES ('broken-1', 'c', '20251101000000_half_applied', now())", target)
    dump = backup(cli, "--env=prod")
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  POST_RESTORE_COMMAND='echo "$DATABASE_URL" > url.txt')
    result = cli("restore-scratch", "--env=prod", f"--file={dump}", env={"PGRUNBOOK_VERBOSE": "1"})
    assert result.returncode == 0, result.stderr
    assert "20251101000000_half_applied（failed）" in result.stderr
    url = (cli.home / "url.txt").read_text().strip()
    assert url == f"postgresql://app:{PASSWORD}@localhost:5432/{last_line(result.stdout)}"
    assert PASSWORD not in result.stderr + result.stdout

    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD,
                  POST_RESTORE_COMMAND="exit 3")
    failing = cli("restore-scratch", "--env=prod", f"--file={dump}", "--replace")
    assert failing.returncode == 1 and "確認コマンド" in failing.stderr


def test_row_counts_match_the_dump_while_the_database_is_written_to(cli, pg, target):
    """The manifest's counts come from pg_dump's own snapshot: a busy database still
    passes the restore test (counting before the dump would not)."""
    pg.psql("CREATE TABLE public.busy (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())", target)
    pg.run_detached("DO $$ BEGIN FOR i IN 1..400000 LOOP INSERT INTO public.busy DEFAULT VALUES; "
                    "COMMIT; END LOOP; END $$", target)
    try:
        wait_for(lambda: pg.psql("SELECT count(*) > 0 FROM public.busy", target).strip() == "t",
                 "the writer writing")
        results = [cli("backup", "--env=prod") for _ in range(3)]
        assert all(r.returncode == 0 for r in results), results[-1].stderr
        counts = [json.loads(Path(last_line(r.stdout) + ".json").read_text())["tables"] for r in results]
        busy = [next(t["rows"] for t in c if t["name"] == "busy") for c in counts]
        assert busy[0] < busy[1] < busy[2]  # the writer really was writing
        for result in results:
            check = cli("verify", "--env=prod", f"--file={last_line(result.stdout)}", "--restore-test")
            assert check.returncode == 0, check.stderr
    finally:
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{target}' "
                "AND query LIKE 'DO %'", "postgres")


def test_a_restore_the_disk_cannot_hold_is_refused_before_it_starts(cli, pg, target):
    dump = backup(cli, "--env=prod")
    huge = dump.with_name("knot-prod-20200104.dump")
    huge.write_bytes(dump.read_bytes())
    os.truncate(huge, 8 * 1024**4)  # sparse: 8 TiB on paper, a few KiB on disk
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target + "_absent", DB_PASSWORD=PASSWORD)
    result = cli("restore-scratch", "--env=prod", f"--file={huge}", f"--db={target}_huge")
    assert result.returncode == 1 and "ディスクの空きが足りません" in result.stderr, result.stderr
    assert f"{target}_huge" not in databases(pg)
