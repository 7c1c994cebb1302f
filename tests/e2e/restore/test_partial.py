"""restore-partial and restore-partial-undo through the real CLI, on the real engine:
each mode with the app writing meanwhile, parents brought back, generated and
identity columns, triggers, sequences, a table without a primary key, kill -9
at each step of the apply, undo with and without later changes, a .sql source."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from helpers import (
    PASSWORD,
    app_transaction_holding,
    backup,
    databases,
    last_line,
    log_lines,
    table_fingerprints,
    wait_for,
)

SELECTED = "topic = '役員選任の件'"
APPLICATION = "pgrunbook-partial"


def selection(pg, database: str, where: str = SELECTED) -> str:
    """The selected votes, every column, in key order."""
    return pg.psql(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY id)), '') "
                   f"FROM public.votes t WHERE {where}", database).strip()


def mistakes(pg, database: str) -> None:
    """What happened after the backup: 5 votes deleted, 3 changed, 2 added (by two new
    members), all in the selected topic."""
    pg.psql(f"DELETE FROM public.votes WHERE {SELECTED} AND member_id BETWEEN 1 AND 5", database)
    pg.psql(f"UPDATE public.votes SET choice = '取り消し' WHERE {SELECTED} AND member_id BETWEEN 11 AND 13",
            database)
    pg.psql("INSERT INTO public.members (name, email, joined_on) VALUES ('後から 入会', 'late1@example.jp', "
            "'2026-01-01'), ('後から 二人目', 'late2@example.jp', '2026-01-02')", database)
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) SELECT '役員選任の件', id, '賛成', "
            "'2026-01-03' FROM public.members WHERE email LIKE 'late%'", database)


class AppWriting:
    """A detached psql session that writes other rows all the time: an audit line and
    a vote of another topic (outside the selection), committed one by one."""

    def __init__(self, pg, database: str) -> None:
        self.pg, self.database = pg, database
        self.name = f"app-{uuid.uuid4().hex[:8]}"
        pg.run_detached(
            "DO $$ BEGIN FOR i IN 1..100000 LOOP "
            "INSERT INTO audit.audit_log (at, action, payload) VALUES (clock_timestamp(), 'app', '{}'); "
            "UPDATE public.votes SET cast_at = clock_timestamp() WHERE topic = '2025年度予算案' AND member_id = 2; "
            "COMMIT; PERFORM pg_sleep(0.02); END LOOP; END $$", database, app_name=self.name)
        wait_for(lambda: self.written() > 3, "the app to write")
        self.pid = self.session()

    def session(self) -> str:
        return self.pg.psql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{self.name}'",
                            "postgres").strip()

    def written(self) -> int:
        return int(self.pg.psql("SELECT count(*) FROM audit.audit_log WHERE action = 'app'", self.database))

    def stop(self) -> None:
        self.pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{self.name}'",
                     "postgres")


def app_writes_at_confirmation(tmp_path, pg, database: str, sql: str) -> dict[str, str]:
    """The environment of a run during whose confirmation the app runs ``sql`` (a
    sitecustomize that wraps restore-partial's confirm)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import docker\n"
        "from pgrunbook.restore import partial\n"
        "_confirm = partial.confirm\n"
        "def confirm(*args, **kwargs):\n"
        "    _confirm(*args, **kwargs)\n"
        f"    docker.from_env().containers.get({pg.name!r}).exec_run(\n"
        f"        ['psql', '-U', 'app', '-d', {database!r}, '-c', {sql!r}],\n"
        f"        environment={{'PGPASSWORD': {PASSWORD!r}}})\n"
        "partial.confirm = confirm\n")
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def partial(cli, dump, *args: str, env: dict[str, str] | None = None):
    return cli("restore-partial", "--env=prod", f"--file={dump}", *args, "--confirm=prod",
               env={"PGRUNBOOK_VERBOSE": "1", **(env or {})})


@pytest.mark.parametrize("mode", ["missing", "changed", "exact"])
def test_each_mode_puts_back_the_selection_while_the_app_keeps_writing(cli, pg, target, mode):
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    other_topic = selection(pg, target, "topic <> '役員選任の件'")
    mistakes(pg, target)
    app = AppWriting(pg, target)
    try:
        written = app.written()
        done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", f"--mode={mode}")
        assert done.returncode == 0, done.stderr
        assert app.written() > written  # the app went on writing through the run
        assert app.session() == app.pid  # its session was never ended
    finally:
        app.stop()
    restored = pg.psql(f"SELECT count(*) FROM public.votes WHERE {SELECTED} AND member_id BETWEEN 1 AND 5",
                       target).strip()
    assert restored == "5"  # the 5 deleted votes are back
    changed = "member_id BETWEEN 11 AND 13"
    still_changed = pg.psql(f"SELECT count(*) FROM public.votes WHERE {SELECTED} AND {changed} "
                            "AND choice = '取り消し'", target).strip()
    added = pg.psql(f"SELECT count(*) FROM public.votes WHERE {SELECTED} AND cast_at >= '2026-01-03'",
                    target).strip()
    if mode == "missing":
        assert (still_changed, added) == ("3", "2")
    elif mode == "changed":
        assert (still_changed, added) == ("0", "2")
    else:
        assert selection(pg, target) == before
    assert "votes: 同じ" in done.stderr and "バックアップにだけある（その後に削除） 5 行" in done.stderr
    # outside the selection: the app's own writes stand
    assert selection(pg, target, "topic <> '役員選任の件'") != other_topic
    record = log_lines(cli)[-1]
    assert record["task"] == "restore-partial" and record["result"] == "ok", record
    expected = {"missing": {"ins": 5}, "changed": {"ins": 5, "upd": 3}, "exact": {"ins": 5, "upd": 3, "del": 2}}
    assert record["counts"]["public.votes"] == expected[mode]
    undo = Path(record["undo"])
    assert oct(undo.stat().st_mode & 0o777) == "0o600" and undo.parent == cli.backup_dir("prod") / "partial"
    assert record["undo_sha256"] == __import__("hashlib").sha256(undo.read_bytes()).hexdigest()
    assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]  # the work database is gone


