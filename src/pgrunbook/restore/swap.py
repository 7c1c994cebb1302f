"""The swap: both renames, both databases open and both comments in one transaction.

The whole sequence (check for prepared transactions, close the live database
to new sessions, end its sessions, the swap transaction with retries, and
reopening the old database when the swap did not happen) is ONE shell script
that runs inside the DB container. The engine lets an exec run on after its
client is gone, so a ``kill -9`` of the kit, a dropped ssh or a crashed host
shell can no longer leave the live database closed: the script finishes by
itself within seconds and either the swap committed or the old database is
open again. The kit only reads the script's verdict.

What the kit cannot end stops the swap without a wait: a prepared transaction
(it holds the database like a session, and only COMMIT/ROLLBACK PREPARED ends
it) and, for a DB_USER that is not a superuser, a superuser's session
(pg_signal_backend does not reach it). Autovacuum workers are not ended by the
kit: the rename itself stops them. The swap transaction's first statement
checks for both (the other sessions just ended) and fails naming them; the
script then reopens the live database at once instead of retrying (verdict
``reopened`` with a ``pgrunbook:blocked:`` error); the run is refused
(``Blocked``) and keeps what it restored for the retry. Before the apps stop,
``wait_out_sessions`` gives such sessions REPLACE_SESSION_WAIT to go.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pgrunbook.core import faults
from pgrunbook.core.console import Console
from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.core.worklog import Entry
from pgrunbook.infra.archive import major_version
from pgrunbook.infra.framing import LostAnswer
from pgrunbook.infra.postgres import DatabaseFacts, Postgres, quote_ident, quote_literal
from pgrunbook.store import drift

CLOSED = "pgrunbook: closed"
VERDICTS = ("swapped", "refused-prepared", "close-failed", "reopened", "still-closed")

# Runs as `sh -c SCRIPT` with the SQL in the exec's environment (no quoting in
# a shell line). psql's output goes to a private file printed at the end: if
# the kit is gone, nothing blocks on a pipe nobody reads (SIGPIPE ignored).
SCRIPT = r"""
set -u
trap '' PIPE HUP INT TERM
dir="$PGRUNBOOK_SWAP_DIR"
mkdir -m 700 "$dir" || { echo "pgrunbook:verdict:close-failed"; exit 1; }
echo $$ >"$dir/pid"
log="$dir/log"
q() { psql -X -q -v ON_ERROR_STOP=1 -A -t -d postgres "$@" >>"$log" 2>&1; }
verdict() { echo "pgrunbook:verdict:$1" >>"$log"; cat "$log"; rm -rf "$dir"; exit 0; }
prepared=$(psql -X -q -A -t -d postgres -c "$PGRUNBOOK_PREPARED" 2>>"$log") || verdict close-failed
[ "$prepared" = "0" ] || { echo "pgrunbook:prepared:$prepared" >>"$log"; verdict refused-prepared; }
q -c "$PGRUNBOOK_CLOSE" || { q -c "$PGRUNBOOK_REOPEN"; verdict close-failed; }
echo "pgrunbook: closed" >>"$log"
[ -z "$PGRUNBOOK_TEST_AFTER_CLOSE" ] || sh -c "$PGRUNBOOK_TEST_AFTER_CLOSE" >>"$log" 2>&1
attempt=0
while [ "$attempt" -lt 5 ]; do
  attempt=$((attempt + 1))
  : >"$dir/attempt"
  if psql -X -q -v ON_ERROR_STOP=1 -A -t -d postgres -c "$PGRUNBOOK_TERMINATE" \
       -c "$PGRUNBOOK_SWAP" >>"$dir/attempt" 2>&1; then
    cat "$dir/attempt" >>"$log"; verdict swapped
  fi
  cat "$dir/attempt" >>"$log"
  state=$(psql -X -q -A -t -d postgres -c "$PGRUNBOOK_STATE" 2>>"$log")
  [ "$state" = "swapped" ] && verdict swapped
  # what no retry can end (a prepared transaction, a session DB_USER may not end): reopen now
  grep -q "pgrunbook:blocked:" "$dir/attempt" && break
  grep -q "being accessed by other users" "$dir/attempt" || break
  sleep 0.5
