"""restore-diff through the real CLI: exit codes as diff(1), rows by key with examples,
the whole-database summary (tables, rows, columns, owners, privileges), a .sql
source, and the same summary in restore-replace's banner."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import (
    backup,
    databases,
    last_line,
    log_lines,
    minimal_rights,
    one_clean_line,
    role,
    table_fingerprints,
)


def diff(cli, *args: str, env: dict[str, str] | None = None):
    return cli("restore-diff", "--env=prod", *args, env=env)


def test_rows_by_key_exit_codes_and_json(cli, pg, target):
    dump = backup(cli, "--env=prod")
    same = diff(cli, f"--file={dump}", "--table=public.votes", "--table=accounting.approvals")
    assert same.returncode == 0, same.stderr
    assert "public.votes: 差はありません（120 行が同じ）" in same.stdout

    before = table_fingerprints(pg, target)
    pg.psql("DELETE FROM public.votes WHERE id IN (3, 4); UPDATE public.votes SET choice = choice || '（訂正）' "
            "WHERE id = 7; INSERT INTO public.votes (topic, member_id, choice, cast_at) VALUES ('新しい議題', 1, '賛成', now())",
            target)
    changed = table_fingerprints(pg, target)
    different = diff(cli, f"--file={dump}", "--table=public.votes")
    assert different.returncode == 1, different.stderr
    assert "バックアップにだけある（その後に削除）: キー 3 / 4" in different.stdout
    assert "内容が違う（その後に更新）: キー 7" in different.stdout
    assert "稼働中の DB にだけある（その後に追加）: キー 121" in different.stdout
    as_json = diff(cli, f"--file={dump}", "--table=public.votes", "--format=json")
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert body["different"] is True
    assert body["tables"][0]["counts"] == {"missing": 2, "changed": 1, "extra": 1}
    assert body["tables"][0]["examples"]["missing"] == ["3", "4"]
    selected = diff(cli, f"--file={dump}", "--table=public.votes", "--where=id < 5")
    assert selected.returncode == 1 and "同じ 2 行" in selected.stdout, selected.stdout
    assert table_fingerprints(pg, target) == changed != before  # nothing changed by any of them
    assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]
    assert log_lines(cli)[-1]["task"] == "restore-diff" and log_lines(cli)[-1]["different"] is True


def test_trouble_is_exit_code_2(cli, pg, target):
    dump = backup(cli, "--env=prod")
    unknown = diff(cli, f"--file={dump}", "--table=public.nothing")
    assert unknown.returncode == 2 and "public.nothing がありません" in unknown.stderr
    injected = diff(cli, f"--file={dump}", "--table=public.votes", "--where=true; DROP TABLE public.votes")
    assert injected.returncode == 2 and "1 つの条件として使えません" in injected.stderr
    missing = diff(cli, "--file=no-such.dump")
    assert missing.returncode == 2
    assert "public" in pg.psql("SELECT schemaname FROM pg_tables WHERE tablename = 'votes'", target)


def test_whole_database_tables_rows_columns_owners_and_privileges(cli, pg, target):
    dump = backup(cli, "--env=prod")
    same = diff(cli, f"--file={dump}")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "テーブル・行数・列・所有者・権限に違いはありません" in same.stdout
    reader = role(pg, "pgrunbook_reader")
    pg.psql("CREATE TABLE public.newcomers (id int PRIMARY KEY); ALTER TABLE public.members ADD COLUMN nickname text; "
            f"GRANT SELECT ON public.votes TO {reader}; DELETE FROM audit.audit_log WHERE id <= 10; "
            "DROP TABLE public._prisma_migrations", target)
    found = diff(cli, f"--file={dump}")
    assert found.returncode == 1, found.stderr
    text = found.stdout
    assert "バックアップにだけあるテーブル（その後に削除）: public._prisma_migrations" in text
    assert "稼働中の DB にだけあるテーブル（その後に作成）: public.newcomers" in text
    assert "audit.audit_log 900 → 890（-10）" in text
    assert "public.members.nickname（稼働中にだけ）" in text
    assert f"TABLE public.votes: 失う権限 {reader}:SELECT" in text, text
    sql = Path(last_line(cli("backup-sql", "--env=prod").stdout))
    pg.psql(f"REVOKE SELECT ON public.votes FROM {reader}", target)
    from_sql = diff(cli, f"--file={sql}", "--format=json")
    assert from_sql.returncode == 1, from_sql.stderr
    database = json.loads(from_sql.stdout)["database"]
    assert database["privileges"] == [f"TABLE public.votes: 増える権限 {reader}:SELECT"], database
    assert database["only_live"] == database["only_backup"] == database["columns"] == []


def test_the_replace_banner_shows_the_same_summary(cli, pg, target):
    dump = backup(cli, "--env=prod")
    pg.psql("CREATE TABLE public.newcomers (id int PRIMARY KEY); DELETE FROM public.votes WHERE id <= 3", target)
    banner = cli("restore-replace", "--env=prod", f"--file={dump}")
    assert banner.returncode == 1 and "端末がないため確認できません" in banner.stderr
    assert "戻すと変わるもの（invoke restore-diff と同じ要約）" in banner.stderr
    assert "稼働中の DB にだけあるテーブル（その後に作成）: public.newcomers" in banner.stderr
    assert "public.votes 120 → 117（-3）" in banner.stderr


def test_a_row_whose_text_changed_is_changed_even_where_its_value_hashes_alike(cli, pg, target):
    # On 14 and later most columns are hashed by value, not by their text. A case-blind
    # collation hashes 'abc' and 'ABC' alike, and numeric 1.0 and 1.00 are equal values:
    # those rows must still come out "changed", as their text differs.
    pg.psql("CREATE COLLATION public.case_blind (provider = icu, locale = 'und-u-ks-level2', "
            "deterministic = false); "
            "CREATE TABLE public.kinds (id bigint PRIMARY KEY, name text COLLATE public.case_blind, "
            "amount numeric, at timestamptz, doc jsonb, day date); "
            "INSERT INTO public.kinds SELECT g, 'abc', 1.0, '2026-12-01 10:00:00+00', '{\"a\": 1}', "
            "'2026-12-01' FROM generate_series(1, 5) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql("UPDATE public.kinds SET name = 'ABC' WHERE id = 1; UPDATE public.kinds SET amount = 1.00 WHERE id = 2; "
            "UPDATE public.kinds SET at = at + interval '1 microsecond' WHERE id = 3; "
            "UPDATE public.kinds SET day = day + 1 WHERE id = 4", target)
    found = diff(cli, f"--file={dump}", "--table=public.kinds", "--format=json")
    assert found.returncode == 1, found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 0, "changed": 4, "extra": 0}, body
    assert body["examples"]["changed"] == ["1", "2", "3", "4"] and body["same"] == 1


def test_a_column_whose_collation_changed_since_the_backup_is_compared_by_its_text(cli, pg, target):
    # Live's column is hashed by value; the backup's, of a case-blind collation, would be
    # hashed case-blind: the same rows would all come out "changed". Both sides then
    # hash that table by the rows' text: only the row really changed differs, in
    # restore-diff and in restore-partial's preview alike.
    pg.psql("CREATE COLLATION public.case_blind (provider = icu, locale = 'und-u-ks-level2', "
            "deterministic = false); "
            "CREATE TABLE public.names (id bigint PRIMARY KEY, name text COLLATE public.case_blind); "
            "INSERT INTO public.names SELECT g, 'Name ' || g FROM generate_series(1, 20) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql('ALTER TABLE public.names ALTER COLUMN name TYPE text COLLATE "C"; '
            "UPDATE public.names SET name = 'NAME 7' WHERE id = 7", target)
    found = diff(cli, f"--file={dump}", "--table=public.names", "--format=json")
    assert found.returncode == 1, found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 0, "changed": 1, "extra": 0} and body["same"] == 19, body
    previewed = cli("restore-partial", "--env=prod", f"--file={dump}", "--table=public.names", "--mode=changed",
                    "--confirm=prod")
    assert previewed.returncode == 0, previewed.stderr
    assert "同じ 19 行" in previewed.stderr and "戻す（更新） 1 行" in previewed.stderr, previewed.stderr
    assert pg.psql("SELECT name FROM public.names WHERE id = 7", target).strip() == "Name 7"


def test_a_bigint_or_timestamp_change_whose_value_hash_folds_alike_is_changed(cli, pg, target):
    # PostgreSQL hashes a bigint (and a timestamp, a time: 64-bit integers inside) by folding
    # its two 32-bit halves into one: 0 and 4294967297 (1 and 1 folded) hash alike, and
    # so do two timestamps 2^32 + 1 µs apart (about 71 minutes). Those rows differ.
    pg.psql("CREATE TABLE public.folds (id int PRIMARY KEY, amount bigint, at timestamptz, t time); "
            "INSERT INTO public.folds SELECT g, 0, '2026-12-01 10:00:00+00', '00:00' "
            "FROM generate_series(1, 4) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql("UPDATE public.folds SET amount = 4294967297 WHERE id = 1; "
            "UPDATE public.folds SET at = '2026-12-01 11:11:34.967297+00' WHERE id = 2; "
            "UPDATE public.folds SET t = '01:11:34.967297' WHERE id = 3", target)
    found = diff(cli, f"--file={dump}", "--table=public.folds", "--format=json")
    assert found.returncode == 1, found.stdout + found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 0, "changed": 3, "extra": 0}, body
    assert body["examples"]["changed"] == ["1", "2", "3"] and body["same"] == 1


def test_a_timestamp_changed_between_null_infinity_and_its_mirror_before_1970_is_changed(cli, pg, target):
    # A timestamp is hashed as its seconds since 1970 (a numeric): a numeric's hash leaves out
    # its sign and hashes ±Infinity as a NULL is hashed. Those rows differ all the same.
    pg.psql("CREATE TABLE public.terms (id int PRIMARY KEY, valid_to timestamptz, at timestamp); "
            "INSERT INTO public.terms VALUES (1, 'infinity', NULL), (2, NULL, NULL), (3, '-infinity', NULL), "
            "(4, NULL, '1970-01-01 00:00:01'), (5, '2026-01-01 00:00:00+00', '2026-01-01')", target)
    dump = backup(cli, "--env=prod")
    pg.psql("UPDATE public.terms SET valid_to = NULL WHERE id = 1; "
            "UPDATE public.terms SET valid_to = 'infinity' WHERE id IN (2, 3); "
            "UPDATE public.terms SET at = '1969-12-31 23:59:59' WHERE id = 4", target)
    found = diff(cli, f"--file={dump}", "--table=public.terms", "--format=json")
    assert found.returncode == 1, found.stdout + found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 0, "changed": 4, "extra": 0}, body
    assert body["examples"]["changed"] == ["1", "2", "3", "4"] and body["same"] == 1


def test_a_column_added_or_dropped_since_the_backup_is_left_out_and_said(cli, pg, target):
    # The rows are compared on the columns both sides have; the others are named.
    pg.psql("CREATE TABLE public.grown (id int PRIMARY KEY, name text, old_note text); "
            "INSERT INTO public.grown SELECT g, 'n' || g, 'note' FROM generate_series(1, 5) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql("ALTER TABLE public.grown ADD COLUMN score int DEFAULT 1; ALTER TABLE public.grown DROP COLUMN old_note; "
            "UPDATE public.grown SET name = 'renamed' WHERE id = 2", target)
    found = diff(cli, f"--file={dump}", "--table=public.grown", "--format=json")
    assert found.returncode == 1, found.stdout + found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 0, "changed": 1, "extra": 0} and body["same"] == 4, body
    assert body["notes"] == ["列 score は稼働中の DB にだけあるため比べていません",
                             "列 old_note はバックアップにだけあるため比べていません"], body
    text = diff(cli, f"--file={dump}", "--table=public.grown")
    assert text.returncode == 1 and "（列 score は稼働中の DB にだけあるため比べていません）" in text.stdout


def test_a_where_on_a_column_one_side_lacks_is_a_usage_error(cli, pg, target):
    pg.psql("CREATE TABLE public.grown (id int PRIMARY KEY, name text); "
            "INSERT INTO public.grown SELECT g, 'n' || g FROM generate_series(1, 5) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql("ALTER TABLE public.grown ADD COLUMN score int DEFAULT 1", target)
    for where, side in (("nothing = 1", "稼働中の DB"), ("score > 0", dump.name)):
        found = diff(cli, f"--file={dump}", "--table=public.grown", f"--where={where}")
        assert found.returncode == 2, found.stdout + found.stderr
        line = one_clean_line(found)
        assert f"--where='{where}' は{side}の public.grown に使えません" in line, line
        assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]


def test_tables_whose_names_need_quotes_are_compared(cli, pg, target):
    # A Japanese name as it is; a schema with a space and a name with a dot in double
    # quotes; a name with a space whose owner has one too (pg_restore -l prints them bare).
    owner = role(pg, "app owner")
    pg.psql('CREATE SCHEMA "My Schema"; '
            'CREATE TABLE public."会議録" (id int PRIMARY KEY, v text); '
            'CREATE TABLE "My Schema"."Odd.Name" (id int PRIMARY KEY, v text); '
            'CREATE TABLE public."with space" (id int PRIMARY KEY, v text); '
            f'ALTER TABLE public."with space" OWNER TO "{owner}"; '
            'INSERT INTO public."会議録" VALUES (1, \'a\'), (2, \'b\'); '
            'INSERT INTO "My Schema"."Odd.Name" VALUES (1, \'a\'), (2, \'b\'); '
            'INSERT INTO public."with space" VALUES (1, \'a\'), (2, \'b\')', target)
    dump = backup(cli, "--env=prod")
    sql = Path(last_line(cli("backup-sql", "--env=prod").stdout))
    pg.psql('UPDATE public."会議録" SET v = \'z\' WHERE id = 2; UPDATE "My Schema"."Odd.Name" SET v = \'z\' WHERE id = 2; '
            'UPDATE public."with space" SET v = \'z\' WHERE id = 2', target)
    for name, label in (("public.会議録", "public.会議録"), ("会議録", "public.会議録"),
                        ('"My Schema"."Odd.Name"', "My Schema.Odd.Name"),
                        ('public."with space"', "public.with space")):
        found = diff(cli, f"--file={dump}", f"--table={name}", "--format=json")
        assert found.returncode == 1, found.stdout + found.stderr
        body = json.loads(found.stdout)["tables"][0]
        assert body["table"] == label and body["counts"]["changed"] == 1 and body["same"] == 1, body
    from_sql = diff(cli, f"--file={sql}", '--table="My Schema"."Odd.Name"', "--table=public.会議録", "--format=json")
    assert from_sql.returncode == 1, from_sql.stdout + from_sql.stderr
    assert [t["counts"]["changed"] for t in json.loads(from_sql.stdout)["tables"]] == [1, 1]
    banner = cli("restore-replace", "--env=prod", f"--file={dump}")
    assert "テーブル（その後に" not in banner.stderr, banner.stderr  # no table only on one side


def test_a_lost_row_stream_is_read_again_and_then_refused_in_one_line(cli, pg, target, lost_outputs):
    # The engine can lose a COPY stream's output with exit code 0: never "no rows", asked
    # again like every other read, and after the last try one line that says what to do.
    dump = backup(cli, "--env=prod")
    pg.psql("UPDATE public.votes SET choice = '反対' WHERE id = 7", target)
    again = diff(cli, f"--file={dump}", "--table=public.votes", "--format=json",
                 env=lost_outputs.env(match=r"COPY \(", nth="1"))
    assert len(lost_outputs.dropped()) == 1
    assert again.returncode == 1, again.stdout + again.stderr
    assert json.loads(again.stdout)["tables"][0]["counts"] == {"missing": 0, "changed": 1, "extra": 0}
    lost_outputs.clear()
    lost = diff(cli, f"--file={dump}", "--table=public.votes", env=lost_outputs.env(match=r"COPY \(", rate=1))
    assert lost.returncode == 2 and lost.stdout == ""
    assert "応答が届きませんでした（4 回とも" in one_clean_line(lost)
    assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]


def test_a_where_that_reads_another_table_is_refused(cli, pg, target):
    # The kit database holds the named table's rows only: a subquery there sees an empty
    # table, so the backup's deleted rows would never be selected ("no difference").
    dump = backup(cli, "--env=prod")
    pg.psql("DELETE FROM public.votes WHERE member_id = (SELECT min(id) FROM public.members)", target)
    found = diff(cli, f"--file={dump}", "--table=public.votes",
                 "--where=member_id IN (SELECT id FROM public.members)")
    assert found.returncode == 2, found.stdout + found.stderr
    assert "ほかのテーブル" in one_clean_line(found)
    assert not [d for d in databases(pg) if "_pgrunbook_partial_" in d]


def test_a_key_column_retyped_since_the_backup_is_ordered_by_its_text_on_both_sides(cli, pg, target):
    # Live orders an integer key as integers; the backup's column is still text, and its
    # server ordered '10' before '2': both sides then go by the key's text.
    pg.psql("CREATE TABLE public.codes (id text PRIMARY KEY, v text); "
            "INSERT INTO public.codes SELECT g::text, 'a' FROM generate_series(1, 30) g", target)
    dump = backup(cli, "--env=prod")
    pg.psql("ALTER TABLE public.codes ALTER COLUMN id TYPE int USING id::int; "
            "UPDATE public.codes SET v = 'b' WHERE id = 12; DELETE FROM public.codes WHERE id = 3", target)
    found = diff(cli, f"--file={dump}", "--table=public.codes", "--format=json")
    assert found.returncode == 1, found.stdout + found.stderr
    body = json.loads(found.stdout)["tables"][0]
    assert body["counts"] == {"missing": 1, "changed": 1, "extra": 0} and body["same"] == 28, body
    assert body["examples"] == {"missing": ["3"], "changed": ["12"], "extra": []}, body


def test_a_backup_without_owners_or_privileges_compares_neither(cli, pg, target):
    # A replace from a --no-owner / --no-acl backup keeps live's owners and privileges (it
    # copies them): the summary must not say they would change to the kit's role.
    minimal_rights(cli, pg, target)
    pg.psql(f"GRANT SELECT ON public.votes TO {role(pg, 'pgrunbook_reader')}", target)
    for task in ("backup", "backup-sql"):
        made = cli(task, "--env=prod", "--no-owner", "--no-acl")
        assert made.returncode == 0, made.stderr
        found = diff(cli, f"--file={last_line(made.stdout)}", "--format=json")
        database = json.loads(found.stdout)["database"] if found.stdout else found.stderr
        assert found.returncode == 0, (task, database)
        assert database["owners"] == database["privileges"] == [], database
        assert any("--no-owner" in note for note in database["notes"]), database