def test_parents_are_brought_back_and_listed_as_far_as_the_foreign_keys_reach(cli, pg, target):
    pg.psql("INSERT INTO public.members (id, name, email, joined_on) VALUES (900, '退会 済子', 'gone@example.jp', "
            "'2024-01-01'); INSERT INTO accounting.journal_entries (id, entry_date, description, debit_account, "
            "credit_account, amount, created_by) VALUES (9000, '2025-12-01', '退会前の仕訳', '現金', '会費収入', 500, "
            "900); INSERT INTO accounting.approvals (entry_id, approver_id, status, decided_at) VALUES "
            "(9000, 900, '承認', now())", target)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    pg.psql("DELETE FROM accounting.approvals WHERE entry_id = 9000; "
            "DELETE FROM accounting.journal_entries WHERE id = 9000; DELETE FROM public.members WHERE id = 900",
            target)
    done = partial(cli, dump, "--table=accounting.approvals", "--mode=missing")
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, target) == before  # approval, its entry and that entry's member: all back
    assert "→ accounting.journal_entries: 親の行を戻す 1 行" in done.stderr
    assert "→ public.members: 親の行を戻す 1 行" in done.stderr
    assert "親の行（戻す行が参照し、稼働中の DB にない）: キー 9000" in done.stderr
    counts = log_lines(cli)[-1]["counts"]
    assert counts == {"accounting.approvals": {"ins": 1}, "accounting.journal_entries": {"par": 1},
                      "public.members": {"par": 1}}


LEDGER = """
CREATE TABLE public.ledger (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount int NOT NULL,
                            tax int GENERATED ALWAYS AS (amount / 10) STORED, note text);
CREATE TABLE public.ledger_audit (id serial PRIMARY KEY, ledger_id int, action text);
CREATE FUNCTION public.ledger_audit() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.ledger_audit (ledger_id, action) VALUES (NEW.id, TG_OP); RETURN NEW; END$$;
CREATE TRIGGER ledger_audit AFTER INSERT OR UPDATE ON public.ledger FOR EACH ROW EXECUTE FUNCTION public.ledger_audit();
INSERT INTO public.ledger (amount, note) SELECT g * 100, '仕訳 ' || g FROM generate_series(1, 10) AS g;
"""


def audits(pg, database: str) -> int:
    return int(pg.psql("SELECT count(*) FROM public.ledger_audit", database))


def test_generated_identity_trigger_and_sequence(cli, pg, target):
    """A table emptied with its sequence restarted (TRUNCATE … RESTART IDENTITY): the rows come
    back with their keys (identity ALWAYS), the generated column recomputed, the audit
    trigger kept quiet and working after, and the sequence moved past the keys put back."""
    pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app", "-d", target], stdin=LEDGER.encode())
    dump = backup(cli, "--env=prod")
    rows = pg.psql("SELECT id, amount, tax, note FROM public.ledger ORDER BY id", target)
    pg.psql("TRUNCATE public.ledger RESTART IDENTITY", target)
    quiet = audits(pg, target)
    done = partial(cli, dump, "--table=public.ledger", "--mode=missing")
    assert done.returncode == 0, done.stderr
    assert pg.psql("SELECT id, amount, tax, note FROM public.ledger ORDER BY id", target) == rows
    assert audits(pg, target) == quiet  # the backup's rows as they were: no trigger fired
    assert "シーケンス public.ledger_id_seq を 10 まで進めました" in done.stderr, done.stderr
    pg.psql("INSERT INTO public.ledger (amount) VALUES (5)", target)
    assert pg.psql("SELECT max(id) FROM public.ledger", target).strip() == "11"
    assert audits(pg, target) == quiet + 1  # the trigger is back on

    pg.psql("DELETE FROM public.ledger WHERE id <= 3", target)
    fired = partial(cli, dump, "--table=public.ledger", "--mode=missing", "--fire-triggers")
    assert fired.returncode == 0, fired.stderr
    assert audits(pg, target) == quiet + 1 + 3  # asked for: the audit trigger fired for each row


def test_triggers_the_kit_cannot_switch_off_refuse_without_ownership(cli, pg, target):
    pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app", "-d", target], stdin=LEDGER.encode())
    other = f"clerk_{uuid.uuid4().hex[:6]}"
    pg.psql(f"CREATE ROLE {other} LOGIN PASSWORD '{PASSWORD}'", "postgres")
    try:
        pg.psql(f"ALTER ROLE {other} CREATEDB", "postgres")  # the work database is the kit user's own
        pg.psql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {other}; "
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {other}", target)
        dump = backup(cli, "--env=prod")
        pg.psql("DELETE FROM public.ledger WHERE id = 4", target)
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD, DB_USER=other)
        refused = partial(cli, dump, "--table=public.ledger", "--mode=missing")
        assert refused.returncode == 1
        assert "トリガー（ledger_audit）" in refused.stderr and "--fire-triggers" in refused.stderr
        assert pg.psql("SELECT count(*) FROM public.ledger WHERE id = 4", target).strip() == "0"
    finally:
        pg.psql(f"DROP OWNED BY {other} CASCADE", target)
        pg.psql(f"DROP ROLE {other}", "postgres")