done
tries=0
while [ "$tries" -lt "$PGRUNBOOK_REOPEN_TRIES" ]; do
  tries=$((tries + 1))
  state=$(psql -X -q -A -t -d postgres -c "$PGRUNBOOK_STATE" 2>>"$log")
  [ "$state" = "swapped" ] && verdict swapped
  q -c "$PGRUNBOOK_REOPEN" && verdict reopened
  sleep 1
done
verdict still-closed
"""


class Blocked(Refused):
    """Refused for a state of the server that can pass (a prepared transaction, a
    session DB_USER cannot end), before any row changed: what the run restored is
    kept for the retry (replace.py)."""


# The sessions on the databases of a swap that DB_USER can end: every one for a
# superuser; else those of roles that are not superusers (pg_signal_backend does
# not reach a superuser's). A process with no role (an autovacuum worker) is left
# to the rename, which ends autovacuum workers itself. (A user that is not
# privileged sees other roles' sessions without backend_type: the role decides.)
SESSIONS_ON = "a.datname IN ({databases}) AND a.pid <> pg_backend_pid()"
KIT_IS_SUPERUSER = "(SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)"
SUPERUSER_SESSION = "EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.usesysid AND r.rolsuper)"
ENDABLE = f"({KIT_IS_SUPERUSER} OR (a.usesysid IS NOT NULL AND NOT {SUPERUSER_SESSION}))"
UNENDABLE = f"(NOT {KIT_IS_SUPERUSER} AND {SUPERUSER_SESSION})"
SESSION_ROW = ("jsonb_build_array(a.pid, coalesce(a.usename, ''), coalesce(a.application_name, ''), "
               "coalesce(a.backend_type, ''), a.datname)")


def _databases(names: list[str]) -> str:
    return ", ".join(quote_literal(name) for name in names)


def terminate_sql(databases: list[str], wait: str) -> str:
    where = SESSIONS_ON.format(databases=_databases(databases))
    return f"SELECT pg_terminate_backend(a.pid{wait}) FROM pg_stat_activity a WHERE {where} AND {ENDABLE}"


def blockers_sql(databases: list[str]) -> str:
    """One line of JSON when something no retry ends holds one of ``databases``, else no row."""
    names = _databases(databases)
    where = SESSIONS_ON.format(databases=names)
    # jsonb: one line whatever it holds (json_agg puts a line break between elements)
    return ("SELECT jsonb_build_object('prepared', p.n, 'sessions', s.list) FROM "
            f"(SELECT count(*) AS n FROM pg_prepared_xacts WHERE database IN ({names})) p, "
            f"(SELECT jsonb_agg({SESSION_ROW} ORDER BY a.pid) AS list FROM pg_stat_activity a "
            f"WHERE {where} AND {UNENDABLE}) s WHERE p.n > 0 OR s.list IS NOT NULL")


@dataclass(frozen=True)
class Session:
    pid: int
    user: str
    application: str
    kind: str
    database: str

    def describe(self) -> str:
        named = f"、{self.application}" if self.application else ""
        return f"pid {self.pid}（{self.user or '?'}{named}、{self.database}）"


def _sessions(rows: list) -> list[Session]:
    return [Session(int(pid), user, application, kind, database)
            for pid, user, application, kind, database in rows or []]


def unendable_sessions(pg: Postgres, databases: list[str]) -> list[Session]:
    """The sessions on ``databases`` DB_USER cannot end (none for a superuser)."""
    where = SESSIONS_ON.format(databases=_databases(databases))
    rows = pg.query(f"SELECT coalesce(jsonb_agg({SESSION_ROW} ORDER BY a.pid), '[]'::jsonb) "
                    f"FROM pg_stat_activity a WHERE {where} AND {UNENDABLE}", "postgres")
    return _sessions(json.loads(rows[0][0]))


def wait_out_sessions(pg: Postgres, databases: list[str], limit: float, console: Console,
                      on_wait: Callable[[], None] | None = None) -> None:
    """Before the apps stop: give the sessions DB_USER cannot end ``limit`` seconds
    to leave ``databases``; refuse (Blocked) when one stays. Nothing is changed."""
    found = unendable_sessions(pg, databases)
    if not found:
        return
    user = pg.settings.db_user
    console.warn(f"DB_USER {user} が終了できないセッション（superuser など）があります: "
                 f"{'、'.join(s.describe() for s in found)}。終わるのを最大 {limit:g} 秒待ちます"
                 "（アプリはまだ止めていません）")
    if on_wait:
        on_wait()
    faults.pause_point("sessions-wait")
    deadline = time.monotonic() + limit
    while found and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        found = unendable_sessions(pg, databases)
    if found:
        raise Blocked(
            f"DB_USER {user} が終了できないセッションが残っているため置き換えません: "
            f"{'、'.join(s.describe() for s in found)}（{limit:g} 秒待ちました。アプリは止めておらず、"
            "本番 DB は元のまま）",
            "そのセッションを終えてもらうか、superuser で SELECT pg_terminate_backend(<pid>) を実行して"
            "から再実行（待つ時間は REPLACE_SESSION_WAIT）")


def blocked_check(databases: list[str]) -> str:
    """The swap transaction's first statement: it fails, naming what it found, when
    something no retry ends holds one of ``databases`` (the script then reopens the
    live database at once instead of retrying). In the transaction: no extra round
    trip while the database is closed."""
    tag = f"$blocked_{uuid.uuid4().hex[:8]}$"
    return (f"DO {tag}DECLARE found text; BEGIN {blockers_sql(databases)} INTO found; "
            f"IF found IS NOT NULL THEN RAISE EXCEPTION 'pgrunbook:blocked:%', found; END IF; END{tag}")


def blocked_error(live: str, user: str, text: str) -> Blocked | None:
    """The swap's ``pgrunbook:blocked:`` error as the refusal it means (None: there is none)."""
    line = next((line for line in text.splitlines() if "pgrunbook:blocked:" in line), None)
    if line is None:
        return None
    try:
        found = json.loads(line.split("pgrunbook:blocked:", 1)[1].strip())
    except ValueError:
        found = {}
    prepared = int(found.get("prepared") or 0)
    sessions = _sessions(found.get("sessions"))
    if prepared:
        return Blocked(
            f"切り替えの直前に {live} に準備済みトランザクション（PREPARE TRANSACTION）が {prepared} 件"
            f"現れたため、切り替えずに {live} をすぐ開き直しました（本番 DB は元のまま）",
            f"SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = {quote_literal(live)} "
            "で確認し、アプリ側で COMMIT PREPARED か ROLLBACK PREPARED してから再実行")
    return Blocked(
        f"DB_USER {user} が終了できないセッションが切り替えの直前に現れたため、切り替えずに {live} を"
        f"すぐ開き直しました（本番 DB は元のまま）: {'、'.join(s.describe() for s in sessions) or '?'}",
        "そのセッションを終えてもらうか、superuser で SELECT pg_terminate_backend(<pid>) を実行して"
        "から再実行")


