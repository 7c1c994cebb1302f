"""Databases the kit creates: their names, the comment that marks them, create and drop."""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
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
    quote_ident,
    quote_literal,
)

MARK = "pgrunbook"
ROLES = ("scratch", "staging", "previous", "verify", "rolledback", "prestaged", "partial")
MAX_NAME = 63


def kit_name(settings: Settings, role: str, when: datetime | None = None) -> str:
    stamp = (when or datetime.now()).strftime("%Y%m%d%H%M%S")
    name = f"{settings.db_name}_{MARK}_{role}_{stamp}"
    if len(name.encode()) > MAX_NAME:
        name = f"{MARK}_{role}_{stamp}_{uuid.uuid4().hex[:6]}"
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


def create_database(pg: Postgres, name: str, comment: str, like: DatabaseFacts | None) -> None:
    """Create a kit database (with the live database's encoding and locale when
    there is one), marked by its comment. Unmarked, it is dropped at once."""
    options = ""
    if like:
        options = (f" ENCODING {quote_literal(like.encoding)} LC_COLLATE {quote_literal(like.collate)}"
                   f" LC_CTYPE {quote_literal(like.ctype)}")
    pg.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0{options}", "postgres")
    try:
        pg.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS {quote_literal(comment)}", "postgres")
    except BaseException:
        with contextlib.suppress(Exception):
            drop_kit_database(pg, name)
        raise


def cleanup_step(step: str, action: Callable[[], object], console: Console) -> str | None:
    """Run a cleanup step; never let its failure hide the original error."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - reported next to the original error
        message = error.one_line() if isinstance(error, RunbookError) else str(error)
        console.warn(f"後片付けに失敗: {step}: {message}")
        return step
    return None


def drop_kit_database(pg: Postgres, name: str) -> None:
    pg.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)", "postgres")
