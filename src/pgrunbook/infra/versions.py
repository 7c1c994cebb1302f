"""What differs between PostgreSQL majors (13 to 18), as pure functions.

* The dump compression: pg_dump 16+ takes ``-Z gzip:N``, ``lz4[:N]`` and
  ``zstd[:N]``; before 16 only a gzip level ``0``-``9``. With DUMP_COMPRESSION
  empty the kit picks by the server's major (measured: runbooks/performance.md).
* Plain SQL dumps of 17.6, 16.10, 15.14, 14.19 and 13.22 on (and every 18)
  start with ``\\restrict <key>``, a psql meta-command older psql builds do
  not know: such a file fails on its first line there.
* A dump is only guaranteed to load into a server of pg_dump's own major or a
  newer one.
* A database's locale provider: libc only before 15; ICU (``ICU_LOCALE``) from
  15, ICU rules from 16, the builtin provider (``BUILTIN_LOCALE``) from 17.
* pg_restore 17+ takes ``--transaction-size=N`` (commit every N objects rather
  than after each); pg_dump 18+ writes the optimizer statistics into the
  archive with ``--statistics`` (off by default in 18) and pg_restore 18 loads
  them, so the restored database plans as the live one did without an ANALYZE.
  Both measured and kept (runbooks/performance.md#options). The client tools
  of a DB container are the server's own package: the server's major stands
  for theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.archive import major_version
from pgrunbook.infra.postgres import quote_literal

# The fastest format by backup + restore-replace time, measured side by side on
# the bench dataset (runbooks/performance.md); before 16 only gzip levels exist.
DEFAULT_BEFORE_16 = "1"
DEFAULT_FROM_16 = "lz4"
ALGORITHMS = ("gzip", "lz4", "zstd", "none")

# The first minor of each major whose psql knows \restrict (August 2025).
RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


@dataclass(frozen=True)
class Compression:
    spec: str  # what goes to pg_dump -Z
    chosen_by: str  # "DUMP_COMPRESSION" or "default for PostgreSQL N"


def default_compression(pg_dump_major: int) -> str:
    return DEFAULT_FROM_16 if pg_dump_major >= 16 else DEFAULT_BEFORE_16


def dump_compression(configured: str, server_version: str) -> Compression:
    """The ``-Z`` for a dump of this server: DUMP_COMPRESSION when set, else the
    default of its major. pg_dump dumps only a server of its own major or older,
    so the server's major is the least the container's pg_dump has. Refuses a
    spec pg_dump before 16 cannot take, before anything is written."""
    major = major_version(server_version)
    if not configured:
        return Compression(default_compression(major), f"default for PostgreSQL {major}")
    algorithm = configured.split(":", 1)[0].lower()
    if major and major < 16 and not configured.isdigit():
        raise RunbookError(
            f"DUMP_COMPRESSION={configured} は PostgreSQL 16 以降の pg_dump の指定です"
            f"（コンテナの PostgreSQL は {server_version}）",
            "0〜9 の数字（1 が高速）にするか、空にしてキットの既定に任せる",
        )
    if not configured.isdigit() and algorithm not in ALGORITHMS:
        raise RunbookError(f"DUMP_COMPRESSION={configured} の圧縮方式 {algorithm} は使えません",
                           "gzip:1, lz4, zstd:3 などを指定（空ならキットの既定）")
    return Compression(configured, "DUMP_COMPRESSION")


# ---- restore and dump options by major ------------------------------------------------
TRANSACTION_SIZE_SINCE = 17
# objects per transaction: pg_upgrade's own value, within the default shared lock
# table (about 6400 locks); divided among parallel jobs as pg_upgrade does
TRANSACTION_SIZE = 1000
STATISTICS_SINCE = 18


def restore_transaction_size(server_major: int, jobs: int = 1) -> list[str]:
    """pg_restore's ``--transaction-size`` where it exists (17+), else nothing."""
    if server_major < TRANSACTION_SIZE_SINCE:
        return []
    return [f"--transaction-size={max(1, TRANSACTION_SIZE // max(1, jobs))}"]