def test_a_table_without_a_primary_key_is_refused_or_takes_a_key(cli, pg, target):
    """Its key column is named "kind", as a column of the kit's own work tables once was."""
    pg.psql("CREATE TABLE public.tally (kind text NOT NULL, member_count int NOT NULL); "
            "INSERT INTO public.tally SELECT topic, count(*) FROM public.votes GROUP BY topic", target)
    dump = backup(cli, "--env=prod")
    before = pg.psql("SELECT * FROM public.tally ORDER BY kind", target)
    pg.psql("DELETE FROM public.tally WHERE kind = '役員選任の件'", target)
    deleted = pg.psql("SELECT * FROM public.tally ORDER BY kind", target)
    refused = partial(cli, dump, "--table=public.tally", "--mode=missing")
    assert refused.returncode == 1, refused.stderr
    assert "主キーがないため、行を特定できません" in refused.stderr and "--key" in refused.stderr
    done = partial(cli, dump, "--table=public.tally", "--mode=missing", "--key=kind")
    assert done.returncode == 0, done.stderr
    assert pg.psql("SELECT * FROM public.tally ORDER BY kind", target) == before
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert pg.psql("SELECT * FROM public.tally ORDER BY kind", target) == deleted
    pg.psql("INSERT INTO public.tally VALUES ('2025年度予算案', 1)", target)
    duplicate = partial(cli, dump, "--table=public.tally", "--mode=exact", "--key=kind")
    assert duplicate.returncode == 1 and "重複しています" in duplicate.stderr, duplicate.stderr


def test_exact_never_deletes_a_row_others_reference(cli, pg, target):
    dump = backup(cli, "--env=prod")
    pg.psql("INSERT INTO public.members (id, name, email, joined_on) VALUES (700, '新 会員', 'new@example.jp', "
            "'2026-01-01'); INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES "
            "('新しい議題', 700, '賛成', now())", target)
    before = table_fingerprints(pg, target)
    refused = partial(cli, dump, "--table=public.members", "--mode=exact")
    assert refused.returncode == 1
    assert "public.votes の 1 行" in refused.stderr and "public.members の削除する行を参照しています" in refused.stderr
    assert table_fingerprints(pg, target) == before


@pytest.mark.parametrize("stage", ["partial-locked", "partial-apply", "partial-commit"])
def test_kill_9_at_each_step_of_the_apply_leaves_nothing_applied_and_a_rerun_completes(cli, pg, target, stage):
    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    after_mistakes = table_fingerprints(pg, target)
    killed = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact",
                     env={"PGRUNBOOK_TEST_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # psql in the container reads the end of its input and ends: the transaction is rolled back
    wait_for(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION}'",
                             "postgres").strip() == "0", "the kit's sessions to end")
    assert table_fingerprints(pg, target) == after_mistakes
    listed = cli("restore-list", "--env=prod")  # the killed run's work database, as the kit's own
    assert "\tpartial\t" in listed.stdout, listed.stdout
    if stage == "partial-commit":  # the undo file is there, the run is not applied: undo says so
        assert log_lines(cli)[-1]["result"] == "started"
        not_applied = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
        assert not_applied.returncode == 1 and "適用されていません" in not_applied.stderr, not_applied.stderr
    rerun = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert rerun.returncode == 0, rerun.stderr
    assert table_fingerprints(pg, target) != after_mistakes
    folder = cli.backup_dir("prod") / "partial"
    assert not list(folder.glob(".*")), list(folder.iterdir())  # no half-written undo file, no work folder
    assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]


