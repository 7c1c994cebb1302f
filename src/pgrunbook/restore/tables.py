"""What a database's catalog says of its tables, for putting rows back: the key,
the columns (generated, identity), foreign keys both ways, user triggers, the
sequences the columns own, the owner. One query per database.

Rows are compared and merged in key order on the host, so the key's order must
be the same on both servers and in Python: integer keys go in their own order
(the primary key's index serves it), uuid keys in theirs (the same as their
text), every other type by its text in the "C" collation (byte order, which
for UTF-8 is Python's order of str). The merge checks the order it is given
(``diff.compare``): a server that orders otherwise stops it with a message,
never a wrong difference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.postgres import Postgres, quote_ident

INTEGER_TYPES = ("smallint", "integer", "bigint", "oid")
# Types whose values are equal exactly when their text is (as the kit's sessions print it,
# ``session.STABLE_TEXT``) and whose hash function hashes that value, not an OID or a
# normalised form: a row is hashed by these values (``value_hash``) without printing
# them. Not numeric (1.0 = 1.00), floats (0 = -0), interval ('1 day' = '24 hours'),
# jsonb (numbers inside), char(n) (trailing blanks), enums (OIDs differ per database),
# domains or arrays: those are hashed by their text. A bigint's, a timestamp's and a time's
# own hash function (hashint8extended) folds the 64-bit value's two halves into 32 bits, so
# values 2^32 + 1 apart (µs for a timestamp: about 71 minutes) would hash alike: a bigint goes
# in as its two halves (``BIGINT_HALVES``: the low half's upper bits zero, nothing folded
# away), a timestamp or a time as its exact seconds (``EPOCH``: a numeric to the µs, one
# value per value; cheaper than printing it: 0.55 s against 0.78 s for 1 M rows of one) and
# whether they are negative: a numeric's hash leaves out its sign (x and -x alike) and hashes
# ±Infinity as 0, as a NULL is hashed; the flag tells those apart (NULL: no flag).
VALUE_HASHED = ("smallint", "integer", "bigint", "boolean", "text", "character varying", "date",
                "timestamp without time zone", "timestamp with time zone", "time without time zone",
                "uuid", "bytea")
BIGINT_HALVES = "({name} >> 32)::integer, ({name} & 4294967295)"
EPOCH = "extract(epoch FROM {name}), extract(epoch FROM {name}) < 0"
EPOCH_HASHED = ("timestamp without time zone", "timestamp with time zone", "time without time zone")
VALUE_HASH_FROM = 14  # hash_record_extended
TYPMOD = re.compile(r"\(\d+(?:,\d+)?\)")

CATALOG = """
SELECT coalesce(json_agg(json_build_object(
  'oid', c.oid, 'schema', n.nspname, 'name', c.relname, 'kind', c.relkind,
  'owner', pg_get_userbyid(c.relowner), 'owned', pg_has_role(c.relowner, 'USAGE'),
  'row_security', row_security_active(c.oid),
  'columns', (SELECT coalesce(json_agg(json_build_array(
                 a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
                 a.attidentity, coalesce((SELECT co.collisdeterministic FROM pg_collation co
                                          WHERE co.oid = a.attcollation), true)
                 ) ORDER BY a.attnum), '[]'::json)
              FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'key', (SELECT json_agg(a.attname ORDER BY k.ord)
          FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          WHERE i.indrelid = c.oid AND i.indisprimary),
  'foreign_keys', (SELECT coalesce(json_agg(json_build_object(
                      'name', f.conname, 'parent', f.confrelid, 'on_delete', f.confdeltype,
                      'on_update', f.confupdtype,
                      'columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                                  FROM unnest(f.conkey) WITH ORDINALITY AS k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.attnum),
                      'parent_columns', (SELECT json_agg(a.attname ORDER BY k.ord)
                                  FROM unnest(f.confkey) WITH ORDINALITY AS k(attnum, ord)
                                  JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.attnum))
                      ORDER BY f.conname), '[]'::json)
                   FROM pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f'),
  'triggers', (SELECT coalesce(json_agg(json_build_array(t.tgname, t.tgenabled) ORDER BY t.tgname),
                               '[]'::json)
               FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
  'sequences', (SELECT coalesce(json_agg(json_build_array(a.attname, format('%I.%I', sn.nspname, s.relname))
                                         ORDER BY a.attnum), '[]'::json)
                FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                JOIN pg_namespace sn ON sn.oid = s.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = c.oid AND d.deptype IN ('a', 'i')),
  'partitions', CASE WHEN c.relkind = 'p' THEN
                (SELECT coalesce(json_agg(pn.nspname || '.' || pc.relname ORDER BY pn.nspname, pc.relname),
                                 '[]'::json)
                 FROM pg_partition_tree(c.oid) pt JOIN pg_class pc ON pc.oid = pt.relid
                 JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE pt.isleaf) END
) ORDER BY n.nspname, c.relname), '[]'::json)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
"""
# the server's version with it (in the same read): which hash functions it has
CATALOG_AND_VERSION = f"SELECT ({CATALOG}), current_setting('server_version_num')::int"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    generated: bool = False
    identity: str = ""  # "a" (ALWAYS), "d" (BY DEFAULT) or ""
    deterministic: bool = True  # its collation (if any) compares bytes, not e.g. case-blind
    as_text: bool = False  # ordered by its text whatever its type (a key retyped since the backup)

    @property
    def hashed_by_value(self) -> bool:
        """Equal values, equal text, and a hash of the value (``VALUE_HASHED``); a
        nondeterministic collation (case-blind ICU) hashes 'a' and 'A' alike."""
        return self.deterministic and TYPMOD.sub("", self.type) in VALUE_HASHED

    @property
    def order(self) -> str:
        """How this column is ordered: "int" (its own order), "uuid" (its own order,
        the same as its text) or "text" (its text in the C collation)."""
        if self.as_text:
            return "text"
        if self.type in INTEGER_TYPES:
            return "int"
        return "uuid" if self.type == "uuid" else "text"


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: int  # the referenced table's oid
    parent_columns: tuple[str, ...]
    on_delete: str = "a"
    on_update: str = "a"


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    owner: str
    owned: bool  # DB_USER is (a member of) the owner: may ALTER TABLE ... DISABLE TRIGGER
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] | None
    foreign_keys: tuple[ForeignKey, ...] = ()
    triggers: tuple[tuple[str, str], ...] = ()  # (name, tgenabled) of the user's triggers
    sequences: tuple[tuple[str, str], ...] = ()  # (column, quoted sequence) owned by a column
    kind: str = "r"
    partitions: tuple[str, ...] = ()  # a partitioned table's leaf partitions (``schema.name``): its rows
    row_security: bool = False  # a policy filters the rows DB_USER sees (RLS, not bypassed)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def written(self) -> tuple[Column, ...]:
        """The columns a put-back writes: all but the generated ones (recomputed)."""
        return tuple(column for column in self.columns if not column.generated)

    @property
    def firing_triggers(self) -> tuple[tuple[str, str], ...]:
        """User triggers that fire in an ordinary session (enabled or ALWAYS)."""
        return tuple(trigger for trigger in self.triggers if trigger[1] in ("O", "A"))

    @property
    def identity_always(self) -> bool:
        return any(column.identity == "a" for column in self.columns)


@dataclass
class Catalog:
    """The tables of one database, by oid and by ``schema.name``."""

    tables: dict[int, Table] = field(default_factory=dict)
    version_num: int = 0  # the server's server_version_num

    @property
    def major(self) -> int:
        return self.version_num // 10000

    def named(self, label: str) -> Table | None:
        for table in self.tables.values():
            if table.label == label:
                return table
        return None

    def partitions_of(self, labels: set[str]) -> dict[str, tuple[str, ...]]:
        """The partitioned tables among ``labels``, each with its leaf partitions (the tables
        whose rows a backup holds for it)."""
        return {label: table.partitions for label in sorted(labels)
                if (table := self.named(label)) is not None and table.kind == "p"}

    def children_of(self, oid: int) -> list[tuple[Table, ForeignKey]]:
        """The foreign keys that reference table ``oid``, with their tables."""
        return [(table, fk) for table in self.tables.values() for fk in table.foreign_keys
                if fk.parent == oid]

    def parents_closure(self, oids: list[int]) -> list[int]:
        """The tables and every table their foreign keys reach, transitively."""
        found: list[int] = []
        pending = list(oids)
        while pending:
            oid = pending.pop()
            if oid in found or oid not in self.tables:
                continue
            found.append(oid)
            pending.extend(fk.parent for fk in self.tables[oid].foreign_keys)
        return found

    def parents_first(self, oids: set[int]) -> list[int]:
        """``oids`` ordered so that a referenced table comes before the tables that
        reference it (a cycle keeps the order it has)."""
        ordered: list[int] = []
        visiting: set[int] = set()

        def visit(oid: int) -> None:
            if oid in ordered or oid in visiting:
                return
            visiting.add(oid)
            for fk in self.tables[oid].foreign_keys:
                if fk.parent in oids and fk.parent != oid:
                    visit(fk.parent)
            visiting.discard(oid)
            ordered.append(oid)

        for oid in sorted(oids, key=lambda o: self.tables[o].label):
            visit(oid)
        return ordered


def read_catalog(pg: Postgres, database: str) -> Catalog:
    return catalog_of(pg.query(CATALOG_AND_VERSION, database))


def catalog_of(answer: list[list[str]]) -> Catalog:
    """``CATALOG_AND_VERSION``'s answer (read alone, or beside other reads) as a Catalog."""
    row = answer[0]
    raw = json.loads(row[0])
    catalog = Catalog(version_num=int(row[1]))
    for item in raw:
        table = Table(
            int(item["oid"]), item["schema"], item["name"], item["owner"], bool(item["owned"]),
            tuple(Column(name, kind, bool(generated), identity or "", bool(deterministic))
                  for name, kind, generated, identity, deterministic in item["columns"]),
            tuple(item["key"]) if item["key"] else None,
            tuple(ForeignKey(fk["name"], tuple(fk["columns"]), int(fk["parent"]),
                             tuple(fk["parent_columns"]), fk["on_delete"], fk["on_update"])
                  for fk in item["foreign_keys"]),
            tuple((name, enabled) for name, enabled in item["triggers"]),
            tuple((column, sequence) for column, sequence in item["sequences"]),
            item["kind"],
            tuple(item.get("partitions") or ()),
            bool(item.get("row_security")),
        )
        catalog.tables[table.oid] = table
    return catalog


# a part of --table: as it is (no blank, dot or double quote; any letters, 会議録 too) or in
# double quotes ("My Schema", "Odd.Name"; "" for a quote inside); matched as the catalog
# spells it, never case-folded
TABLE_PART = r'(?:"(?:[^"]|"")+"|[^\s."]+)'
TABLE_NAME = re.compile(rf'^(?:(?P<schema>{TABLE_PART})\.)?(?P<name>{TABLE_PART})$')


def _unquoted(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def parse_table_name(text: str) -> str:
    """``--table=S.T`` (or ``T`` for ``public.T``) as ``schema.name``; a part in double
    quotes as its name (``public."会員 名簿"``)."""
    found = TABLE_NAME.match(text.strip())
    if not found:
        raise RunbookError(f"--table={text!r} はテーブル名として読めません",
                           "スキーマ.テーブル（例: public.votes。空白・ドットを含む名前は "
                           "'\"My Schema\".\"Odd.Name\"' のように二重引用符で囲む）で指定", exit_code=2)
    return f"{_unquoted(found['schema'] or 'public')}.{_unquoted(found['name'])}"


def find_tables(catalog: Catalog, names: list[str], where: str) -> list[Table]:
    tables = []
    for text in names:
        label = parse_table_name(text)
        table = catalog.named(label)
        if table is None:
            known = ", ".join(sorted(t.label for t in catalog.tables.values())[:12])
            raise RunbookError(f"{where}にテーブル {label} がありません", f"テーブル: {known}", exit_code=2)
        if table not in tables:
            tables.append(table)
    return tables


def refuse_row_security(tables: list[Table], user: str) -> None:
    """A put-back (or its undo) reads and writes every row of these tables: a policy that
    hides some of them from DB_USER would make them look deleted (and their writes fail)."""
    filtered = sorted({table.label for table in tables if table.row_security})
    if filtered:
        raise Refused(f"{', '.join(filtered)} には行レベルセキュリティ（RLS）がかかり、DB_USER {user} には"
                      "一部の行しか見えません（何も変更していません）",
                      "BYPASSRLS を持つロールか、テーブル所有者のメンバーを DB_USER にして実行"
                      "（FORCE ROW LEVEL SECURITY のテーブルは BYPASSRLS のみ）")


def row_key(table: Table, key_option: str | None) -> tuple[str, ...]:
    """The columns that identify a row: ``--key=a,b`` or the primary key."""
    if key_option:
        names = tuple(name.strip() for name in key_option.split(",") if name.strip())
        for name in names:
            try:
                table.column(name)
            except KeyError:
                raise RunbookError(f"--key の列 {name} は {table.label} にありません",
                                   f"列: {', '.join(c.name for c in table.columns)}", exit_code=2) from None
        if not names:
            raise RunbookError("--key が空です", "例: --key=topic,member_id", exit_code=2)
        return names
    if not table.primary_key:
        raise Refused(
            f"{table.label} には主キーがないため、行を特定できません（何も変更していません）",
            "行を一意に決める列を --key=列,列 で指定（その列の組が重複しないこと。"
            "重複や NULL があれば止めます）")
    return table.primary_key


def sort_expression(column: Column, alias: str = "") -> str:
    """The ORDER BY (and output) expression of a key column: see the module docstring."""
    name = (alias + "." if alias else "") + quote_ident(column.name)
    if column.order == "text":
        return f'({name})::text COLLATE "C"'
    return name


def columns_sql(names: tuple[str, ...] | list[str], alias: str = "") -> str:
    prefix = alias + "." if alias else ""
    return ", ".join(prefix + quote_ident(name) for name in names)


def row_hash(names: tuple[str, ...] | list[str], alias: str = "") -> str:
    """A 64-bit hash of a row's text over ``names``: equal rows, equal hashes (the text is
    the same on both servers: ``session.STABLE_TEXT``). A hash rather than the text
    itself: the merge then moves a few bytes per row, not the row."""
    return f"hashtextextended(ROW({columns_sql(names, alias)})::text, 0)"


def value_hash(columns: tuple[Column, ...] | list[Column], alias: str = "") -> str:
    """A 64-bit hash of a row as ``row_hash``'s, equal for equal rows, but without printing
    the values that ``Column.hashed_by_value`` allows (their own hash functions, which
    print nothing). The rest go in as one text, as ``row_hash``'s. The same on two servers
    of one major version (``VALUE_HASH_FROM`` on)."""
    exact = [column for column in columns if column.hashed_by_value]
    if not exact:
        return row_hash([column.name for column in columns], alias)
    rest = [column.name for column in columns if not column.hashed_by_value]
    printed = f", ROW({columns_sql(rest, alias)})::text" if rest else ""
    hashed = ", ".join(_hashed_whole(column, alias) for column in exact)
    return f"hash_record_extended(ROW({hashed}{printed}), 0)"


def _hashed_whole(column: Column, alias: str = "") -> str:
    """A value-hashed column as ``hash_record_extended`` hashes it without losing a bit:
    a bigint as its two halves, a timestamp or a time as its exact seconds (their own hash
    folds 64 bits into 32)."""
    name = columns_sql([column.name], alias)
    kind = TYPMOD.sub("", column.type)
    if kind == "bigint":
        return BIGINT_HALVES.format(name=name)
    return EPOCH.format(name=name) if kind in EPOCH_HASHED else name


def version_sum(alias: str = "") -> str:
    """What changes when any row changes (a new row version has a new ctid and xmin),
    summed over a selection: the same sum under lock as at the preview means the
    same rows, without reading them."""
    prefix = alias + "." if alias else ""
    return (f"count(*)::text || '/' || coalesce(sum(hashtextextended({prefix}ctid::text || ':' || "
            f"{prefix}xmin::text, 0)), 0)::text")
