"""Databases the kit creates: their names, the comment that marks them, create and drop."""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pgrunbook.core.console import Console
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.settings import Settings
from pgrunbook.core.worklog import now_iso, operator
from pgrunbook.infra.postgres import (
    DatabaseFacts,
    Postgres,
    ServerFacts,
    explain_failure,
    quote_ident,
    quote_literal,
)
from pgrunbook.infra.versions import describe_locale, locale_options

MARK = "pgrunbook"
ROLES = ("scratch", "staging", "previous", "verify", "rolledback", "prestaged", "partial")
MAX_NAME = 63


_SEQUENCE = itertools.count(secrets.randbelow(1 << 24))  # kit_name's part


def kit_name(settings: Settings, role: str, when: datetime | None = None, token: str | None = None) -> str:
    """``<DB_NAME>_pgrunbook_<role>_<YYYYmmddHHMMSSmmm>_<4 hex>``: the time to the
    millisecond and a part that differs, so that two runs (two hosts, two checkouts,
    a restore test beside a replace) do not get one name (if they did, the second
    CREATE DATABASE fails; nothing is dropped). The part is a per-process sequence
    from a random start: names made by one process never repeat (16 random bits
    alone collided once in 50 tries for 50 names of one millisecond); two processes
    share a name only if they start within one millisecond at the same point of the
    sequence. ``token`` fixes the part (the runbook's examples)."""
    when = when or datetime.now()
    stamp = when.strftime("%Y%m%d%H%M%S") + f"{when.microsecond // 1000:03d}"
    part = next(_SEQUENCE)
    name = f"{settings.db_name}_{MARK}_{role}_{stamp}_{token or f'{part & 0xFFFF:04x}'}"
    if len(name.encode()) > MAX_NAME:
        name = f"{MARK}_{role}_{stamp}_{token or f'{part & 0xFFFFFF:06x}'}"
    return name


def scratch_name(settings: Settings, when: datetime | None = None) -> str:
    """The runbook's own name: <DB_NAME>_restore_<YYYYMMDD>."""
    return f"{settings.db_name}_restore_{(when or datetime.now()).strftime('%Y%m%d')}"


@dataclass(frozen=True)
class KitDatabase:
    name: str
    role: str
    env: str
    created_at: str
    detail: str
    size: int
    allow_connections: bool = True

    @property
    def host(self) -> str | None:
        """The host whose run made it (marks written before the host was recorded: None)."""
        found = TIME_AND_OPERATOR.match(self.detail)
        operator_field = found["operator"] if found else ""
        return operator_field.rsplit("@", 1)[1] if "@" in operator_field else None

    @property
    def made_at(self) -> str:
        """When the run that made it ran (YYYY-MM-DD HH:MM:SS, local): from its mark, else
        from the time in its name (``kit_name``); 不明 when neither says."""
        found = re.match(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)", self.detail)
        if found:
            return f"{found[1]} {found[2]}"
        stamp = re.search(r"_(\d{14})\d{0,3}(?:_|$)", self.name)  # kit_name: to the second or the ms
        if stamp:
            return datetime.strptime(stamp[1], "%Y%m%d%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
        return "不明"

    @property
    def remark(self) -> str:
        """The mark's own words after its time and operator (``mark_text``'s detail)."""
        found = TIME_AND_OPERATOR.match(self.detail)
        return self.detail[found.end():] if found else ""

    @property
    def note(self) -> str:
        """What restore-list adds: a prestaged database's file."""
        found = re.search(r"\bfile=(\S+)", self.detail) if self.role == "prestaged" else None
        if not found:
            return ""
        return f"事前展開: {found[1]}" + ("（接続可にされています: 置き換えでは使いません）"
                                          if self.allow_connections else "（接続不可で保管）")


def mark_text(role: str, settings: Settings, detail: str) -> str:
    """``pgrunbook:<role>:<env>:<time>:<operator>@<host>:<detail>``: the host tells
    restore-recover whose run a leftover staging database is."""
    return f"{MARK}:{role}:{settings.env}:{now_iso()}:{operator()}@{socket.gethostname()}:{detail}"


# the start of a mark's "time:operator:detail" (the time holds colons itself)
TIME_AND_OPERATOR = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)?:(?P<operator>[^:]*):")


def parse_mark(name: str, comment: str, size: int, allow_connections: bool) -> KitDatabase | None:
    """A kit database from its comment (``mark_text``), or None for any other comment."""
    parts = comment.split(":", 3)
    if len(parts) < 4 or parts[1] not in ROLES:
        return None
    # role, env, then "time:operator:detail"
    return KitDatabase(name, parts[1], parts[2], parts[3][:25], parts[3], size, allow_connections)


