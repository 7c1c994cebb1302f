"""What the app can do in a database: owners and privileges of every object.

A replace that "succeeds" while the app gets ``permission denied`` is a
failure. Before anything is stopped, the staging database is compared with
the live one object by object (schemas, tables, views, sequences, columns,
functions, aggregates, types and domains): owner and effective privileges (defaults made explicit with
``acldefault``, grantor left out). When the archive carried no owners or no
privileges (``pg_dump --no-owner`` / ``--no-acl``), they are first copied
from the live database onto the objects both have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pgrunbook.errors import RunbookError
from pgrunbook.postgres import Postgres, quote_ident

# kind, schema, name (functions with their identity arguments), owner, and the
# effective privileges as sorted "grantee:privilege:grantable" ("" = PUBLIC)
OBJECTS = """
WITH objects AS (
  SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                        ELSE 'TABLE' END AS kind,
         n.nspname AS schema, c.relname AS name, c.relowner AS owner,
         coalesce(c.relacl, acldefault(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char",
                                       c.relowner)) AS acl,
         -- a serial/identity sequence: its owner follows its table's
         c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS linked
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  UNION ALL
  SELECT 'SCHEMA', '', n.nspname, n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner)), false
  FROM pg_namespace n
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  UNION ALL
  -- column privileges (GRANT SELECT (col) ...): their own ACL, NULL (none) by default
  -- (aclexplode(NULL) is no rows); the name is table, chr(31), column
  SELECT 'COLUMN', n.nspname, c.relname || chr(31) || a.attname, c.relowner, a.attacl, false
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  UNION ALL
  SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
         n.nspname,
         p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', p.proowner,
         coalesce(p.proacl, acldefault('f', p.proowner)), false
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind IN ('f', 'p', 'a', 'w')
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                    AND d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  -- enums, domains, ranges, composite and base types (an app's migration alters
  -- them as their owner); not arrays and multiranges (they follow their type),
  -- not a table's row type, not an extension's
  SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname, t.typowner,
         coalesce(t.typacl, acldefault('T', t.typowner)), false
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('b', 'c', 'd', 'e', 'r')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
    AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                    AND d.objid = t.oid AND d.deptype = 'e')
)
SELECT coalesce(json_agg(json_build_array(kind, schema, name, pg_get_userbyid(owner), (
         SELECT coalesce(json_agg(DISTINCT
                  CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END
                  || ':' || a.privilege_type || ':' || a.is_grantable::text), '[]'::json)
         FROM aclexplode(acl) a), linked) ORDER BY kind, schema, name), '[]'::json)
FROM objects
"""


COLUMN_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class ObjectRights:
    kind: str
    schema: str
    name: str
    owner: str
    privileges: tuple[str, ...]
    linked: bool = False  # a sequence owned by a table column: ALTER TABLE moves it

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.schema, self.name)

    @property
    def label(self) -> str:
        name = self.name.replace(COLUMN_SEPARATOR, ".")
        return f"{self.schema}.{name}" if self.schema else name

    def sql_name(self) -> str:
        if self.kind == "COLUMN":  # its table's (GRANT SELECT (column) ON TABLE ...)
            return f"{quote_ident(self.schema)}.{quote_ident(self.name.partition(COLUMN_SEPARATOR)[0])}"
        if self.kind == "SCHEMA":
            return quote_ident(self.name)
        if self.kind in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            name, _, arguments = self.name.partition("(")
            return f"{quote_ident(self.schema)}.{quote_ident(name)}({arguments}"
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


def rights_of(pg: Postgres, database: str) -> dict[tuple[str, str, str], ObjectRights]:
    raw = json.loads(pg.query(OBJECTS, database)[0][0])
    found = {}
    for kind, schema, name, owner, privileges, linked in raw:
        item = ObjectRights(kind, schema, name, owner, tuple(sorted(privileges)), bool(linked))
        found[item.key] = item
    return found


def differences(live: dict, incoming: dict) -> list[str]:
    """Owner and privilege differences of the objects both databases have."""
    found = []
    for key in sorted(live.keys() & incoming.keys()):
        before, after = live[key], incoming[key]
        if before.owner != after.owner and before.kind != "COLUMN":  # the table's, said once
            found.append(f"{before.kind} {before.label} の所有者 {before.owner} → {after.owner}")
        if before.privileges != after.privileges:
            lost = sorted(set(before.privileges) - set(after.privileges))
            gained = sorted(set(after.privileges) - set(before.privileges))
            parts = ([f"失う権限 {', '.join(_readable(p) for p in lost)}"] if lost else []) + (
                [f"増える権限 {', '.join(_readable(p) for p in gained)}"] if gained else [])
            found.append(f"{before.kind} {before.label}: {'、'.join(parts)}")
    return found


def _readable(item: str) -> str:
    grantee, privilege, grantable = item.rsplit(":", 2)
    return f"{grantee or 'PUBLIC'}:{privilege}{'（付与可）' if grantable == 'true' else ''}"


GRANT_KIND = {"VIEW": "TABLE", "MATERIALIZED VIEW": "TABLE", "FOREIGN TABLE": "TABLE",
              "AGGREGATE": "FUNCTION"}


def copy_statements(live: dict, incoming: dict, owners: bool, privileges: bool) -> list[str]:
    """Statements that give ``incoming``'s objects the live database's owners
    and/or privileges (objects only one side has are left alone)."""
    statements = []
    # columns last: a REVOKE on a table also revokes its columns' privileges
    for key in sorted(live.keys() & incoming.keys(), key=lambda k: (k[0] == "COLUMN", k)):
        before, after = live[key], incoming[key]
        alter_kind = before.kind
        if (owners and before.owner != after.owner and not after.linked
                and before.kind != "COLUMN"):  # a column's owner is its table's
            statements.append(f"ALTER {alter_kind} {before.sql_name()} OWNER TO {quote_ident(before.owner)}")
        if privileges and before.privileges != after.privileges:
            kind = GRANT_KIND.get(before.kind, before.kind)
            columns = ""
            if before.kind == "COLUMN":
                kind, columns = "TABLE", f" ({quote_ident(before.name.partition(COLUMN_SEPARATOR)[2])})"
            target = f"{kind} {before.sql_name()}"
            holders = {p.rsplit(":", 2)[0] for p in after.privileges} | {
                p.rsplit(":", 2)[0] for p in before.privileges}
            for holder in sorted(holders):
                statements.append(f"REVOKE ALL{columns} ON {target} FROM {_grantee(holder)}")
            for item in before.privileges:
                grantee, privilege, grantable = item.rsplit(":", 2)
                statements.append(f"GRANT {privilege}{columns} ON {target} TO {_grantee(grantee)}"
                                  + (" WITH GRANT OPTION" if grantable == "true" else ""))
    return statements


def _grantee(name: str) -> str:
    return "PUBLIC" if name == "" else quote_ident(name)


def apply(pg: Postgres, database: str, statements: list[str]) -> None:
    """All of them in one transaction in ``database``, or none."""
    if not statements:
        return
    script = "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n"
    result = pg.run(pg.psql_argv(database), stdin=iter([script.encode()]), on_stdout=lambda _d: None)
    if not result.ok:
        raise RunbookError(
            f"所有者・権限を稼働中の DB と同じにできません: {result.error_text()}",
            "DB_USER を superuser にするか、所有者のロールのメンバーにする。本番 DB は変更していません")
