"""PostgreSQL inside the container: psql queries, versions, table statistics.

Reads are framed (framing.py); reads of one step, of one database or several, go
together in one exec (``Postgres.queries``): an exec costs the engine tens of
milliseconds of CPU, a psql inside the container a few.

SQL identifiers are validated by settings and quoted here; values that reach
SQL go through ``quote_literal``. The password travels in the exec
environment (PGPASSWORD), never in argv.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.infra.container import Container, ExecResult
from pgrunbook.infra.framing import MARK, Frame, answered, lost_answer

FIELD = "\x1f"
RECORD = "\x1e"

# The tables the kit lists and counts: ordinary tables (partitions, not their
# parents) outside the system schemas, as "FROM pg_class c JOIN pg_namespace n".
USER_TABLES_FROM = """
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
"""
# The exact count(*) of the table in the row, with identifiers quoted by the
# server's own format(%I): every table counted in one round trip.
EXACT_ROWS = """(xpath('/row/c/text()', query_to_xml(
    format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint"""

USER_TABLES = f"SELECT n.nspname, c.relname {USER_TABLES_FROM} ORDER BY 1, 2"
TABLE_ROW_COUNTS = f"SELECT n.nspname, c.relname, {EXACT_ROWS} {USER_TABLES_FROM} ORDER BY 1, 2"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_label(label: str) -> str:
    """A table's ``schema.name`` label (split at its first dot) as a quoted name."""
    return ".".join(quote_ident(part) for part in label.split(".", 1))


def quote_literal(value: str) -> str:
    """A string constant that means ``value`` whatever standard_conforming_strings
    says: with a backslash in it, an escape string (E'...', backslashes doubled),
    as the server's own quote_literal() writes it; under the setting off a plain
    '...' would read a backslash as an escape (and \\' as the end of the literal)."""
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


@dataclass(frozen=True)
class TableCount:
    schema: str
    name: str
    rows: int

    def as_dict(self) -> dict[str, object]:
        return {"schema": self.schema, "name": self.name, "rows": self.rows}


def explain_failure(stderr: str, settings: Settings, database: str | None = None,
                    exit_code: int | None = None) -> RunbookError:
    """Turn libpq/pg_dump's stderr into the operator's one line."""
    database = database or settings.db_name
    text = stderr.strip()
    if not text:  # the engine lost it too (framing.py): the exit code is all there is
        code = f"（終了コード {exit_code}、エラーの出力は届きませんでした）" if exit_code is not None else ""
        return RunbookError(f"PostgreSQL のコマンドが失敗しました{code}",
                            "サーバーのログ（docker logs）を確認して再実行")
    if "password authentication failed" in text or "no password supplied" in text:
        return RunbookError(
            f"DB ユーザー {settings.db_user} のパスワード認証に失敗しました",
            f"{settings.files[-1].name} の DB_PASSWORD "
            f"（または PGRUNBOOK_{settings.env.upper()}_DB_PASSWORD）を確認",
        )
    if "is not currently accepting connections" in text:
        return RunbookError(
            f"データベース {database!r} が接続を受け付けない状態です（ALLOW_CONNECTIONS false。"
            "置き換えが途中で止まった可能性）",
            f"invoke restore-recover --env={settings.env} で確認・修復",
        )
    if re.search(r'database "[^"]*" does not exist', text):
        return RunbookError(
            f"データベース {database!r} がコンテナ {settings.db_container} にありません",
            f"DB_NAME を確認（docker exec {settings.db_container} psql -U {settings.db_user} "
            "-d postgres -l で一覧表示）",
        )
    if re.search(r'role "[^"]*" does not exist', text):
        return RunbookError(
            f"DB ユーザー {settings.db_user!r} が存在しません",
            f"{settings.files[-1].name} の DB_USER を確認",
        )
    lock = re.search(r'could not obtain lock on (?:relation|table) "?([^"\n]+)"?', text)
    if not lock and "timeout" in text:  # pg_dump --lock-wait-timeout cancels its LOCK TABLE
        lock = re.search(r"Query was: LOCK TABLE (\S+)", text)
    if lock or "due to lock timeout" in text:
        table = lock.group(1) if lock else "テーブル"
        return RunbookError(
            f"{table} のロックを {settings.dump_lock_wait_timeout} 以内に取れませんでした"
            "（長いトランザクションや DDL がロックを持っています）",
            "pg_stat_activity で待たせているセッションを確認し、終わってから再実行"
            "（待ち時間は DUMP_LOCK_WAIT_TIMEOUT）",
        )
    if "could not connect" in text or "connection to server" in text:
        return RunbookError(
            f"コンテナ {settings.db_container} の PostgreSQL に接続できません",
            "サーバーが起動中か（docker logs）を確認",
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.search(r"\b(ERROR|FATAL|error|fatal):", line)]
    chosen = named[0] if named else (lines[-1] if lines else "")
    return RunbookError(chosen or "PostgreSQL のコマンドが失敗しました")


# Everything a restore needs to know about the server and the live database,
# in one round trip (each psql exec costs ~50 ms; a replace used to make 25).
FACTS = """
SELECT json_build_object(
  'version', split_part(current_setting('server_version'), ' ', 1),
  'data_directory', CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
                         THEN current_setting('data_directory') END,
  'database', (
    SELECT json_build_object(
      'size', CASE WHEN has_database_privilege(d.oid, 'CONNECT')
                        OR pg_has_role('pg_read_all_stats', 'USAGE')
                   THEN pg_database_size(d.oid) END,
      'encoding', pg_encoding_to_char(d.encoding),
      'collate', d.datcollate, 'ctype', d.datctype,
      'owner', pg_get_userbyid(d.datdba),
      'comment', shobj_description(d.oid, 'pg_database'),
      'acl', coalesce(d.datacl::text, ''),
      'settings', (
        SELECT coalesce(json_agg(json_build_array(
                 CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END,
                 array_to_string(s.setconfig, chr(29)))), '[]'::json)
        FROM pg_db_role_setting s WHERE s.setdatabase = d.oid),
      'acl_items', CASE WHEN d.datacl IS NOT NULL THEN (
        SELECT coalesce(json_agg(json_build_array(
                 CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END,
                 a.privilege_type, a.is_grantable)), '[]'::json)
        FROM aclexplode(d.datacl) a) END,
      'allow_connections', d.datallowconn,
      -- what CREATE DATABASE sets (the columns 15 and 17 added or renamed, read by name
      -- from to_jsonb: absent before, no version test here)
      'locale_provider', coalesce(to_jsonb(d)->>'datlocprovider', 'c'),
      'locale', coalesce(to_jsonb(d)->>'datlocale', to_jsonb(d)->>'daticulocale'),
      'icu_rules', to_jsonb(d)->>'daticurules',
      'collation_version', to_jsonb(d)->>'datcollversion',
      'tablespace', (SELECT t.spcname FROM pg_tablespace t WHERE t.oid = d.dattablespace),
      -- CREATE DATABASE checks the privilege only for a tablespace it is given
      'tablespace_create', (SELECT t.spcname = 'pg_default' FROM pg_tablespace t
                            WHERE t.oid = d.dattablespace)
                           OR has_tablespace_privilege(d.dattablespace, 'CREATE'),
      'connection_limit', d.datconnlimit,
      'is_template', d.datistemplate,
      'prepared', (SELECT count(*) FROM pg_prepared_xacts p WHERE p.database = d.datname),
      'logical_slots', (SELECT coalesce(json_agg(r.slot_name ORDER BY r.slot_name), '[]'::json)
                        FROM pg_replication_slots r WHERE r.database = d.datname),
      -- the owner's privileges (ALTER DATABASE ... RENAME, COMMENT need them: INHERIT)
      'user_owns', pg_has_role(d.datdba, 'USAGE'),
      -- 16+: CREATE DATABASE ... OWNER and ALTER ... OWNER TO need the membership's SET option
      'user_sets_owner', CASE WHEN current_setting('server_version_num')::int >= 160000
                              THEN pg_has_role(d.datdba, 'SET') ELSE true END)
    FROM pg_database d WHERE d.datname = %s),
  'user', (SELECT json_build_object('name', r.rolname, 'superuser', r.rolsuper,
                                    'createdb', r.rolcreatedb,
                                    'signal', pg_has_role('pg_signal_backend', 'MEMBER'))
           FROM pg_roles r WHERE r.rolname = current_user))
"""


@dataclass(frozen=True)
class DatabaseFacts:
    """The live database as pg_restore will not recreate it."""

    name: str
    size: int | None  # None without the privilege to ask
    encoding: str
    collate: str
    ctype: str
    owner: str
    comment: str | None
    acl: str
    settings: list[tuple[str, str]] = field(default_factory=list)  # (role or "", "a=b\x1dc=d")
    acl_items: list[tuple[str, str, bool]] | None = None  # (grantee or "" for PUBLIC, privilege,
    #                                                        grantable); None: the default privileges
    allow_connections: bool = True
    prepared_transactions: int = 0
    logical_slots: tuple[str, ...] = ()
    user_owns: bool = True  # the kit user is (a member of) the owner
    locale_provider: str = "c"  # pg_database.datlocprovider: c (libc), i (ICU, 15+), b (builtin, 17+)
    locale: str | None = None  # the ICU or builtin locale (daticulocale, datlocale from 17)
    icu_rules: str | None = None  # ICU tailoring rules (16+)
    collation_version: str | None = None  # datcollversion (15+): the library's version at creation
    tablespace: str = "pg_default"
    tablespace_create: bool = True  # the kit user may create a database in that tablespace
    connection_limit: int = -1
    is_template: bool = False
    user_sets_owner: bool = True  # 16+: the membership of the owner has the SET option


@dataclass(frozen=True)
class KitUser:
    """The kit's DB_USER as the server sees it."""

    name: str
    superuser: bool
    createdb: bool
    signal_backend: bool  # member of pg_signal_backend: may end other roles' sessions


@dataclass(frozen=True)
class ServerFacts:
    version: str
    data_directory: str | None  # None without pg_read_all_settings
    database: DatabaseFacts | None  # None: no such database
    user: KitUser | None = None


@dataclass(frozen=True)
class Ask:
    """One read of ``Postgres.queries``: its SQL and its database (None: DB_NAME)."""

    sql: str
    database: str | None = None


def records(stdout: bytes) -> list[list[str]]:
    """psql's unaligned, tuples-only output (FIELD, RECORD) as rows."""
    text = stdout.decode("utf-8", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    return [record.split(FIELD) for record in text.split(RECORD) if record != ""]


def split_answers(stdout: bytes, stderr: str, nonce: str,
                  count: int) -> list[tuple[bytes, str, int]] | None:
    """The answers of ``Postgres.queries`` out of one exec's output: each one's
    stdout, stderr and exit code, in order; None unless every mark is there, in
    its place (a broken answer is a lost one, never a shorter one)."""
    marks = list(re.finditer(rb"\n" + nonce.encode() + rb":(\d+):(\d+)\n", stdout))
    if [int(mark.group(1)) for mark in marks] != list(range(1, count + 1)) \
            or marks[-1].end() != len(stdout):
        return None
    errors = re.split("\n" + nonce + ":\\d+\n", stderr)
    answers, start = [], 0
    for index, mark in enumerate(marks):
        error = errors[index] if index < len(errors) else ""
        answers.append((stdout[start:mark.start()], error, int(mark.group(2))))
        start = mark.end()
    return answers


def server_facts(database: str, answer: str) -> ServerFacts:
    """FACTS's answer (one json value) as ServerFacts."""
    raw = json.loads(answer)
    found = raw.get("database")
    facts = None
    if found:
        facts = DatabaseFacts(
            database, None if found["size"] is None else int(found["size"]),
            found["encoding"], found["collate"], found["ctype"],
            found["owner"], found["comment"] or None, found["acl"],
            [(role, config) for role, config in found["settings"]],
            None if found.get("acl_items") is None
            else [(grantee, privilege, bool(grantable))
                  for grantee, privilege, grantable in found["acl_items"]],
            bool(found.get("allow_connections", True)), int(found.get("prepared") or 0),
            tuple(found.get("logical_slots") or ()), bool(found.get("user_owns", True)),
            found.get("locale_provider") or "c", found.get("locale"), found.get("icu_rules"),
            found.get("collation_version"), found.get("tablespace") or "pg_default",
            bool(found.get("tablespace_create", True)), int(found.get("connection_limit", -1)),
            bool(found.get("is_template", False)), bool(found.get("user_sets_owner", True)),
        )
    user = raw.get("user")
    kit_user = (KitUser(user["name"], bool(user["superuser"]), bool(user["createdb"]),
                        bool(user["signal"])) if user else None)
    return ServerFacts(raw["version"], raw.get("data_directory"), facts, kit_user)


def _one_value(rows: list[list[str]], sql: str) -> str:
    if len(rows) != 1 or not rows[0]:
        raise RunbookError(f"PostgreSQL の応答が想定と違います（{len(rows)} 行）: "
                           f"{' '.join(sql.split()[:6])} …",
                           "サーバーのログ（docker logs）を確認して再実行")
    return rows[0][0]


class Postgres:
    """psql and friends, run inside the DB container as DB_USER."""

    def __init__(self, container: Container, settings: Settings) -> None:
        self.container = container
        self.settings = settings
        self.environment = settings.password_environment()

    def run(
        self,
        argv: list[str],
        *,
        stdin: Iterable[bytes] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        environment: dict[str, str] | None = None,
        framed: bool = False,
    ) -> ExecResult:
        """A tool as DB_USER. ``framed``: its output in a frame (framing.py), the
        result's ``complete`` False when the answer was lost (see ``read``)."""
        env = dict(self.environment)
        env.update(environment or {})
        run = self.container.exec_framed if framed else self.container.exec
        return run(argv, environment=env, stdin=stdin, on_stdout=on_stdout)

    def read(self, argv: list[str], stdin: Callable[[], Iterable[bytes]] | None = None) -> ExecResult:
        """A tool whose output is read (pg_restore --list), framed: its whole output,
        asked again when the answer was lost (``stdin`` makes its input anew for
        each try), then LostAnswer. A failed command is a result, not retried."""

        def ask() -> ExecResult:
            result = self.run(argv, stdin=stdin() if stdin else None, framed=True)
            if not result.complete:
                raise lost_answer(self.container.name, argv[0])
            return result

        return answered(ask)

    def psql_argv(self, database: str | None = None) -> list[str]:
        return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", self.settings.db_user,
                "-d", database or self.settings.db_name]

    def queries(self, asks: Sequence[Ask]) -> list[list[list[str]]]:
        """Several reads, of one database or several, in one exec: each by a psql of its
        own (as ``query``: the same argv, the same errors), one after the other, each
        answer closed by a mark that carries its exit code. Framed as a whole; a lost
        or broken answer asks them all again (``answered``). An exec costs the engine
        tens of milliseconds of CPU; a psql inside the container, a few."""
        if len(asks) < 2:  # none, or one: no batch
            return [self.query(ask.sql, ask.database) for ask in asks]
        nonce = secrets.token_hex(8)
        arguments = [nonce, FIELD, RECORD]
        for ask in asks:
            arguments += [ask.database or self.settings.db_name, ask.sql]
        script = (
            'n=$1; f=$2; r=$3; shift 3; i=0; while [ "$#" -gt 1 ]; do i=$((i + 1)); '
            + " ".join(shlex.quote(word) for word in self.psql_argv("")[:-2])
            + ' -d "$1" -A -t -F "$f" -R "$r" -c "$2"; rc=$?; '
            'printf "\\n%s:%d:%d\\n" "$n" "$i" "$rc"; printf "\\n%s:%d\\n" "$n" "$i" >&2; '
            "shift 2; done")

        def ask() -> list[tuple[bytes, str, int]]:
            result = self.run(["sh", "-c", script, "sh", *arguments], framed=True)
            answers = split_answers(result.stdout, result.stderr, nonce, len(asks))
            if not result.complete or answers is None:
                raise lost_answer(self.container.name, "psql")
            return answers

        found = []
        for (stdout, stderr, code), one in zip(answered(ask), asks, strict=True):
            if code:
                raise explain_failure(stderr, self.settings,
                                      one.database, code)
            found.append(records(stdout))
        return found

    def query(self, sql: str, database: str | None = None) -> list[list[str]]:
        """The rows of a read, whole: framed (framing.py), asked again when the answer
        was lost, then one line (LostAnswer); never an empty list for a lost answer.
        The SQL may run more than once: reads, and statements whose repetition is
        harmless (pg_terminate_backend); anything else goes through ``execute``."""
        argv = self.psql_argv(database) + ["-A", "-t", "-F", FIELD, "-R", RECORD, "-c", sql]

        def ask() -> ExecResult:
            result = self.run(argv, framed=True)
            if not result.complete:
                raise lost_answer(self.container.name, "psql")
            if not result.ok:
                raise explain_failure(result.stderr, self.settings, database, result.exit_code)
            return result

        return records(answered(ask).stdout)

    def value(self, sql: str, database: str | None = None) -> str:
        """The one value of a query that returns one row (an aggregate, a json_build_object)."""
        return _one_value(self.query(sql, database), sql)

    def execute(self, sql: str, database: str | None = None) -> None:
        """A statement with side effects: run once, never again on a lost answer (the
        exit code says whether it succeeded; a caller that must know more reads)."""
        result = self.run(self.psql_argv(database) + ["-c", sql])
        if not result.ok:
            raise explain_failure(result.stderr, self.settings, database, result.exit_code)

    def facts(self, database: str) -> ServerFacts:
        """The server's version and data directory and ``database``'s facts, one query."""
        return self.facts_of(database)[0]

    def facts_of(self, *databases: str) -> list[ServerFacts]:
        """``facts`` of each database, in one exec."""
        answers = self.queries([Ask(FACTS % quote_literal(name), "postgres") for name in databases])
        return [server_facts(name, _one_value(rows, "facts")) for name, rows in
                zip(databases, answers, strict=True)]

    def facts_and(self, database: str, *also: Ask) -> tuple[ServerFacts, list[list[list[str]]]]:
        """``facts`` of ``database`` and the answers of ``also``, in one exec."""
        answers = self.queries([Ask(FACTS % quote_literal(database), "postgres"), *also])
        return server_facts(database, _one_value(answers[0], "facts")), answers[1:]

    def server_version(self) -> str:
        return self.value("SHOW server_version")

    def tool_version(self, tool: str) -> str:
        result = self.container.run([tool, "--version"])
        if not result.ok or not result.stdout.strip():
            raise RunbookError(
                f"コンテナ {self.container.name} に {tool} がありません",
                "PostgreSQL のクライアントツールが入ったコンテナを DB_CONTAINER に指定",
            )
        return tool_version_of(result.stdout.decode())

    def user_tables(self, database: str | None = None) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in self.query(USER_TABLES, database)]

    def end_sessions_of(self, application: str, wait_ms: int = 0) -> None:
        """End the server sessions of one of our own runs, found by the PGAPPNAME it
        was given: the engine lets an exec run on after its client left (Ctrl-C,
        SIGTERM). ``wait_ms`` (PostgreSQL 14+) waits until they are gone."""
        wait = f", {wait_ms}" if wait_ms else ""
        self.query(f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity "
                   f"WHERE application_name = {quote_literal(application)}", "postgres")

    def database_exists(self, name: str) -> bool:
        sql = f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(name)}"
        return bool(self.query(sql, "postgres"))

    def databases(self) -> list[str]:
        rows = self.query("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1",
                          "postgres")
        return [row[0] for row in rows]


# The kit's space of advisory locks ('pgrb'): pg_advisory_lock(LOCK_SPACE, hashtext(key))
LOCK_SPACE = 1885827682


class ServerLock:
    """One writer per database on the server, whichever host or checkout runs it.

    A session-level advisory lock taken by one psql session in the ``postgres``
    database and held for the run's length: the session reads its commands from
    the kit (exec with stdin), so it ends, and the lock with it, when the run
    releases it, when the kit dies however it dies (the engine closes the
    session's input; a ``kill -9`` included) and when the server restarts. Its
    application_name names the holder for whoever is refused.
    """

    ANSWER = re.compile(rb"pgrunbook-lock=([tf])")

    def __init__(self, pg: Postgres, key: str, holder: str) -> None:
        self.pg = pg
        self.key = key
        self.holder = holder[:63]
        self._answered = threading.Event()
        self._release = threading.Event()
        self._output = bytearray()
        self._granted: bool | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="server-lock", daemon=True)

    def _key_sql(self) -> str:
        return f"{LOCK_SPACE}, hashtext({quote_literal('pgrunbook:' + self.key)})"

    def _statements(self) -> Iterator[bytes]:
        yield f"SELECT 'pgrunbook-lock=' || pg_try_advisory_lock({self._key_sql()});\n".encode()
        self._release.wait()

    def _on_stdout(self, data: bytes) -> None:
        self._output.extend(data)
        match = self.ANSWER.search(self._output)
        if match and self._granted is None:
            self._granted = match.group(1) == b"t"
            self._answered.set()

    def _run(self) -> None:
        argv = self.pg.psql_argv("postgres") + ["-A", "-t"]
        try:
            result = self.pg.run(argv, stdin=self._statements(), on_stdout=self._on_stdout,
                                 environment={"PGAPPNAME": self.holder})
            if self._granted is None and not result.ok:
                self._failure = explain_failure(result.stderr, self.pg.settings, "postgres")
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self._failure = error
        finally:
            self._answered.set()

    ANSWER_WAIT = 10.0  # seconds before the server is asked whether the answer was lost
    ANSWER_LIMIT = 120.0  # seconds before a session that never runs its statement is given up

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another session holds it. The engine can
        drop the session's output (its answer): then the server is asked what the session got."""
        self._thread.start()
        deadline = time.monotonic() + self.ANSWER_LIMIT
        while not self._answered.wait(self.ANSWER_WAIT):
            seen = self._granted_to_our_session()
            if seen is not None:
                self._granted = seen
                break
            if time.monotonic() > deadline:
                break
        if self._granted:
            return True
        self.release()
        if self._failure:
            raise self._failure
        if self._granted is None:
            raise RunbookError("サーバーのロックを取れません（psql の応答がありません）")
        return False

    def _granted_to_our_session(self) -> bool | None:
        """What our session's pg_try_advisory_lock got, asked of the server (a framed read);
        None while the session has not run it yet."""
        rows = self.pg.query(
            "SELECT coalesce(bool_or(l.granted), false) FROM pg_stat_activity a "
            "LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' "
            f"AND l.classid = {LOCK_SPACE} AND l.objsubid = 2 "
            f"AND l.objid = hashtext({quote_literal('pgrunbook:' + self.key)})::oid "
            f"WHERE a.application_name = {quote_literal(self.holder)} "
            "AND a.query LIKE '%pg_try_advisory_lock%' HAVING count(*) > 0", "postgres")
        return rows[0][0] == "t" if rows else None

    @property
    def held(self) -> bool:
        """Still held: its session is alive (a server restart would have ended it)."""
        return bool(self._granted) and self._thread.is_alive()

    def holders(self) -> list[str]:
        """Who holds it (their sessions' application_name and start), for the refusal."""
        rows = self.pg.query(
            "SELECT coalesce(a.application_name, ''), "
            "to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
            f"AND l.classid = {LOCK_SPACE} AND l.objsubid = 2 "
            f"AND l.objid = hashtext({quote_literal('pgrunbook:' + self.key)})::oid", "postgres")
        return [f"{name or '?'}（{started} から）" for name, started in rows]

    def release(self) -> None:
        self._release.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


