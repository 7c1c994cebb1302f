"""The swap: both renames, both databases open and both comments in one transaction.

The whole sequence (check for prepared transactions, close the live database
to new sessions, end its sessions, the swap transaction with retries, and
reopening the old database when the swap did not happen) is ONE shell script
that runs inside the DB container. The engine lets an exec run on after its
client is gone, so a ``kill -9`` of the kit, a dropped ssh or a crashed host
shell can no longer leave the live database closed: the script finishes by
itself within seconds and either the swap committed or the old database is
open again. The kit only reads the script's verdict.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

from pgrunbook.core import faults
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
    """What pg_restore does not carry, as statements for the new ``database``:
    ALTER DATABASE / ALTER ROLE ... IN DATABASE settings and the database's
    own privileges (CONNECT, TEMP, CREATE)."""
    target = quote_ident(database)
    statements = []
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


def swap_databases(
    pg: Postgres, live: str, incoming: str, outgoing: str,
    outgoing_comment: str, live_comment: str | None, server_version: str,
    carried: list[str] | None = None,
) -> None:
    """Block new sessions, end the old ones, then in ONE transaction: both renames,
    both databases open, both comments, and ``carried`` (the live database's own
    settings and privileges, now for the new one). Either all of it happened or
    none; in both cases the database named ``live`` accepts connections after,
    whatever happens to this process meanwhile (see SCRIPT)."""
    live_q, incoming_q, outgoing_q = quote_ident(live), quote_ident(incoming), quote_ident(outgoing)
    statements = [
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
        "PGUSER": pg.settings.db_user,
        "PGAPPNAME": application,
        "PGOPTIONS": "-c lock_timeout=5s -c statement_timeout=60s",
        "PGRUNBOOK_PREPARED": ("SELECT count(*) FROM pg_prepared_xacts "
                               f"WHERE database = {quote_literal(live)}"),
        "PGRUNBOOK_CLOSE": f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS false",
        "PGRUNBOOK_REOPEN": f"ALTER DATABASE {live_q} WITH ALLOW_CONNECTIONS true",
        "PGRUNBOOK_TERMINATE": (
            f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity "
            f"WHERE datname IN ({quote_literal(live)}, {quote_literal(incoming)}) "
            "AND pid <> pg_backend_pid()"),
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
    if not verdict and result.exit_code == 0:
        # the script gave a verdict (it exits 0 only then) and the engine lost it:
        # the server says what happened (framed reads), the swap is never run again
        verdict, text = verdict_from_server(pg, live, incoming, outgoing)
    outcome = SwapOutcome(verdict, text)
    if verdict == "swapped":
        return
    if verdict == "refused-prepared":
        count = next((line.split(":")[-1] for line in text.splitlines()
                      if line.startswith("pgrunbook:prepared:")), "?")
        raise Refused(
            f"{live} に準備済みトランザクション（PREPARE TRANSACTION）が {count} 件あり、名前を"
            "切り替えられません（DB は閉じていません）",
            f"SELECT gid FROM pg_prepared_xacts WHERE database = '{live}' で確認し、"
            "アプリ側で COMMIT PREPARED か ROLLBACK PREPARED してから再実行")
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