def test_undo_reverses_the_last_run_once_and_refuses_rows_changed_since(cli, pg, target):
    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    after_mistakes = table_fingerprints(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    run = last_line(done.stdout)
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert table_fingerprints(pg, target) == after_mistakes
    record = log_lines(cli)[-1]
    assert record["task"] == "restore-partial-undo" and record["run"] == run and record["result"] == "ok"
    again = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert again.returncode == 1 and "取り消し済み" in again.stderr

    second = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert second.returncode == 0, second.stderr
    pg.psql(f"UPDATE public.votes SET choice = '棄権' WHERE {SELECTED} AND member_id = 3", target)
    changed_since = table_fingerprints(pg, target)
    refused = cli("restore-partial-undo", "--env=prod", f"--run={last_line(second.stdout)}", "--confirm=prod")
    assert refused.returncode == 1
    key = pg.psql(f"SELECT id FROM public.votes WHERE {SELECTED} AND member_id = 3", target).strip()
    assert f"public.votes（{key}）" in refused.stderr and "取り消しません" in refused.stderr, refused.stderr
    assert table_fingerprints(pg, target) == changed_since


def test_a_sql_backup_is_a_source_too(cli, pg, target):
    sql = Path(last_line(cli("backup-sql", "--env=prod").stdout))
    before = selection(pg, target)
    mistakes(pg, target)
    done = partial(cli, sql, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    assert "名前を指定したテーブルの行だけ" in done.stderr
    assert selection(pg, target) == before


def test_a_run_refuses_when_the_rows_moved_between_the_preview_and_the_lock(cli, pg, target, tmp_path):
    """The confirmation waits for the operator: a write meanwhile is seen under the lock."""
    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    moved = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=missing",
                    env=app_writes_at_confirmation(tmp_path, pg, target,
                                                   f"DELETE FROM public.votes WHERE {SELECTED} AND member_id = 20"))
    assert moved.returncode == 1, moved.stderr
    assert "確認の後に public.votes の行が変わりました" in moved.stderr, moved.stderr
    assert "バックアップにだけある（その後に削除） 6 行" in moved.stderr  # the difference as it is now
    assert pg.psql(f"SELECT count(*) FROM public.votes WHERE {SELECTED}", target).strip() == "36"


@pytest.mark.parametrize("narrowed", [True, False], ids=["selected-rows-only", "whole-table"])
def test_rows_moved_into_or_out_of_the_selection_since_the_backup_are_changed_rows(cli, pg, target, tmp_path,
                                                                                   narrowed):
    """With --where, each side reads only its selected rows and the rows of the keys the
    other side selects (or, beyond NARROW_LIMIT keys, the whole table): a vote moved out of
    the selection since the backup, and one moved into it, are changed rows either way, never
    a missing and an extra one, and --mode=changed puts both back as they were."""
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    leaving = pg.psql(f"SELECT min(id) FROM public.votes WHERE {SELECTED}", target).strip()
    entering, topic = pg.psql(f"SELECT id || ',' || topic FROM public.votes WHERE NOT ({SELECTED}) "
                              "ORDER BY id LIMIT 1", target).strip().split(",", 1)
    pg.psql(f"UPDATE public.votes SET topic = '別の件' WHERE id = {leaving}", target)
    pg.psql(f"UPDATE public.votes SET topic = '役員選任の件' WHERE id = {entering}", target)
    pg.psql(f"DELETE FROM public.votes WHERE {SELECTED} AND id = (SELECT max(id) FROM public.votes "
            f"WHERE {SELECTED})", target)
    (tmp_path / "sitecustomize.py").write_text(
        "from pgrunbook.restore import partial\n" + ("" if narrowed else "partial.NARROW_LIMIT = 0\n"))
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=changed",
                   env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert done.returncode == 0, done.stderr
    assert ("バックアップにだけある（その後に削除） 1 行、内容が違う（その後に更新） 2 行、"
            "稼働中の DB にだけある（その後に追加） 0 行") in done.stderr, done.stderr
    assert selection(pg, target) == before
    assert pg.psql(f"SELECT topic FROM public.votes WHERE id = {entering}", target).strip() == topic


def test_a_where_evaluated_once_per_side_and_a_key_twice_still_refused(cli, pg, target):
    """--where is evaluated once on each side (when its keys are taken), so a condition
    that answers differently each time (random(), as now() across a boundary) cannot make
    an unchanged row look missing or added; and a --key that is not unique is still refused
    by name when --where selects only one of its rows (every row is read then)."""
    dump = backup(cli, "--env=prod")
    nothing = partial(cli, dump, "--table=public.votes", "--where=random() < 0.5", "--mode=exact")
    assert nothing.returncode == 0, nothing.stderr
    assert "戻す行はありません" in nothing.stderr, nothing.stderr
    pg.psql("CREATE TABLE public.tallies (id serial PRIMARY KEY, topic text, member_id int, choice text); "
            "INSERT INTO public.tallies (topic, member_id, choice) VALUES ('A', 3, 'yes'), ('A', 3, 'no')", target)
    dump = backup(cli, "--env=prod")
    pg.psql("DELETE FROM public.tallies", target)
    twice = partial(cli, dump, "--table=public.tallies", "--key=topic,member_id", "--where=choice = 'yes'",
                    "--mode=missing")
    assert twice.returncode != 0
    assert "キー（A, 3）が重複しています" in twice.stderr, twice.stderr
    assert pg.psql("SELECT count(*) FROM public.tallies", target).strip() == "0"


def test_a_row_moved_out_of_the_selection_and_written_again_before_the_lock_is_refused(cli, pg, target, tmp_path):
    """A vote moved out of --where since the backup is a changed row to put back, though the
    selection's own check under the lock does not cover it: the app writing it again while
    the operator confirms must make the run refuse, not overwrite the app's newer write."""
    dump = backup(cli, "--env=prod")
    leaving = pg.psql(f"SELECT min(id) FROM public.votes WHERE {SELECTED}", target).strip()
    pg.psql(f"UPDATE public.votes SET topic = '別の件' WHERE id = {leaving}", target)
    refused = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=changed",
                      env=app_writes_at_confirmation(
                          tmp_path, pg, target, f"UPDATE public.votes SET choice = 'アプリの新しい値' WHERE id = {leaving}"))
    assert refused.returncode == 1, refused.stderr
    assert "確認の後に" in refused.stderr and "変わりました" in refused.stderr, refused.stderr
    assert pg.psql(f"SELECT topic || ':' || choice FROM public.votes WHERE id = {leaving}", target).strip() \
        == "別の件:アプリの新しい値"


def test_a_busy_table_makes_the_kit_give_up_rather_than_block_the_app(cli, pg, target):
    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    before = table_fingerprints(pg, target)
    with app_transaction_holding(pg, target, "UPDATE public.votes SET choice = choice WHERE id = 1"):
        (cli.home / ".env.prod").write_text((cli.home / ".env.prod").read_text() + "PARTIAL_LOCK_TIMEOUT=1s\n")
        busy = partial(cli, dump, "--table=public.votes", "--mode=missing")
        assert busy.returncode == 1
        assert "ロックを 1s 以内に取れませんでした" in busy.stderr, busy.stderr
        assert table_fingerprints(pg, target) == before