def dump_statistics(pg_dump_major: int) -> list[str]:
    """pg_dump's ``--statistics`` where it exists (18+), else nothing."""
    return ["--statistics"] if pg_dump_major >= STATISTICS_SINCE else []


def header_algorithm(spec: str) -> str:
    """The algorithm a custom archive's header records for ``-Z spec``."""
    if spec.isdigit():
        return "none" if int(spec) == 0 else "gzip"
    return spec.split(":", 1)[0].lower()


# ---- plain SQL: \restrict ------------------------------------------------------------
RESTRICT_LINE = re.compile(r"^\\restrict\s+\S+", re.MULTILINE)


def sql_uses_restrict(head: str) -> bool:
    """Does a plain dump start with ``\\restrict`` (pg_dump 17.6 / 16.10 / ... on)?"""
    return bool(RESTRICT_LINE.search(head))


def psql_knows_restrict(psql_version: str) -> bool:
    match = re.match(r"\s*(\d+)(?:\.(\d+))?", psql_version or "")
    if not match:
        return True  # unknown: let psql itself decide
    major, minor = int(match.group(1)), int(match.group(2) or 0)
    if major >= 18:
        return True
    if major < 13:
        return False
    return minor >= RESTRICT_SINCE[major]


def sql_dumped_by(head: str) -> str:
    match = re.search(r"^-- Dumped by pg_dump version (\S+)", head, re.MULTILINE)
    return match.group(1) if match else ""


def check_sql_for_psql(name: str, head: str, psql_version: str) -> None:
    """Refuse a plain dump this container's psql would stop on at its first line
    (``\\restrict``), before any database is created for it."""
    if sql_uses_restrict(head) and not psql_knows_restrict(psql_version):
        made_by = sql_dumped_by(head) or "17.6 / 16.10 / 15.14 / 14.19 / 13.22 以降"
        raise Refused(
            f"{name} は pg_dump {made_by} の SQL で、先頭の \\restrict をコンテナの psql "
            f"{psql_version} は実行できません（何も作成していません）",
            f"コンテナを PostgreSQL {major_version(psql_version)} の最新のマイナー版に更新するか、"
            "同じ版以上の psql を持つコンテナで復元する",
        )



# ---- a database's locale provider ------------------------------------------------------
PROVIDERS = {"c": "libc", "i": "ICU", "b": "builtin"}


def describe_locale(provider: str, locale: str | None, collate: str) -> str:
    """The database's collation in words: "ICU de-DE", "libc C.UTF-8"."""
    name = PROVIDERS.get(provider, provider)
    return f"{name} {locale}" if provider in ("i", "b") and locale else f"{name} {collate}"


def locale_options(server_version: str, provider: str, locale: str | None, icu_rules: str | None) -> str:
    """The CREATE DATABASE options that give a new database this locale provider (named
    always from 15: a cluster initialised with ICU would otherwise pass its own on)."""
    major = major_version(server_version)
    if major and major < 15:
        return ""
    if provider == "c":
        return " LOCALE_PROVIDER libc"
    if provider == "i" and locale:
        rules = f" ICU_RULES {quote_literal(icu_rules)}" if icu_rules and major >= 16 else ""
        return f" LOCALE_PROVIDER icu ICU_LOCALE {quote_literal(locale)}{rules}"
    if provider == "b" and locale and major >= 17:
        return f" LOCALE_PROVIDER builtin BUILTIN_LOCALE {quote_literal(locale)}"
    raise Refused(f"データベースのロケール（プロバイダー {provider}、{locale or 'ロケールなし'}）を"
                  f"PostgreSQL {server_version} の新しい DB に写せません（何も変更していません）",
                  "キットが扱えない照合順序の設定です。手作業の手順（runbooks の手作業タブ）で復元する")
