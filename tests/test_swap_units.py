"""The swap's decisions, branch by branch, against a scripted server.

The real-container tests (test_restore.py) show the happy paths and open
sessions; these force what a real server rarely does on cue: a close that
fails, a swap that fails then succeeds, an answer lost after a commit, an
interrupt in the middle of the swap's own psql run."""

from __future__ import annotations

import pytest

from pgrunbook.container import ExecResult
from pgrunbook.errors import RunbookError
from pgrunbook.restore.swap import CLOSED
from pgrunbook.restore.swap import swap_databases as _swap
from pgrunbook.settings import load_settings


class ScriptedServer:
    """psql runs answer from a script; pg_database is a set of names."""

    def __init__(self, tmp_path, runs, names=("app", "staging")):
        (tmp_path / ".env.prod").write_text("DB_PASSWORD=x\n")
        self.settings = load_settings("prod", tmp_path)
        self.runs = list(runs)  # each: ExecResult, an exception, or "commit" (rename, then ok)
        self.names = set(names)
        self.seen: list[list[str]] = []
        self.sql: list[str] = []

    def psql_argv(self, database=None):
        return ["psql", "-d", database or "app"]

    def run(self, argv, environment=None, **_):
        self.seen.append(argv)
        step = self.runs.pop(0)
        if step == "commit" or step == "commit-then-lost":
            self.names -= {"app", "staging"}
            self.names |= {"app", "previous"}
            if step == "commit-then-lost":
                raise KeyboardInterrupt
            return ExecResult(0, CLOSED.encode() + b"\n", "")
        if isinstance(step, BaseException):
            raise step
        return step

    def query(self, sql, database=None):
        self.sql.append(sql)
        if "FROM pg_database" in sql:
            return [[str(int("staging" in self.names)), str(int("previous" in self.names))]]
        return []

    def execute(self, sql, database=None):
        self.sql.append(sql)

    def end_sessions_of(self, application, wait_ms=0):
        self.sql.append(f"END SESSIONS application_name={application} wait={wait_ms}")


def swap(server):
    _swap(server, "app", "staging", "previous", "old", None, "15.4")


def reopened(server):
    return [s for s in server.sql if s.endswith('"app" WITH ALLOW_CONNECTIONS true')]


def test_one_psql_run_when_nothing_goes_wrong(tmp_path):
    server = ScriptedServer(tmp_path, ["commit"])
    swap(server)
    assert len(server.seen) == 1 and not reopened(server)
    argv = server.seen[0]
    assert argv.index("BEGIN") < argv.index("COMMIT")
    assert any("pg_terminate_backend(pid, 5000)" in part for part in argv)  # 14+: waits for them
    # the new live database is opened in the same transaction
    assert 'ALTER DATABASE "app" WITH ALLOW_CONNECTIONS true' in argv[argv.index("BEGIN"):]


def test_a_failed_close_reopens_and_says_why(tmp_path):
    failed = ExecResult(1, b"", 'ERROR:  must be owner of database app')
    server = ScriptedServer(tmp_path, [failed])
    with pytest.raises(RunbookError, match="must be owner"):
        swap(server)
    assert reopened(server) and server.names == {"app", "staging"}


def test_a_session_that_slipped_in_is_ended_and_the_swap_retried(tmp_path):
    busy = ExecResult(1, CLOSED.encode(), 'ERROR:  database "app" is being accessed by other users')
    server = ScriptedServer(tmp_path, [busy, "commit"])
    swap(server)
    assert len(server.seen) == 2 and not reopened(server)
    assert "ALLOW_CONNECTIONS false" not in " ".join(server.seen[1])  # already closed


def test_five_failures_reopen_the_old_database(tmp_path):
    busy = ExecResult(1, CLOSED.encode(), 'ERROR:  database "app" is being accessed by other users')
    server = ScriptedServer(tmp_path, [busy] * 5)
    with pytest.raises(RunbookError, match="名前の切り替えに失敗"):
        swap(server)
    assert reopened(server) and server.names == {"app", "staging"}


def test_a_lost_answer_after_the_commit_counts_as_swapped(tmp_path):
    lost = ExecResult(2, CLOSED.encode(), "server closed the connection unexpectedly")

    class Lost(ScriptedServer):
        def run(self, argv, environment=None, **_):
            self.names = {"app", "previous"}  # it committed
            self.seen.append(argv)
            return lost

    server = Lost(tmp_path, [])
    swap(server)
    assert not reopened(server)


def test_an_interrupt_ends_the_swap_session_before_deciding(tmp_path):
    server = ScriptedServer(tmp_path, [KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        swap(server)
    ended = [s for s in server.sql if s.startswith("END SESSIONS application_name=pgrunbook-swap-")
             and s.endswith("wait=5000")]
    assert ended, "the swap's own session must be ended"
    assert reopened(server)  # not swapped: the old database is open again


def test_an_interrupt_after_the_commit_leaves_the_new_database_alone(tmp_path):
    server = ScriptedServer(tmp_path, ["commit-then-lost"])
    with pytest.raises(KeyboardInterrupt):
        swap(server)
    assert not reopened(server) and server.names == {"app", "previous"}


def test_an_older_server_gets_no_wait_argument(tmp_path):
    server = ScriptedServer(tmp_path, ["commit"])
    _swap(server, "app", "staging", "previous", "old", None, "13.9")
    assert not any("5000" in part for part in server.seen[0])
