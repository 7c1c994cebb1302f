"""What the app can do in a database: owners and privileges of every object.

A replace that "succeeds" while the app gets ``permission denied`` is a
failure. Before anything is stopped, the staging database is compared with
the live one object by object (schemas, tables, views, sequences, columns,
functions, aggregates, types and domains, large objects by OID): owner and
effective privileges (defaults made explicit with ``acldefault``, grantor left
out). When the archive carried no owners or no privileges (``pg_dump
--no-owner`` / ``--no-acl``), they are first copied from the live database
onto the objects both have.

Default privileges (``ALTER DEFAULT PRIVILEGES``, ``pg_default_acl``: what a
role's *future* tables, sequences, functions, types and schemas get) are part of
the comparison too, as one object per database (kind ``DEFAULT PRIVILEGES``):
each entry is written as its difference from what PostgreSQL gives without one
(``+`` granted, ``-`` revoked), so "no entry" and "an entry equal to the
built-in default" compare equal. Entries of a schema only one side has are not
compared (a schema difference, like its tables). They are copied from live with
the other privileges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pgrunbook.core.errors import RunbookError
from pgrunbook.infra.postgres import Ask, Postgres, quote_ident

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
  UNION ALL
  -- large objects (lo_create): a restore keeps their OIDs, so the OID is the name
  SELECT 'LARGE OBJECT', '', m.oid::text, m.lomowner, coalesce(m.lomacl, acldefault('L', m.lomowner)),
         false
  FROM pg_largeobject_metadata m
)
SELECT coalesce(json_agg(json_build_array(kind, schema, name, pg_get_userbyid(owner), (
         SELECT coalesce(json_agg(DISTINCT
                  CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END
                  || ':' || a.privilege_type || ':' || a.is_grantable::text), '[]'::json)
         FROM aclexplode(acl) a), linked) ORDER BY kind, schema, name), '[]'::json)
FROM objects
"""


# Default privileges: one sorted list of "role<US>schema<US>objtype<US>±grantee:privilege:grantable",
# schema "" for an entry of every schema (IN SCHEMA absent), compared with the built-in default
DEFAULTS = """
WITH entries AS (
  SELECT pg_get_userbyid(d.defaclrole) AS role, coalesce(n.nspname, '') AS schema,
         d.defaclobjtype::text AS objtype, d.defaclacl AS acl,
         CASE WHEN d.defaclnamespace = 0
              THEN acldefault(CASE d.defaclobjtype WHEN 'S' THEN 's' ELSE d.defaclobjtype END::"char",
                              d.defaclrole) END AS baseline
  FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
)
SELECT coalesce(json_agg(item ORDER BY item), '[]'::json) FROM (
  SELECT e.role || chr(31) || e.schema || chr(31) || e.objtype || chr(31) || x.sign
         || CASE WHEN x.grantee = 0 THEN '' ELSE pg_get_userbyid(x.grantee) END
         || ':' || x.privilege_type || ':' || x.is_grantable::text AS item
  FROM entries e, LATERAL (
    (SELECT '+' AS sign, a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(e.acl) a
     EXCEPT
     SELECT '+', b.grantee, b.privilege_type, b.is_grantable FROM aclexplode(e.baseline) b)
    UNION ALL
    (SELECT '-', b.grantee, b.privilege_type, b.is_grantable FROM aclexplode(e.baseline) b
     EXCEPT
     SELECT '-', a.grantee, a.privilege_type, a.is_grantable FROM aclexplode(e.acl) a)
  ) x
) items
"""
DEFAULTS_KIND = "DEFAULT PRIVILEGES"
DEFAULTS_KEY = (DEFAULTS_KIND, "", "")
DEFAULT_OBJECT_TYPES = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}

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
        if self.kind == "LARGE OBJECT":
            return str(int(self.name))  # its OID
        if self.kind in ("FUNCTION", "PROCEDURE", "AGGREGATE"):
            name, _, arguments = self.name.partition("(")
            return f"{quote_ident(self.schema)}.{quote_ident(name)}({arguments}"
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"


Rights = dict[tuple[str, str, str], ObjectRights]


def rights_of(pg: Postgres, database: str) -> Rights:
    return rights_of_each(pg, database)[0]


def rights_of_each(pg: Postgres, *databases: str) -> list[Rights]:
    """Each database's objects with their owners and privileges, and its default
    privileges: every read in one exec."""
    answers = pg.queries([Ask(sql, database) for database in databases for sql in (OBJECTS, DEFAULTS)])
    return [_rights(answers[2 * index][0][0], answers[2 * index + 1][0][0])
            for index in range(len(databases))]


def _rights(objects: str, default_acl: str) -> Rights:
    found = {}
    for kind, schema, name, owner, privileges, linked in json.loads(objects):
        item = ObjectRights(kind, schema, name, owner, tuple(sorted(privileges)), bool(linked))
        found[item.key] = item
    defaults = json.loads(default_acl)
    found[DEFAULTS_KEY] = ObjectRights(DEFAULTS_KIND, "", "", "", tuple(sorted(defaults)))
    return found