@pytest.mark.matrix
def test_exact_and_undo_on_each_version(cli, pg, target):
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    mistakes(pg, target)
    after_mistakes = table_fingerprints(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    assert selection(pg, target) == before
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert table_fingerprints(pg, target) == after_mistakes
    run = [r for r in log_lines(cli) if r["task"] == "restore-partial" and r["result"] == "ok"][-1]
    preview = json.loads(json.dumps(run["preview"]))  # (the undo logs a line before its commit too)
    assert preview == {"public.votes": {"ins": 5, "upd": 3, "del": 2}}


def test_on_a_terminal_the_operator_types_the_env_and_the_database(cli, pg, target):
    from helpers import run_on_a_terminal

    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    mistakes(pg, target)
    wrong = run_on_a_terminal(cli, ["restore-partial", "--env=prod", f"--file={dump}", "--table=public.votes",
                                    f"--where={SELECTED}", "--mode=exact"], b"prod\nnot-the-db\n")
    assert wrong.returncode == 1 and "データベース名が一致しません" in wrong.stderr
    assert selection(pg, target) != before
    typed = run_on_a_terminal(cli, ["restore-partial", "--env=prod", f"--file={dump}", "--table=public.votes",
                                    f"--where={SELECTED}", "--mode=exact"], f"prod\n{target}\n".encode())
    assert typed.returncode == 0, typed.stderr
    assert selection(pg, target) == before


def test_the_databases_own_timeouts_do_not_cut_the_kits_sessions(cli, pg, target):
    """A database set to end idle transactions fast (and short statements): the preview's
    snapshot waits idle while the backup's rows are restored, and still stands."""
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    mistakes(pg, target)
    pg.psql(f"ALTER DATABASE \"{target}\" SET idle_in_transaction_session_timeout = '200ms'; "
            f"ALTER DATABASE \"{target}\" SET statement_timeout = '200ms'", "postgres")
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    assert selection(pg, target) == before


def test_a_lost_table_of_contents_is_read_again_not_taken_for_a_backup_without_the_table(
        cli, pg, target, lost_outputs):
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    mistakes(pg, target)
    # the listing of the archive whose entries pick the table's rows, lost once (the file's
    # check reads it, and the -L list is made of it)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact",
                   env=lost_outputs.env(match="^pg_restore (-l|--list)", nth="1"))
    assert done.returncode == 0, done.stderr
    assert len(lost_outputs.dropped()) == 1
    assert selection(pg, target) == before


def test_tables_whose_names_need_quotes_are_named_as_the_database_has_them(cli, pg, target):
    """Japanese names, a space, capitals: ``--table=public.会員名簿`` or with double quotes,
    as psql writes them."""
    pg.psql('CREATE TABLE public."会員 名簿" (id int PRIMARY KEY, "氏名" text NOT NULL); '
            'CREATE TABLE public.寄付 (id int PRIMARY KEY, "Amount" int); '
            "INSERT INTO public.\"会員 名簿\" SELECT g, '会員 ' || g FROM generate_series(1, 5) g; "
            "INSERT INTO public.寄付 SELECT g, g * 100 FROM generate_series(1, 5) g", target)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    pg.psql('DELETE FROM public."会員 名簿" WHERE id = 2; DELETE FROM public.寄付 WHERE id = 3', target)
    done = partial(cli, dump, '--table=public."会員 名簿"', "--table=寄付", "--mode=missing")
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, target) == before
    assert log_lines(cli)[-1]["counts"] == {"public.会員 名簿": {"ins": 1}, "public.寄付": {"ins": 1}}


def test_a_partitioned_table_is_put_back_through_its_partitions(cli, pg, target):
    """The rows of a partitioned table are in its partitions' TABLE DATA in the archive."""
    pg.psql("CREATE TABLE public.readings (id int, taken_on date, value int, PRIMARY KEY (id, taken_on)) "
            "PARTITION BY RANGE (taken_on); "
            "CREATE TABLE public.readings_2025 PARTITION OF public.readings "
            "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); "
            "CREATE TABLE public.readings_2026 PARTITION OF public.readings "
            "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); "
            "INSERT INTO public.readings SELECT g, DATE '2025-06-01' + g * 2, g FROM generate_series(1, 200) g",
            target)
    dump = backup(cli, "--env=prod")
    rows = "SELECT string_agg(r::text, ',' ORDER BY id) FROM public.readings r"
    before = pg.psql(rows, target)
    pg.psql("DELETE FROM public.readings WHERE id IN (5, 150); UPDATE public.readings SET value = 0 WHERE id = 7; "
            "CREATE TABLE public.readings_2027 PARTITION OF public.readings "  # made since: no rows in the file
            "FOR VALUES FROM ('2027-01-01') TO ('2028-01-01'); "
            "INSERT INTO public.readings VALUES (999, '2027-03-01', 9)", target)
    done = partial(cli, dump, "--table=public.readings", "--mode=changed")
    assert done.returncode == 0, done.stderr
    assert pg.psql(rows + " WHERE id <> 999", target) == before
    assert log_lines(cli)[-1]["counts"] == {"public.readings": {"ins": 2, "upd": 1}}
    exact = partial(cli, dump, "--table=public.readings", "--mode=exact")  # the row made since goes
    assert exact.returncode == 0, exact.stderr
    assert pg.psql(rows, target) == before


