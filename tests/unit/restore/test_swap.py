"""Pure pieces of the swap and the privilege copy: statements built from what
the server said (the swap script itself runs on the real engine in
test_recovery.py and test_restore*.py)."""

from __future__ import annotations

from pgrunbook.infra.postgres import DatabaseFacts
from pgrunbook.restore.privileges import ObjectRights, copy_statements, differences
from pgrunbook.restore.staging import default_jobs
from pgrunbook.restore.swap import SwapOutcome, database_level_statements, setting_value, split_config


def facts(**changes):
    base = dict(name="app", size=1, encoding="UTF8", collate="C", ctype="C", owner="owner1",
                comment=None, acl="")
    base.update(changes)
    return DatabaseFacts(**base)


def test_list_settings_are_written_element_by_element_as_pg_dump_does():
    assert setting_value("search_path", '"$user", public') == "'$user', 'public'"
    assert setting_value("search_path", '"a,b", c') == "'a,b', 'c'"
    assert setting_value("statement_timeout", "30s") == "'30s'"
    assert split_config("search_path=\"$user\", public\x1dwork_mem=8MB") == [
        ("search_path", '"$user", public'), ("work_mem", "8MB")]


def test_database_level_statements_carry_settings_and_grants():
    live = facts(settings=[("", "statement_timeout=30s"), ("reader", "work_mem=8MB")],
                 acl_items=[("owner1", "CONNECT", False), ("reader", "CONNECT", False)])
    statements = database_level_statements("app", live)
    assert 'ALTER DATABASE "app" SET "statement_timeout" = \'30s\'' in statements
    assert 'ALTER ROLE "reader" IN DATABASE "app" SET "work_mem" = \'8MB\'' in statements
    assert statements.index('REVOKE ALL ON DATABASE "app" FROM PUBLIC') < statements.index(
        'GRANT CONNECT ON DATABASE "app" TO "reader"')
    assert database_level_statements("app", facts()) == []  # default privileges: nothing to do


def test_privilege_differences_and_the_statements_that_copy_them():
    live = {("TABLE", "public", "t"): ObjectRights("TABLE", "public", "t", "owner1",
                                                   ("owner1:SELECT:false", "reader:SELECT:false"))}
    staged = {("TABLE", "public", "t"): ObjectRights("TABLE", "public", "t", "app", ("app:SELECT:false",))}
    found = differences(live, staged)
    assert any("所有者 owner1 → app" in line for line in found)
    assert any("reader:SELECT" in line for line in found)
    statements = copy_statements(live, staged, owners=True, privileges=True)
    assert statements[0] == 'ALTER TABLE "public"."t" OWNER TO "owner1"'
    assert 'GRANT SELECT ON TABLE "public"."t" TO "reader"' in statements
    assert copy_statements(live, staged, owners=False, privileges=False) == []


def test_the_swap_outcome_keeps_the_servers_detail():
    outcome = SwapOutcome("reopened", 'pgrunbook: closed\nERROR:  database "app" is being accessed by other '
                          "users\nDETAIL:  There is 1 prepared transaction using the database.\n")
    assert "DETAIL:  There is 1 prepared transaction" in outcome.errors()


def test_default_jobs_leave_cpus_to_the_live_database():
    assert [default_jobs(n) for n in (1, 2, 4, 8, 64)] == [1, 1, 2, 4, 4]


def test_default_privileges_compare_as_changes_from_the_builtin_default():
    from pgrunbook.restore.privileges import DEFAULTS_KEY

    def rights(*items: str) -> dict:
        return {("SCHEMA", "", "public"): ObjectRights("SCHEMA", "", "public", "app", ()),
                DEFAULTS_KEY: ObjectRights(*DEFAULTS_KEY, "", tuple(sorted(items)))}

    us = "\x1f"
    live = rights(f"app{us}public{us}r{us}+Report Reader:SELECT:false",
                  f"app{us}{us}f{us}-:EXECUTE:false",
                  f"app{us}gone{us}r{us}+x:SELECT:false")  # a schema the archive lacks: not compared
    staged = rights(f"app{us}public{us}r{us}+other:INSERT:true")
    found = differences(live, staged)
    assert len(found) == 1 and found[0].startswith("既定の権限"), found
    assert "FOR ROLE app ON FUNCTIONS（PUBLIC:EXECUTE の取り消し）" in found[0]
    assert "FOR ROLE app IN SCHEMA public ON TABLES（Report Reader:SELECT）" in found[0]
    assert "other:INSERT（付与可）" in found[0] and "gone" not in found[0]
    assert copy_statements(live, staged, owners=True, privileges=False) == []
    assert copy_statements(live, staged, owners=False, privileges=True) == [
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" REVOKE INSERT ON TABLES FROM "other"',
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app" REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC',
        'ALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" GRANT SELECT ON TABLES TO "Report Reader"',
    ]
    assert differences(rights(), rights()) == []

def test_a_blocked_swap_names_the_prepared_transactions_or_the_sessions_it_met():
    from pgrunbook.restore.swap import Blocked, blocked_error

    text = ('pgrunbook: closed\npsql:<stdin>:1: ERROR:  pgrunbook:blocked:{"prepared": 0, "sessions": '
            '[[4242, "postgres", "psql", "", "app"], [4243, "dba", "", "", "app_staging"]]}\n'
            "CONTEXT:  PL/pgSQL function inline_code_block line 1 at RAISE\n")
    found = blocked_error("app", "kit", text)
    assert isinstance(found, Blocked)
    assert "pid 4242（postgres、psql、app）" in found.message and "pid 4243（dba、app_staging）" in found.message
    prepared = blocked_error("app", "kit", 'ERROR:  pgrunbook:blocked:{"prepared": 2, "sessions": null}')
    assert prepared is not None and "2 件" in prepared.message and "ROLLBACK PREPARED" in prepared.hint
    assert blocked_error("app", "kit", "ERROR:  database \"app\" is being accessed by other users") is None