@dataclass(frozen=True)
class DefaultEntry:
    """One item of the DEFAULT PRIVILEGES list: a grant (+) or a revoke (-) of a built-in default."""

    role: str
    schema: str  # "" = every schema (no IN SCHEMA)
    objtype: str
    sign: str
    grantee: str  # "" = PUBLIC
    privilege: str
    grantable: bool

    @classmethod
    def parse(cls, item: str) -> DefaultEntry:
        role, schema, objtype, rest = item.split(COLUMN_SEPARATOR, 3)
        holder, privilege, grantable = rest.rsplit(":", 2)
        return cls(role, schema, objtype, holder[0], holder[1:], privilege, grantable == "true")

    def scope(self) -> str:
        where = f" IN SCHEMA {self.schema}" if self.schema else ""
        return f"FOR ROLE {self.role}{where} ON {DEFAULT_OBJECT_TYPES.get(self.objtype, self.objtype)}"

    def readable(self) -> str:
        holder = f"{self.grantee or 'PUBLIC'}:{self.privilege}{'（付与可）' if self.grantable else ''}"
        return f"{self.scope()}（{holder}{'' if self.sign == '+' else ' の取り消し'}）"

    def statement(self, undo: bool = False) -> str:
        """The ALTER DEFAULT PRIVILEGES that makes this entry (or, with undo, takes it back)."""
        where = f" IN SCHEMA {quote_ident(self.schema)}" if self.schema else ""
        head = f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(self.role)}{where}"
        objects = DEFAULT_OBJECT_TYPES[self.objtype]
        grant = (self.sign == "+") != undo
        if grant:
            option = " WITH GRANT OPTION" if self.grantable else ""
            return f"{head} GRANT {self.privilege} ON {objects} TO {_grantee(self.grantee)}{option}"
        return f"{head} REVOKE {self.privilege} ON {objects} FROM {_grantee(self.grantee)}"


def _schemas(rights: dict) -> set[str]:
    return {key[2] for key in rights if key[0] == "SCHEMA"}


def _comparable_defaults(rights: dict, other: dict) -> set[str]:
    """The DEFAULT PRIVILEGES items of ``rights`` for every schema, or for a schema both have."""
    both = _schemas(rights) & _schemas(other)
    item = rights.get(DEFAULTS_KEY)
    return {p for p in (item.privileges if item else ())
            if DefaultEntry.parse(p).schema in both or not DefaultEntry.parse(p).schema}


def differences(live: dict, incoming: dict) -> list[str]:
    """Owner and privilege differences of the objects both databases have."""
    found = []
    for key in sorted(live.keys() & incoming.keys()):
        before, after = live[key], incoming[key]
        if before.kind == DEFAULTS_KIND:
            found.extend(_default_differences(live, incoming))
            continue
        if before.owner != after.owner and before.kind != "COLUMN":  # the table's, said once
            found.append(f"{before.kind} {before.label} の所有者 {before.owner} → {after.owner}")
        if before.privileges != after.privileges:
            lost = sorted(set(before.privileges) - set(after.privileges))
            gained = sorted(set(after.privileges) - set(before.privileges))
            parts = ([f"失う権限 {', '.join(_readable(p) for p in lost)}"] if lost else []) + (
                [f"増える権限 {', '.join(_readable(p) for p in gained)}"] if gained else [])
            found.append(f"{before.kind} {before.label}: {'、'.join(parts)}")
    return found


def _default_differences(live: dict, incoming: dict) -> list[str]:
    before, after = _comparable_defaults(live, incoming), _comparable_defaults(incoming, live)
    if before == after:
        return []
    lost = sorted(DefaultEntry.parse(p).readable() for p in before - after)
    gained = sorted(DefaultEntry.parse(p).readable() for p in after - before)
    parts = ([f"失う設定 {', '.join(lost)}"] if lost else []) + (
        [f"増える設定 {', '.join(gained)}"] if gained else [])
    return [f"既定の権限（ALTER DEFAULT PRIVILEGES）: {'、'.join(parts)}"]


def default_statements(live: dict, incoming: dict) -> list[str]:
    """ALTER DEFAULT PRIVILEGES that give ``incoming`` the live database's default
    privileges: first take back what only ``incoming`` has (revokes before grants, so a
    grant option re-granted is not lost), then add what only live has."""
    before, after = _comparable_defaults(live, incoming), _comparable_defaults(incoming, live)
    extra = [DefaultEntry.parse(p) for p in sorted(after - before)]
    missing = [DefaultEntry.parse(p) for p in sorted(before - after)]
    return ([e.statement(undo=True) for e in extra if e.sign == "+"]
            + [e.statement(undo=True) for e in extra if e.sign == "-"]
            + [e.statement() for e in missing if e.sign == "-"]
            + [e.statement() for e in missing if e.sign == "+"])


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
        if before.kind == DEFAULTS_KIND:
            if privileges:
                statements.extend(default_statements(live, incoming))
            continue
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