def test_a_table_that_references_itself_gets_back_a_row_and_the_references_to_it(cli, pg, target):
    """A comment deleted since the backup (its replies' reply_to set to NULL by the foreign
    key): --mode=changed brings it back and points the replies at it again; undo reverses both."""
    pg.psql("CREATE TABLE public.comments (id int PRIMARY KEY, body text NOT NULL, "
            "reply_to int REFERENCES public.comments (id) ON DELETE SET NULL); "
            "INSERT INTO public.comments VALUES (1, '最初', NULL), (2, '返信', 1), (3, '返信の返信', 2)", target)
    dump = backup(cli, "--env=prod")
    rows = "SELECT string_agg(c::text, ',' ORDER BY id) FROM public.comments c"
    before = pg.psql(rows, target)
    pg.psql("DELETE FROM public.comments WHERE id IN (1, 2)", target)
    after_delete = pg.psql(rows, target)
    done = partial(cli, dump, "--table=public.comments", "--mode=changed")
    assert done.returncode == 0, done.stderr
    assert pg.psql(rows, target) == before
    assert log_lines(cli)[-1]["counts"] == {"public.comments": {"ins": 2, "upd": 1}}
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert pg.psql(rows, target) == after_delete


def test_undo_of_a_changed_row_that_references_a_parent_brought_back(cli, pg, target):
    """--mode=changed points an audit line at its member again and brings that member back
    (a parent row); undo changes the line back first, then the member can go."""
    pg.psql("INSERT INTO public.members (id, name, email, joined_on) VALUES (900, '退会 済子', 'gone@example.jp', "
            "'2024-01-01'); INSERT INTO audit.audit_log (id, at, action, payload, actor_id) VALUES "
            "(5000, '2025-12-01', 'login', '{}', 900)", target)
    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    pg.psql("UPDATE audit.audit_log SET actor_id = NULL WHERE id = 5000; DELETE FROM public.members WHERE id = 900",
            target)
    after_delete = table_fingerprints(pg, target)
    done = partial(cli, dump, "--table=audit.audit_log", "--where=id = 5000", "--mode=changed")
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, target) == before
    assert log_lines(cli)[-1]["counts"] == {"audit.audit_log": {"upd": 1}, "public.members": {"par": 1}}
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr
    assert table_fingerprints(pg, target) == after_delete


def test_a_second_run_meanwhile_leaves_the_first_runs_work_alone(cli, pg, target, tmp_path):
    """Two operators: the first run waits at its confirmation while a second one, on another
    table, is applied. The first then goes on as if alone."""
    from helpers import paused

    dump = backup(cli, "--env=prod")
    before = table_fingerprints(pg, target)
    pg.psql(f"DELETE FROM public.votes WHERE {SELECTED} AND member_id BETWEEN 1 AND 5; "
            "DELETE FROM audit.audit_log WHERE id IN (SELECT min(id) FROM audit.audit_log)", target)
    with paused(cli, "partial-previewed", tmp_path, "restore-partial", "--env=prod", f"--file={dump}",
                "--table=public.votes", "--mode=missing", "--confirm=prod") as first:
        first.reached("the first run's preview")
        second = partial(cli, dump, "--table=audit.audit_log", "--mode=missing")
        assert second.returncode == 0, second.stderr
        done = first.go()
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(pg, target) == before


def test_a_deferred_unique_constraint_refuses_in_one_clear_line_before_the_commit(cli, pg, target):
    """A unique constraint DEFERRABLE INITIALLY DEFERRED is checked at COMMIT: the kit checks
    it at each write instead, so the clash is said as for any unique constraint, and no run is
    left for undo to find."""
    from helpers import one_clean_line

    pg.psql("CREATE TABLE public.tags (id int PRIMARY KEY, slug text "
            "CONSTRAINT tags_slug_key UNIQUE DEFERRABLE INITIALLY DEFERRED); "
            "INSERT INTO public.tags VALUES (1, 'yosan'), (2, 'yakuin')", target)
    dump = backup(cli, "--env=prod")
    pg.psql("DELETE FROM public.tags WHERE id = 1; INSERT INTO public.tags VALUES (3, 'yosan')", target)
    before = table_fingerprints(pg, target)
    refused = partial(cli, dump, "--table=public.tags", "--mode=missing")
    line = one_clean_line(refused)
    assert "一意制約 tags_slug_key でぶつかります" in line, refused.stderr
    assert table_fingerprints(pg, target) == before
    assert not [r for r in log_lines(cli) if r.get("stage") == "commit"]
    assert not list((cli.backup_dir("prod") / "partial").glob("*.undo"))


def test_a_check_constraint_added_since_the_backup_refuses_in_one_clear_line(cli, pg, target):
    from helpers import one_clean_line

    pg.psql("CREATE TABLE public.fees (id int PRIMARY KEY, amount int NOT NULL); "
            "INSERT INTO public.fees VALUES (1, -500), (2, 1000)", target)
    dump = backup(cli, "--env=prod")
    pg.psql("DELETE FROM public.fees WHERE id = 1; "
            "ALTER TABLE public.fees ADD CONSTRAINT fees_amount_check CHECK (amount >= 0)", target)
    before = table_fingerprints(pg, target)
    refused = partial(cli, dump, "--table=public.fees", "--mode=missing")
    line = one_clean_line(refused)
    assert "制約 fees_amount_check を満たしません" in line and "--where" in line, refused.stderr
    assert table_fingerprints(pg, target) == before