@dataclass(frozen=True)
class SwapOutcome:
    verdict: str
    output: str

    def errors(self) -> str:
        """The server's own lines (ERROR and its DETAIL), not the kit's markers."""
        lines = [line.strip() for line in self.output.splitlines()
                 if line.strip() and not line.startswith("pgrunbook")]
        wanted = [line for line in lines if line.startswith(("ERROR", "DETAIL", "HINT", "FATAL"))
                  or "psql:" in line]
        return " / ".join(dict.fromkeys(wanted or lines[-2:]))


def database_level_statements(database: str, live: DatabaseFacts) -> list[str]:
    """What pg_restore does not carry, as statements for the new ``database``: its
    connection limit and template flag, ALTER DATABASE / ALTER ROLE ... IN DATABASE
    settings and the database's own privileges (CONNECT, TEMP, CREATE). (Encoding,
    locale and tablespace are the staging database's from its CREATE; the comment
    is the swap's own.)"""
    target = quote_ident(database)
    statements = []
    if live.connection_limit != -1:
        statements.append(f"ALTER DATABASE {target} WITH CONNECTION LIMIT {int(live.connection_limit)}")
    if live.is_template:
        statements.append(f"ALTER DATABASE {target} WITH IS_TEMPLATE true")
    for role, config in live.settings:
        for name, value in split_config(config):
            prefix = f"ALTER ROLE {quote_ident(role)} IN DATABASE" if role else "ALTER DATABASE"
            statements.append(f"{prefix} {target} SET {quote_ident(name)} = {setting_value(name, value)}")
    if live.acl_items is not None:
        statements.append(f"REVOKE ALL ON DATABASE {target} FROM PUBLIC")
        if live.owner:
            statements.append(f"REVOKE ALL ON DATABASE {target} FROM {quote_ident(live.owner)}")
        for grantee, privilege, grantable in live.acl_items:
            who = "PUBLIC" if grantee == "" else quote_ident(grantee)
            statements.append(f"GRANT {privilege} ON DATABASE {target} TO {who}"
                              + (" WITH GRANT OPTION" if grantable else ""))
    return statements


