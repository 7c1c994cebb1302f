"""The swap: both renames, both databases open and both comments in one transaction."""

from __future__ import annotations

import contextlib
import time
import uuid

from pgrunbook.archive import major_version
from pgrunbook.container import ExecResult
from pgrunbook.errors import RunbookError
from pgrunbook.postgres import (
    DatabaseFacts,
    Postgres,
    explain_failure,
    quote_ident,
    quote_literal,
)

CLOSED = "pgrunbook: closed"


def swap_databases(
    pg: Postgres, live: str, incoming: str, outgoing: str,
    outgoing_comment: str, live_comment: str | None, server_version: str,
) -> None:
    """Block new sessions, end the old ones, then in ONE transaction: both renames,
    both databases open, both comments. Either all of it happened or none; in both
    cases the database named ``live`` accepts connections after.

    The first attempt is one psql run (each run costs ~50 ms); a retry, when a
    session slipped in, ends the sessions again. Interrupted (Ctrl-C, SIGTERM, a
    dropped ssh), the swap's own session is ended before anything is decided: the
    engine would otherwise let it run on and commit after we said it did not."""
    live_q, incoming_q, outgoing_q = quote_ident(live), quote_ident(incoming), quote_ident(outgoing)
    statements = [
        f"ALTER DATABASE {live_q} RENAME TO {outgoing_q}",
        f"ALTER DATABASE {incoming_q} RENAME TO {live_q}",
        f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true",
        f"ALTER DATABASE {outgoing_q} WITH ALLOW_CONNECTIONS true",
        f"COMMENT ON DATABASE {outgoing_q} IS {quote_literal(outgoing_comment)}",
        f"COMMENT ON DATABASE {live_q} IS {quote_literal(live_comment) if live_comment else 'NULL'}",
    ]
    swap = ["-c", "BEGIN"] + [part for statement in statements for part in ("-c", statement)]
    swap += ["-c", "COMMIT"]
    # PostgreSQL 14+ can wait (up to 5 s) until the ended sessions are gone
    wait_ms = 5000 if major_version(server_version) >= 14 else 0
    wait = f", {wait_ms}" if wait_ms else ""
    terminate = (f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity "
                 f"WHERE datname IN ({quote_literal(live)}, {quote_literal(incoming)}) "
                 "AND pid <> pg_backend_pid()")
    application = f"pgrunbook-swap-{uuid.uuid4().hex[:12]}"

    def run(arguments: list[str]) -> ExecResult:
        result = None
        try:
            result = pg.run(pg.psql_argv("postgres") + arguments,
                            environment={"PGAPPNAME": application})
        finally:
            if result is None:  # interrupted: end our session (an open transaction rolls back)
                with contextlib.suppress(Exception):
                    pg.end_sessions_of(application, wait_ms)
        return result

    swapped: bool | None = False
    try:
        result = run(["-c", f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS false",
                      "-c", terminate, "-c", f"\\echo {CLOSED}", *swap])
        if not result.ok and CLOSED.encode() not in result.stdout:
            raise explain_failure(result.stderr, pg.settings, live)
        last_error = "unknown"
        for attempt in range(5):
            if attempt:
                time.sleep(0.5)
                result = run(["-c", terminate, *swap])
            if result.ok or swap_committed(pg, incoming, outgoing):  # committed; psql's answer lost?
                swapped = True
                return
            last_error = result.error_text()
        raise RunbookError(f"名前の切り替えに失敗しました: {last_error}")
    finally:
        if not swapped:
            swapped = swap_committed(pg, incoming, outgoing)
        # swapped: the new database is open (same transaction); otherwise the old
        # database must not stay closed
        if not swapped:
            with contextlib.suppress(Exception):
                pg.execute(f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true", "postgres")


def swap_committed(pg: Postgres, incoming: str, outgoing: str) -> bool | None:
    """Did the swap commit (``incoming`` gone, ``outgoing`` there)? None when the
    server cannot tell us."""
    try:
        rows = pg.query(f"SELECT count(*) FILTER (WHERE datname = {quote_literal(incoming)}), "
                        f"count(*) FILTER (WHERE datname = {quote_literal(outgoing)}) FROM pg_database",
                        "postgres")
        return rows[0] == ["0", "1"]
    except Exception:  # noqa: BLE001
        return None


def database_level_notes(live: DatabaseFacts) -> list[str]:
    """Database-level settings and grants that pg_restore does not carry over."""
    notes = [f"ALTER {'ROLE ' + role + ' IN ' if role else ''}DATABASE ... SET {config}"
             for role, config in live.settings]
    if live.acl:
        notes.append(f"データベースの権限 {live.acl}")
    return notes