def test_a_table_whose_rows_the_kit_user_sees_only_in_part_row_level_security_is_refused(cli, pg, target):
    """DB_USER without the table's ownership (or BYPASSRLS) sees only the rows a policy lets
    it see: the comparison would take the others for deleted. Refused before any work."""
    from helpers import one_clean_line

    pg.psql("CREATE TABLE public.notes (id int PRIMARY KEY, author text NOT NULL, body text); "
            "INSERT INTO public.notes SELECT g, CASE WHEN g % 2 = 0 THEN 'clerk' ELSE 'chair' END, 'メモ ' || g "
            "FROM generate_series(1, 6) g; "
            "ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY; "
            "CREATE POLICY own_notes ON public.notes USING (author = 'clerk')", target)
    other = f"clerk_{uuid.uuid4().hex[:6]}"
    pg.psql(f"CREATE ROLE {other} LOGIN CREATEDB PASSWORD '{PASSWORD}'", "postgres")
    try:
        pg.psql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {other}", target)
        dump = backup(cli, "--env=prod")
        pg.psql("DELETE FROM public.notes WHERE id = 2", target)
        before = table_fingerprints(pg, target)
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=target, DB_PASSWORD=PASSWORD, DB_USER=other)
        refused = partial(cli, dump, "--table=public.notes", "--mode=exact")
        line = one_clean_line(refused)
        assert "行レベルセキュリティ" in line and "public.notes" in line and "BYPASSRLS" in line, refused.stderr
        assert table_fingerprints(pg, target) == before
    finally:
        pg.psql(f"DROP OWNED BY {other} CASCADE", target)
        pg.psql(f"DROP ROLE {other}", "postgres")


def test_undo_with_its_file_moved_or_edited_says_so_in_one_line_with_what_to_do(cli, pg, target):
    from helpers import one_clean_line

    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    applied = table_fingerprints(pg, target)
    undo = Path(log_lines(cli)[-1]["undo"])
    kept = undo.read_bytes()
    undo.unlink()
    missing = one_clean_line(cli("restore-partial-undo", "--env=prod", "--confirm=prod"))
    assert "取り消し用ファイル" in missing and "ありません" in missing and " → " in missing, missing
    assert "Errno" not in missing
    undo.write_bytes(b'{"kind": "pgrunbook-partial-undo", "run"' + kept[40:])  # its header cut
    edited = one_clean_line(cli("restore-partial-undo", "--env=prod", "--confirm=prod"))
    assert "sha256" in edited and " → " in edited, edited
    assert table_fingerprints(pg, target) == applied
    undo.write_bytes(kept)
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    assert undone.returncode == 0, undone.stderr


@pytest.mark.parametrize("stage", ["partial-undo-commit", "partial-undo-committed"])
def test_an_undo_killed_at_its_commit_is_known_for_what_it_did(cli, pg, target, stage):
    """kill -9 just before or just after the undo's COMMIT (before the work log's line): run
    again, the undo either completes or says it was done, never that the rows changed since."""
    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    after_mistakes = table_fingerprints(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    applied = table_fingerprints(pg, target)
    killed = cli("restore-partial-undo", "--env=prod", "--confirm=prod", env={"PGRUNBOOK_TEST_KILL_AT": stage})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION}'",
                             "postgres").strip() == "0", "the kit's sessions to end")
    again = cli("restore-partial-undo", "--env=prod", "--confirm=prod")
    if stage == "partial-undo-commit":
        assert again.returncode == 0, again.stderr
        assert table_fingerprints(pg, target) == after_mistakes
    else:
        assert again.returncode == 1 and "取り消し済み" in again.stderr, again.stderr
        assert "変わった行" not in again.stderr
        assert table_fingerprints(pg, target) == after_mistakes != applied


def test_undo_that_meets_a_unique_value_taken_since_says_what_to_do_for_an_undo(cli, pg, target):
    """exact deleted two votes; the app then cast one of them again (a new row, the same
    topic and member): the undo cannot bring the deleted vote back, and says so for an undo."""
    from helpers import one_clean_line

    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    pg.psql("INSERT INTO public.votes (topic, member_id, choice, cast_at) SELECT '役員選任の件', id, '反対', now() "
            "FROM public.members WHERE email = 'late1@example.jp'", target)
    before = table_fingerprints(pg, target)
    line = one_clean_line(cli("restore-partial-undo", "--env=prod", "--confirm=prod"))
    assert "一意制約" in line and "--mode" not in line and "取り消し" in line.split(" → ")[1], line
    assert table_fingerprints(pg, target) == before


def test_a_busy_parent_table_makes_the_kit_give_up_in_its_own_words(cli, pg, target):
    """The parents brought back go into a table with a trigger (switched off for the write,
    which locks the table) that an open transaction of the app has written: the kit waits
    PARTIAL_LOCK_TIMEOUT, then says so as for the named tables."""
    from helpers import one_clean_line

    pg.psql("INSERT INTO public.members (id, name, email, joined_on) VALUES (900, '退会 済子', 'gone@example.jp', "
            "'2024-01-01'); INSERT INTO accounting.journal_entries (id, entry_date, description, debit_account, "
            "credit_account, amount, created_by) VALUES (9000, '2025-12-01', '退会前の仕訳', '現金', '会費収入', 500, "
            "900); INSERT INTO accounting.approvals (entry_id, approver_id, status, decided_at) VALUES "
            "(9000, 900, '承認', now()); "
            "CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; "
            "CREATE TRIGGER members_touch BEFORE UPDATE ON public.members FOR EACH ROW EXECUTE FUNCTION public.touch()",
            target)
    dump = backup(cli, "--env=prod")
    pg.psql("DELETE FROM accounting.approvals WHERE entry_id = 9000; "
            "DELETE FROM accounting.journal_entries WHERE id = 9000; DELETE FROM public.members WHERE id = 900",
            target)
    before = table_fingerprints(pg, target)
    with app_transaction_holding(pg, target, "UPDATE public.members SET name = name WHERE id = 1"):
        (cli.home / ".env.prod").write_text((cli.home / ".env.prod").read_text() + "PARTIAL_LOCK_TIMEOUT=1s\n")
        line = one_clean_line(partial(cli, dump, "--table=accounting.approvals", "--mode=missing"))
        assert "public.members" in line and "ロックを 1s 以内に取れませんでした" in line, line
        assert table_fingerprints(pg, target) == before