# GUCs whose value is a list of names (pg_dump's variable_is_guc_list_quote)
LIST_SETTINGS = {"local_preload_libraries", "search_path", "session_preload_libraries",
                 "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}


def split_config(config: str) -> list[tuple[str, str]]:
    """pg_db_role_setting's array as FACTS joins it ("a=1, b=x") back into pairs.
    Values holding ", " are kept whole: a pair starts only at ``name=``."""
    pairs: list[tuple[str, str]] = []
    for item in config.split("\x1d"):
        if "=" in item:
            name, value = item.split("=", 1)
            pairs.append((name.strip(), value))
    return pairs


def setting_value(name: str, value: str) -> str:
    """The value as pg_dump writes it: list settings element by element."""
    if name.lower() not in LIST_SETTINGS:
        return quote_literal(value)
    elements, current, quoted = [], "", False
    for char in value:
        if char == '"':
            quoted = not quoted
            current += char
        elif char == "," and not quoted:
            elements.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        elements.append(current.strip())
    cleaned = [e[1:-1].replace('""', '"') if len(e) > 1 and e[0] == e[-1] == '"' else e for e in elements]
    return ", ".join(quote_literal(e) for e in cleaned) or "''"


@dataclass(frozen=True)
class Swap:
    """One swap of names: ``incoming`` takes the name ``live``, and the database that had
    it becomes ``outgoing`` with ``outgoing_comment``; ``live_comment`` is the comment the
    name ``live`` carries after (None: none); ``carried`` the live database's own settings
    and privileges, now for the new one."""

    live: str
    incoming: str
    outgoing: str
    outgoing_comment: str
    live_comment: str | None
    carried: list[str] | None = None


def swap_databases(pg: Postgres, swap: Swap, server_version: str) -> None:
    """Block new sessions, end the old ones, then in ONE transaction: both renames,
    both databases open, both comments, and ``swap.carried``. Either all of it happened
    or none; in both cases the database named ``swap.live`` accepts connections after,
    whatever happens to this process meanwhile (see SCRIPT)."""
    live, incoming, outgoing = swap.live, swap.incoming, swap.outgoing
    outgoing_comment, live_comment, carried = swap.outgoing_comment, swap.live_comment, swap.carried
    live_q, incoming_q, outgoing_q = quote_ident(live), quote_ident(incoming), quote_ident(outgoing)
    statements = [
        blocked_check([live, incoming]),
        f"ALTER DATABASE {live_q} RENAME TO {outgoing_q}",
        f"ALTER DATABASE {incoming_q} RENAME TO {live_q}",
        f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true",
        f"ALTER DATABASE {outgoing_q} WITH ALLOW_CONNECTIONS true",
        f"COMMENT ON DATABASE {outgoing_q} IS {quote_literal(outgoing_comment)}",
        f"COMMENT ON DATABASE {live_q} IS {quote_literal(live_comment) if live_comment else 'NULL'}",
        *(carried or []),
    ]
    # PostgreSQL 14+ can wait (up to 5 s) until the ended sessions are gone
    wait = ", 5000" if major_version(server_version) >= 14 else ""
    application = f"pgrunbook-swap-{uuid.uuid4().hex[:12]}"
    work_dir = f"/tmp/{application}"
    environment = {
        "PGRUNBOOK_SWAP_DIR": work_dir,
        "PGRUNBOOK_REOPEN_TRIES": str(faults.reopen_tries()),
        "PGRUNBOOK_TEST_AFTER_CLOSE": faults.after_close(),
        "PGUSER": pg.settings.db_user,
        "PGAPPNAME": application,
        "PGOPTIONS": "-c lock_timeout=5s -c statement_timeout=60s",
        "PGRUNBOOK_PREPARED": ("SELECT count(*) FROM pg_prepared_xacts "
                               f"WHERE database = {quote_literal(live)}"),
        "PGRUNBOOK_CLOSE": f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS false",
        "PGRUNBOOK_REOPEN": f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true",
        "PGRUNBOOK_TERMINATE": terminate_sql([live, incoming], wait),
        "PGRUNBOOK_SWAP": "BEGIN; " + "; ".join(statements) + "; COMMIT;",
        "PGRUNBOOK_STATE": (
            f"SELECT CASE WHEN count(*) FILTER (WHERE datname = {quote_literal(incoming)}) = 0 "
            f"AND count(*) FILTER (WHERE datname = {quote_literal(outgoing)}) = 1 "
            "THEN 'swapped' ELSE 'not' END FROM pg_database"),
    }
    faults.kill_point("swap", delay=0.3)
    try:
        result = pg.run(["sh", "-c", SCRIPT], environment=environment)
    except BaseException:
        # interrupted: the script goes on by itself; wait (bounded) for its verdict
        # so that what we say next is true
        wait_for_script(pg, work_dir)
        raise
    text = result.stdout.decode("utf-8", "replace") + result.stderr
    verdict = next((v for v in VERDICTS if f"pgrunbook:verdict:{v}" in text), "")
    if not verdict and result.exit_code < 0:
        # the engine ended the stream while the script still ran (no exit code): wait for
        # the script to finish by itself, then the server says what happened
        wait_for_script(pg, work_dir)
    if not verdict and result.exit_code in (0, -1):
        # the script gave a verdict (it exits 0 only then) and the engine lost it, or the
        # stream ended early: the server says what happened (framed reads), the swap is
        # never run again
        verdict, text = verdict_from_server(pg, live, incoming, outgoing)
    outcome = SwapOutcome(verdict, text)
    if verdict == "swapped":
        return
    if verdict == "refused-prepared":
        count = next((line.split(":")[-1] for line in text.splitlines()
                      if line.startswith("pgrunbook:prepared:")), "?")
        raise Blocked(
            f"{live} に準備済みトランザクション（PREPARE TRANSACTION）が {count} 件あり、名前を"
            "切り替えられません（DB は閉じていません）",
            f"SELECT gid FROM pg_prepared_xacts WHERE database = {quote_literal(live)} で確認し、"
            "アプリ側で COMMIT PREPARED か ROLLBACK PREPARED してから再実行")
    blocked = blocked_error(live, pg.settings.db_user, text)
    if blocked and verdict == "reopened":
        raise blocked
    if verdict == "still-closed":
        raise RunbookError(
            f"名前の切り替えに失敗し、{live} を再び開けませんでした（接続を受け付けない状態）: "
            f"{outcome.errors()}",
            f"invoke restore-recover --env={pg.settings.env} で修復"
            f"（手作業: ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true）")
    if verdict in ("reopened", "close-failed"):
        raise RunbookError(f"名前の切り替えに失敗しました（{live} は元のまま開いています）: "
                           f"{outcome.errors()}")
    raise RunbookError(f"名前の切り替えの結果が分かりません: {outcome.errors() or result.stderr}",
                       f"invoke restore-recover --env={pg.settings.env} で状態を確認")


def verdict_from_server(pg: Postgres, live: str, incoming: str, outgoing: str) -> tuple[str, str]:
    """The finished script's verdict when its output was lost, from the server: the
    swap committed, or the live database is open again (or still closed). What the
    server said on the way is lost; the verdict is not."""
    lost = "（切り替えスクリプトの出力は届きませんでした。結果はサーバーに問い合わせて確かめました）"
    committed = swap_committed(pg, incoming, outgoing)
    if committed:
        return "swapped", lost
    if committed is None:
        return "", lost
    prepared = pg.value("SELECT count(*) FROM pg_prepared_xacts "
                        f"WHERE database = {quote_literal(live)}", "postgres")
    if prepared != "0":
        return "refused-prepared", f"pgrunbook:prepared:{prepared}\n{lost}"
    return ("still-closed" if live_closed(pg, live) else "reopened"), lost


# "gone" (no folder), "running" (its shell is alive) or "stale": a folder whose
# script is gone (the container was killed or restarted mid-swap)
SCRIPT_STATE = r"""
test -d "$1" || { echo gone; exit 0; }
pid=$(cat "$1/pid" 2>/dev/null)
if [ -n "$pid" ] && grep -q "pgrunbook:verdict" "/proc/$pid/cmdline" 2>/dev/null; then
  echo running
else
  echo stale
fi
"""


def script_state(pg: Postgres, work_dir: str) -> str:
    return pg.container.run(["sh", "-c", SCRIPT_STATE, "sh", work_dir]).stdout.decode().strip()


def wait_for_script(pg: Postgres, work_dir: str, limit: float = 120) -> str:
    """Until the swap script has given its verdict (it removes its folder then), or
    is found gone without one. Returns the last state (see SCRIPT_STATE)."""
    deadline = time.monotonic() + limit
    seen = False
    started = time.monotonic()
    state = "gone"
    while time.monotonic() < deadline:
        try:
            state = script_state(pg, work_dir)
        except LostAnswer:
            state = ""  # the engine lost the answer (framing.py): ask again
        except Exception:  # noqa: BLE001 - the engine is gone: nothing to wait for
            return "gone"
        if state == "running":
            seen = True
        elif state == "stale" and time.monotonic() - started > 2:
            return state  # (a moment's grace: the folder is made just before its pid file)
        elif state == "gone" and (seen or time.monotonic() - started > 2):
            return state
        time.sleep(0.3)
    return state


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


def record_identity(pg: Postgres, entry: Entry) -> None:
    """The identity of the database just swapped in, for the next backup's drift check:
    a new cluster is then known to be the kit's own move (drift.replaced_since)."""
    with contextlib.suppress(RunbookError):
        entry.details["identity"] = drift.database_identity(pg)


def live_closed(pg: Postgres, database: str) -> bool:
    """Is ``database`` left closed to connections? True also when the server cannot
    tell us: a run that fails then keeps its journal for restore-recover."""
    try:
        facts = pg.facts(database).database
    except Exception:  # noqa: BLE001
        return True
    return facts is not None and not facts.allow_connections