class SnapshotSession:
    """One REPEATABLE READ transaction that pg_dump shares through --snapshot.

    It exports its snapshot for pg_dump, waits until pg_dump has started (and so
    imported the snapshot), then counts every table's rows in that same
    snapshot while the dump runs. The counts in the manifest are therefore
    exactly what the dump holds, even on a database that is being written to,
    and they cost no extra time on a machine with a spare core.
    """

    # the server's version rides along (the default compression follows it): no round trip of its own
    SNAPSHOT = re.compile(rb"server_version=(\S*) snapshot=([0-9A-Fa-f-]+)[\x1e\n]")
    ALSO = "pgrunbook-also="

    def __init__(self, pg: Postgres, also: str = "") -> None:
        """``also``: one more query of a single value (e.g. the database's identity),
        answered by the same session right after the snapshot: ``also_answer()``."""
        self.pg = pg
        self.also = also
        self._started = threading.Event()
        self._release = threading.Event()
        self._abort = False
        self._output = bytearray()
        self._snapshot: str | None = None
        self.server_version = ""  # e.g. "17.6", known once start() returned
        self._result: ExecResult | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-session", daemon=True)
        self._end = f"{MARK}:{Frame().nonce}:end"

    def _statements(self) -> Iterator[bytes]:
        timeout = quote_literal(self.pg.settings.dump_lock_wait_timeout)
        yield (
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
            f"SET LOCAL lock_timeout = {timeout};\n"
            "SELECT 'server_version=' || split_part(current_setting('server_version'), ' ', 1)"
            " || ' snapshot=' || pg_export_snapshot();\n"
        ).encode()
        if self.also:
            yield f"SELECT {quote_literal(self.ALSO)} || ({self.also.strip()});\n".encode()
        self._release.wait()
        if self._abort:
            yield b"ROLLBACK;\n"
            return
        # the end mark: the counts are whole only when it arrived after them
        yield (TABLE_ROW_COUNTS.strip() + f";\nCOMMIT;\nSELECT '{self._end}';\n").encode()

    def _on_stdout(self, data: bytes) -> None:
        self._output.extend(data)
        if self._snapshot is None:
            match = self.SNAPSHOT.search(self._output)
            if match:
                self.server_version = match.group(1).decode()
                self._snapshot = match.group(2).decode()
                self._started.set()

    def _run(self) -> None:
        argv = self.pg.psql_argv() + ["-A", "-t", "-F", FIELD, "-R", RECORD]
        try:
            self._result = self.pg.run(argv, stdin=self._statements(), on_stdout=self._on_stdout)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            self._failure = error
        finally:
            self._started.set()

    # psql answers the snapshot query in milliseconds; nothing by then means the
    # engine lost that answer (the session waits for its next statement meanwhile)
    SNAPSHOT_WAIT = 15.0

    @classmethod
    def opened(cls, pg: Postgres, also: str = "") -> tuple[SnapshotSession, str]:
        """A started session and its snapshot id; a session whose answer was lost is
        rolled back and another one opened (framing.answered)."""

        def ask() -> tuple[SnapshotSession, str]:
            session = cls(pg, also=also)
            return session, session.start()

        return answered(ask)

    def start(self) -> str:
        """Open the transaction; return the snapshot id for pg_dump --snapshot."""
        self._thread.start()
        if not self._started.wait(self.SNAPSHOT_WAIT):
            self.abort()
            raise lost_answer(self.pg.container.name, "psql（スナップショットの取得）")
        if self._snapshot is None:
            self._release.set()
            self._thread.join()
            if self._failure:
                raise self._failure
            stderr = self._result.stderr if self._result else ""
            if self._result is not None and self._result.ok:  # ended well, said nothing: lost
                raise lost_answer(self.pg.container.name, "psql（スナップショットの取得）")
            raise explain_failure(stderr, self.pg.settings,
                                  exit_code=self._result.exit_code if self._result else None)
        return self._snapshot

    def release(self) -> None:
        """pg_dump has started: count the rows now, in the shared snapshot."""
        self._release.set()

    def abort(self) -> None:
        self._abort = True
        self._release.set()
        self._thread.join(timeout=30)

    def counts(self) -> list[TableCount]:
        self._release.set()
        self._thread.join()
        if self._failure:
            raise self._failure
        assert self._result is not None
        if not self._result.ok:
            raise explain_failure(self._result.stderr, self.pg.settings)
        after = self._after_snapshot()
        if not after.rstrip("\n").endswith(self._end):
            raise lost_answer(self.pg.container.name, "psql（行数）")
        after = after.rstrip("\n")[: -len(self._end)]
        found = []
        for record in re.split(r"[\x1e\n]", after):
            fields = record.split(FIELD)
            if len(fields) == 3 and fields[2].strip().lstrip("-").isdigit():
                found.append(TableCount(fields[0], fields[1], int(fields[2])))
        return found

    def _after_snapshot(self) -> str:
        return self._output.decode("utf-8", "replace").split(self._snapshot or "", 1)[-1]

    def also_answer(self) -> str | None:
        """The ``also`` query's value, once counts() has returned (None: not asked, or
        the session ended before answering it)."""
        for record in re.split(r"[\x1e\n]", self._after_snapshot()):
            if record.startswith(self.ALSO):
                return record[len(self.ALSO):]
        return None


def tool_version_of(text: str) -> str:
    """'pg_restore (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)' -> '15.18' (a PostgreSQL tool's
    ``--version``, in the container or on the host)."""
    match = re.search(r"(\d+(?:\.\d+)*)", text)
    return match.group(1) if match else text.strip()