def test_a_kit_user_that_is_no_superuser_puts_back_and_undoes(cli, pg, target):
    """DB_USER with the rights the kit documents (CREATEDB, member of the tables' owner),
    as on a managed server: exact with parents, triggers and sequences, then undo."""
    from helpers import minimal_rights

    pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "app", "-d", target], stdin=LEDGER.encode())
    dump = backup(cli, "--env=prod")
    before = selection(pg, target)
    mistakes(pg, target)
    pg.psql("TRUNCATE public.ledger RESTART IDENTITY", target)
    owner, kit = minimal_rights(cli, pg, target)
    try:
        after_mistakes = table_fingerprints(pg, target)
        done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
        assert done.returncode == 0, done.stderr
        assert selection(pg, target) == before
        ledger = partial(cli, dump, "--table=public.ledger", "--mode=missing")
        assert ledger.returncode == 0, ledger.stderr
        assert "シーケンス public.ledger_id_seq を 10 まで進めました" in ledger.stderr, ledger.stderr
        for run in (last_line(ledger.stdout), last_line(done.stdout)):
            undone = cli("restore-partial-undo", "--env=prod", f"--run={run}", "--confirm=prod")
            assert undone.returncode == 0, undone.stderr
        assert table_fingerprints(pg, target) == after_mistakes
    finally:
        pg.psql(f'DROP OWNED BY "{kit}" CASCADE', target)


def test_a_file_that_is_not_there_is_said_with_the_command_to_list_the_envs_files(cli, pg, target):
    from helpers import one_clean_line

    line = one_clean_line(cli("restore-partial", "--env=prod", "--file=knot-prod-20260128-020000.dump",
                              "--table=public.votes", "--mode=missing", "--confirm=prod"))
    assert "knot-prod-20260128-020000.dump がありません" in line and "invoke list --env=prod " in line, line


@pytest.mark.parametrize("change", ["ADD COLUMN note text", "DROP COLUMN cast_at"])
def test_undo_after_the_table_gained_or_lost_a_column_refuses_in_one_line(cli, pg, target, change):
    from helpers import one_clean_line

    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    done = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact")
    assert done.returncode == 0, done.stderr
    pg.psql(f"ALTER TABLE public.votes {change}", target)
    before = table_fingerprints(pg, target)
    line = one_clean_line(cli("restore-partial-undo", "--env=prod", "--confirm=prod"))
    assert "public.votes の列が実行の後に変わっています" in line and " → " in line, line
    assert table_fingerprints(pg, target) == before


def test_undo_after_a_run_killed_before_its_commit_points_at_the_run_before(cli, pg, target):
    from helpers import one_clean_line

    dump = backup(cli, "--env=prod")
    mistakes(pg, target)
    first = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=missing")
    assert first.returncode == 0, first.stderr
    killed = partial(cli, dump, "--table=public.votes", f"--where={SELECTED}", "--mode=exact",
                     env={"PGRUNBOOK_TEST_KILL_AT": "partial-commit"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for(lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APPLICATION}'",
                             "postgres").strip() == "0", "the kit's sessions to end")
    line = one_clean_line(cli("restore-partial-undo", "--env=prod", "--confirm=prod"))
    assert "適用されていません" in line and f"--run={last_line(first.stdout)}" in line, line


def test_a_table_that_references_itself_with_a_unique_value_passed_between_rows(cli, pg, target):
    """A category deleted since (its child's parent_id set to NULL), and the child renamed to
    the deleted one's slug: the child must give the slug back before the deleted one returns,
    and the deleted one must return before the child points at it again."""
    pg.psql("CREATE TABLE public.categories (id int PRIMARY KEY, slug text NOT NULL UNIQUE, "
            "parent_id int REFERENCES public.categories (id) ON DELETE SET NULL); "
            "INSERT INTO public.categories VALUES (1, 'news', NULL), (2, 'sports', 1), (3, 'misc', NULL)", target)
    dump = backup(cli, "--env=prod")
    rows = "SELECT string_agg(c::text, ',' ORDER BY id) FROM public.categories c"
    before = pg.psql(rows, target)
    pg.psql("DELETE FROM public.categories WHERE id = 1; UPDATE public.categories SET slug = 'news' WHERE id = 2",
            target)
    after_change = pg.psql(rows, target)
    done = partial(cli, dump, "--table=public.categories", "--mode=changed")
    assert done.returncode == 0, done.stderr
    assert pg.psql(rows, target) == before
    undone = cli("restore-partial-undo", "--env=prod", "--confirm=prod")  # the same, the other way
    assert undone.returncode == 0, undone.stderr
    assert pg.psql(rows, target) == after_change