def kit_databases(pg: Postgres) -> list[KitDatabase]:
    rows = pg.query(
        "SELECT datname, shobj_description(oid, 'pg_database'), pg_database_size(oid), datallowconn "
        "FROM pg_database WHERE shobj_description(oid, 'pg_database') LIKE "
        f"{quote_literal(MARK + ':%')} ORDER BY 1",
        "postgres",
    )
    parsed = (parse_mark(name, comment, int(size), allow == "t") for name, comment, size, allow in rows)
    return [db for db in parsed if db is not None]


def create_database(pg: Postgres, name: str, comment: str, like: ServerFacts | None,
                    tablespace: bool = False) -> None:
    """Create a kit database like the live one when there is one (``like.database``):
    its encoding, collation and ctype, its locale provider and ICU or builtin locale
    (the app's ORDER BY sorts the same), and with ``tablespace`` its tablespace (a
    replace's staging database: it becomes the live one). Marked by its comment;
    unmarked, it is dropped at once. (Connection limit, template flag and comment
    are the swap's: staging.py and swap.py.)

    It is owned by the live database's owner when the kit user may act as that
    role: its ``public`` schema (owned by pg_database_owner from PostgreSQL 15)
    then lets the owner create in it, as in the live database, so a restore by a
    user that is not a superuser can give the tables to that owner (``ALTER TABLE
    ... OWNER TO`` needs the new owner's CREATE on the schema)."""
    options = ""
    live = like.database if like else None
    if like and live:
        options = (f" ENCODING {quote_literal(live.encoding)} LC_COLLATE {quote_literal(live.collate)}"
                   f" LC_CTYPE {quote_literal(live.ctype)}"
                   + locale_options(like.version, live.locale_provider, live.locale, live.icu_rules))
        if tablespace and live.tablespace != "pg_default":
            options += f" TABLESPACE {quote_ident(live.tablespace)}"
        if live.user_owns and live.owner:
            options = f" OWNER {quote_ident(live.owner)}" + options
    # one psql, two statements (CREATE DATABASE runs outside a transaction): the comment
    # runs only after the database was made (ON_ERROR_STOP)
    try:
        result = pg.run(pg.psql_argv("postgres") + [
            "-c", f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0{options}",
            "-c", f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(comment)}"])
        if result.ok:
            return
        error = explain_failure(result.stderr, pg.settings, "postgres", result.exit_code)
        made = pg.database_exists(name)
    except BaseException:
        with contextlib.suppress(Exception):
            drop_kit_database(pg, name)  # made or not: unmarked, it must not stay
        raise
    if made:  # the comment failed: an unmarked database is dropped at once
        with contextlib.suppress(Exception):
            drop_kit_database(pg, name)
        raise error
    if not live:
        raise error
    raise RunbookError(
        f"{name} を本番 DB と同じ設定（{describe(live)}）で作れません: {error.message}",
        "本番 DB は変更していません。表領域なら GRANT CREATE ON TABLESPACE、ICU のロケールなら"
        "サーバーの ICU を確かめる") from None


def describe(db: DatabaseFacts) -> str:
    """What a new database is made with, in words."""
    return (f"{db.encoding}、照合順序 {describe_locale(db.locale_provider, db.locale, db.collate)}、"
            f"表領域 {db.tablespace}")


def creation_differences(live: DatabaseFacts, made: DatabaseFacts) -> list[str]:
    """How a kit database was made differently from the live one (what only CREATE
    DATABASE sets: a later ALTER cannot carry it)."""
    found = []
    pairs = [("文字コード", live.encoding, made.encoding), ("LC_COLLATE", live.collate, made.collate),
             ("LC_CTYPE", live.ctype, made.ctype),
             ("照合順序", describe_locale(live.locale_provider, live.locale, live.collate),
              describe_locale(made.locale_provider, made.locale, made.collate)),
             ("ICU の規則", live.icu_rules or "なし", made.icu_rules or "なし"),
             ("表領域", live.tablespace, made.tablespace)]
    for label, want, got in pairs:
        if want != got:
            found.append(f"{label} {got}（本番 DB は {want}）")
    return found


def cleanup_step(step: str, action: Callable[[], object], console: Console) -> str | None:
    """Run a cleanup step; never let its failure hide the original error."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - reported next to the original error
        message = error.one_line() if isinstance(error, RunbookError) else str(error)
        console.warn(f"後片付けに失敗: {step}: {message}")
        return step
    return None


# a template database cannot be dropped: a previous database of a live one that was
# a template is one too (the swap gave the flag to the new database as well)
UNTEMPLATE = """DO $$BEGIN
  IF EXISTS (SELECT 1 FROM pg_database WHERE datname = {name} AND datistemplate) THEN
    EXECUTE format('ALTER DATABASE %I WITH IS_TEMPLATE false', {name});
  END IF;
END$$"""


def drop_kit_database(pg: Postgres, name: str) -> None:
    result = pg.run(pg.psql_argv("postgres") + [
        "-c", UNTEMPLATE.format(name=quote_literal(name)),
        "-c", f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"])
    if not result.ok:
        raise explain_failure(result.stderr, pg.settings, "postgres")
