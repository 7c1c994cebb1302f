"""A replace that reports success leaves the app seeing the same database:
owners, privileges, DB-level settings and grants (issue 11, defects 2-5, 12)."""

from __future__ import annotations

from helpers import PASSWORD, backup, databases, last_line, table_fingerprints


def test_masking_that_deletes_rows_does_not_block_prod_to_dev(cli, pg, target, tmp_path):
    prod_dump = backup(cli, "--env=prod")
    masking = tmp_path / "mask.sql"
    masking.write_text("DELETE FROM public.votes; UPDATE public.members SET email = 'masked-' || id || '@example.invalid';\n")
    cli.write_env("dev", DB_CONTAINER=pg.name, DB_NAME=target + "_dev", DB_PASSWORD=PASSWORD,
                  MASKING_SQL=str(masking))
    result = cli("restore-replace", "--env=dev", f"--file={prod_dump}", "--confirm=dev")
    assert result.returncode == 0, result.stderr
    assert pg.psql("SELECT count(*) FROM public.votes", target + "_dev").strip() == "0"


def test_operator_messages_of_replace_rollback_and_drop(cli, pg, target):
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


def test_replace_with_an_archive_of_an_emptied_database_needs_the_shrink_confirmation(cli, pg, target):
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
