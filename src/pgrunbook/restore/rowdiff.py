"""Rows of one table, backup against live, by key: two key-ordered streams merged
on the host (no dblink or postgres_fdw: the two sides are different databases,
often different servers).

Each side sends ``COPY (SELECT <key>, <selected>, <hash of the row's text>
... ORDER BY <key>) TO STDOUT``; the merge reads one line of each at a time, so
memory stays flat whatever the size of the table. A row is identified by its
key (``tables.row_key``) and equal when its text is (generated columns are left
out: they are recomputed); on PostgreSQL 14 and later the columns whose values are
equal exactly when their text is are hashed by value, without printing them
(``tables.value_hash``: the same hash functions on both sides, one major version).
``--where`` selects on both sides: a key is in the selection when either side's
row satisfies it, so a row moved out of the selection since the backup is
"changed", never "missing" and "extra" at once.

The merge trusts no order it is given: each side must come strictly
increasing by the key as Python orders it (``tables.sort_expression``); a key
twice (``--key`` that is not unique) or a server that sorts otherwise stops
it with a message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pgrunbook.core.errors import Refused, RunbookError
from pgrunbook.infra.postgres import quote_ident
from pgrunbook.restore.tables import (
    VALUE_HASH_FROM,
    Catalog,
    Column,
    Table,
    columns_sql,
    row_hash,
    sort_expression,
    value_hash,
    version_sum,
)

MISSING, CHANGED, EXTRA = "missing", "changed", "extra"  # only in the backup / both, differing / only live
KIND_TEXT = {MISSING: "バックアップにだけある（その後に削除）", CHANGED: "内容が違う（その後に更新）",
             EXTRA: "稼働中の DB にだけある（その後に追加）"}
EXAMPLES = 5
NULL = b"\\N"
ESCAPES = {b"b": "\b", b"f": "\f", b"n": "\n", b"r": "\r", b"t": "\t", b"v": "\v", b"\\": "\\"}
ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{1,2}|[0-7]{1,3}|.)")


def unescape(field_bytes: bytes) -> str:
    """A field of COPY's text format as its value."""
    if b"\\" not in field_bytes:
        return field_bytes.decode("utf-8")

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        if code[:1].isdigit():
            return bytes([int(code, 8) & 0xFF])
        return ESCAPES.get(code, code.decode("latin-1")).encode("utf-8")

    return ESCAPE.sub(replace, field_bytes).decode("utf-8", "replace")


def key_decoder(columns: list[Column]) -> Callable[[list[bytes]], tuple]:
    """The Python value of a key's fields, ordered as the servers order them."""
    orders = [column.order for column in columns]
    if all(order == "int" for order in orders):
        return lambda fields: tuple(map(int, fields))
    decoders = [int if order == "int" else bytes if order == "uuid" else unescape for order in orders]
    return lambda fields: tuple(decode(value) for decode, value in zip(decoders, fields, strict=True))


def key_label(fields: list[bytes]) -> str:
    return ", ".join(unescape(value) for value in fields)


@dataclass(frozen=True)
class Selection:
    """Which rows of a table: the key, the compared columns and an optional --where."""

    table: Table
    key: tuple[str, ...]
    compared: tuple[str, ...]  # the columns whose text decides "equal" (no generated ones)
    where: str | None = None
    by_value: int = 0  # the major version whose hash functions both sides use (0: the rows' text)
    by_text: tuple[str, ...] = ()  # key columns of another type on the other side: ordered by their text

    @property
    def key_columns(self) -> list[Column]:
        return [dataclasses.replace(column, as_text=True) if column.name in self.by_text else column
                for column in (self.table.column(name) for name in self.key)]

    @property
    def trusted_order(self) -> bool:
        """The primary key, of integers or uuids: unique, and ordered by every server
        as Python orders it (no collation), so the merge may skip equal lines."""
        return self.key == self.table.primary_key and all(c.order != "text" for c in self.key_columns)

    def order_sql(self, alias: str = "") -> str:
        return ", ".join(sort_expression(column, alias) for column in self.key_columns)

    def selected_sql(self, alias: str = "") -> str:
        if not self.where:
            return "true"
        return f"({self.where}) IS TRUE"

    def row_hash_sql(self) -> str:
        if self.by_value:
            return value_hash([self.table.column(name) for name in self.compared])
        return row_hash(self.compared)

    def stream_sql(self, keys: str | None = None) -> str:
        """The key, whether the row is selected, the hash of the row. ``keys``: a table of
        keys (the key's columns and ``pgrunbook_own``: selected on this side) as
        ``narrowable`` allows: only those keys' rows are read then, each selected as the
        table says (``--where`` is evaluated once on a side, when its keys are taken: a
        condition on now() or random() cannot select a row twice differently)."""
        if keys is None or not self.narrowable:
            return (f"SELECT {self.order_sql()}, {self.selected_sql()}, {self.row_hash_sql()} "
                    f"FROM {self.table.sql} ORDER BY {self.order_sql()}")
        key = columns_sql(self.key)
        match = " AND ".join(f"t.{quote_ident(name)} = k.{quote_ident(name)}" for name in self.key)
        listed = f"SELECT {key}, bool_or(pgrunbook_own) AS pgrunbook_own FROM {keys} GROUP BY {key}"
        rows = f"SELECT t.*, k.pgrunbook_own FROM {self.table.sql} t JOIN ({listed}) k ON {match}"
        return (f"SELECT {self.order_sql()}, pgrunbook_own, {self.row_hash_sql()} "
                f"FROM ({rows}) AS x ORDER BY {self.order_sql()}")

    @property
    def narrowable(self) -> bool:
        """``--where`` on the primary key (unique, never NULL): each side may read only the
        rows of the keys either side selects, which is all the merge needs (a key is compared
        when either side's row satisfies it). With ``--key`` every row is read: the merge
        must see a key twice, or NULL, to refuse it."""
        return bool(self.where) and self.key == self.table.primary_key

    def selected_keys_sql(self) -> str:
        """The keys (their columns, as stored) of the rows ``--where`` selects."""
        return f"SELECT {columns_sql(self.key)} FROM {self.table.sql} WHERE {self.selected_sql()}"

    def hashing_with(self, source: Catalog) -> Selection:
        """This selection as the other side (its catalog: its table and its server's major
        version) can hash it the same way: by value only where each column live hashes by
        value is hashed by value there too (one major version, the same type, a
        deterministic collation: a case-blind one hashes 'a' and 'A' alike); else by the
        rows' text."""
        if not self.by_value:
            return self
        other = source.named(self.table.label)
        theirs = {column.name: column for column in other.columns} if other is not None else {}
        for name in self.compared:
            mine, found = self.table.column(name), theirs.get(name)
            if mine.hashed_by_value and (found is None or not found.hashed_by_value
                                         or found.type != mine.type):
                return dataclasses.replace(self, by_value=0)
        return self if source.major == self.by_value else dataclasses.replace(self, by_value=0)

    def versions_sql(self) -> str:
        """``tables.version_sum`` of the selection's rows."""
        where = f" WHERE {self.selected_sql()}" if self.where else ""
        return f"SELECT {version_sum()} FROM {self.table.sql}{where}"


def hashing_major(major: int) -> int:
    """``Selection.by_value`` for a live server of ``major``: 0 before ``VALUE_HASH_FROM``."""
    return major if major >= VALUE_HASH_FROM else 0


@dataclass
class TableDiff:
    """One table's difference: counts, a few keys of each kind, and a digest of
    every differing key with its live row's hash (equal digests: the same difference)."""

    table: str
    same: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {MISSING: 0, CHANGED: 0, EXTRA: 0})
    examples: dict[str, list[str]] = field(default_factory=lambda: {MISSING: [], CHANGED: [], EXTRA: []})
    digest: str = ""
    notes: list[str] = field(default_factory=list)  # what the comparison left out, and why

    @property
    def different(self) -> bool:
        return any(self.counts.values())

    def lines(self) -> list[str]:
        notes = [f"  （{note}）" for note in self.notes]
        if not self.different:
            return [f"{self.table}: 差はありません（{self.same} 行が同じ）", *notes]
        lines = [f"{self.table}: 同じ {self.same} 行、"
                 + "、".join(f"{KIND_TEXT[kind]} {count} 行" for kind, count in self.counts.items())]
        for kind, keys in self.examples.items():
            if keys:
                more = " …" if self.counts[kind] > len(keys) else ""
                lines.append(f"  {KIND_TEXT[kind]}: キー {' / '.join(keys)}{more}")
        return lines + notes

    def as_dict(self) -> dict[str, object]:
        return {"table": self.table, "same": self.same, "counts": dict(self.counts),
                "examples": {kind: list(keys) for kind, keys in self.examples.items()},
                "notes": list(self.notes)}


# what the merge says of each differing key: (kind, its key fields)
OnDifference = Callable[[str, list[bytes]], None]


BATCH = 4096  # lines read at once from a side


def _next_batch(lines: Iterator[bytes]) -> list[bytes]:
    return list(itertools.islice(lines, BATCH))


class _Side:
    """One stream of ``Selection.stream_sql``, read in batches: the head line, parsed
    on demand, its order checked against the last parsed line of the side."""

    __slots__ = ("at", "batch", "batches", "decode", "fields", "hash", "key", "label", "lines", "parsed",
                 "selected", "width")

    def __init__(self, lines: Iterator[bytes], width: int, decode: Callable[[list[bytes]], tuple],
                 label: str) -> None:
        self.lines, self.width, self.decode, self.label = iter(lines), width, decode, label
        self.batch: list[bytes] = []
        self.at = 0
        self.batches = 0  # batches read so far: the number of the one in hand
        self.parsed: tuple[int, int] = (0, -1)  # (batch number, line) of the head parsed last:
        # a number, not the list's id (a new list may take the id of one freed before it)
        self.key: tuple | None = None
        self.fields: list[bytes] = []
        self.selected = self.hash = b""

    def more(self) -> bool:
        """A head line is there (the next batch read when this one is done)."""
        if self.at < len(self.batch):
            return True
        self.batch, self.at = _next_batch(self.lines), 0
        self.batches += 1
        return bool(self.batch)

    def parse(self) -> None:
        if self.parsed == (self.batches, self.at):
            return
        self.parsed = (self.batches, self.at)
        line = self.batch[self.at]
        parts = line.split(b"\t")
        width = self.width
        if len(parts) != width + 2:
            raise RunbookError(f"{self.label}の行が読めません（列の数が違います）: {line[:80]!r}")
        fields = parts[:width]
        try:
            key = self.decode(fields)
        except ValueError:
            key = None
        if key is None or NULL in fields:
            raise Refused(f"{self.label}にキーが NULL の行があります（--key の列に NULL は使えません）",
                          "NULL にならない列の組を --key に指定")
        previous = self.key
        if previous is not None and key <= previous:
            if key == previous:
                raise Refused(f"{self.label}でキー（{key_label(fields)}）が重複しています",
                              "重複しない列の組を --key に指定（何も変更していません）")
            raise RunbookError(f"{self.label}の並び順がキットの比べ方と合いません"
                               f"（キー {key_label(fields)}）",
                               "サーバーの文字コードが UTF-8 でないか、キーの型が特殊です。"
                               "手作業の手順で比べる")
        self.key, self.fields, self.selected, self.hash = key, fields, parts[width], parts[width + 1]


BLOCK = 32  # lines compared at once where both sides are byte for byte the same


def _skip_same(source: _Side, target: _Side, selective: bool) -> int:
    """Step over the lines both sides have in common, byte for byte, without parsing
    them; how many of them are selected. Sound only where equal lines are the same
    key in both streams' common order and no key repeats (``Selection.trusted_order``)."""
    same = 0
    while source.more() and target.more():
        a, b, i, j = source.batch, target.batch, source.at, target.at
        while i + BLOCK <= len(a) and j + BLOCK <= len(b) and a[i:i + BLOCK] == b[j:j + BLOCK]:
            i += BLOCK
            j += BLOCK
        while i < len(a) and j < len(b) and a[i] == b[j]:
            i += 1
            j += 1
        if selective:  # the selected flag is the line's second field from the end
            same += sum(1 for line in a[source.at:i] if line.rsplit(b"\t", 2)[1] == b"t")
        else:
            same += i - source.at
        source.at, target.at = i, j
        if i < len(a) and j < len(b):
            break
    return same


def compare(selection: Selection, backup: Iterator[bytes], live: Iterator[bytes],
            on_difference: OnDifference | None = None) -> TableDiff:
    """Merge the two streams of ``Selection.stream_sql``; every differing key goes to
    ``on_difference`` in key order."""
    width = len(selection.key)
    decode = key_decoder(selection.key_columns)
    table = selection.table.label
    result = TableDiff(table)
    digest = hashlib.sha256()
    fast = selection.trusted_order

    def differ(kind: str, side: _Side, live_hash: bytes) -> None:
        result.counts[kind] += 1
        if len(result.examples[kind]) < EXAMPLES:
            result.examples[kind].append(key_label(side.fields))
        digest.update(kind.encode() + b"\x1f" + b"\t".join(side.fields) + b"\x1f" + live_hash + b"\n")
        if on_difference is not None:
            on_difference(kind, side.fields)

    source = _Side(backup, width, decode, f"{table} のバックアップ側")
    target = _Side(live, width, decode, f"{table} の稼働中の DB")
    true = b"t"
    same = 0
    while True:
        if fast:
            same += _skip_same(source, target, bool(selection.where))
        more_source, more_target = source.more(), target.more()
        if not (more_source or more_target):
            break
        if more_source:
            source.parse()
        if more_target:
            target.parse()
        if more_source and more_target and source.key == target.key:
            if source.hash == target.hash:
                if source.selected == true or target.selected == true:
                    same += 1
            elif source.selected == true or target.selected == true:
                differ(CHANGED, source, target.hash)
            source.at += 1
            target.at += 1
        elif more_source and (not more_target or source.key < target.key):  # type: ignore[operator]
            if source.selected == true:
                differ(MISSING, source, b"")
            source.at += 1
        else:
            if target.selected == true:
                differ(EXTRA, target, target.hash)
            target.at += 1
    result.same = same
    result.digest = digest.hexdigest()
    return result


# --where: one SQL condition, kept inside its parentheses
WHERE_FORBIDDEN = re.compile(r";|\\|--|/\*|\$")
# a subquery (SELECT, or TABLE x): the kit database holds only the named tables' rows, so
# on the backup's side it reads an empty table and silently selects nothing
READS_A_TABLE = re.compile(r"\b(?:select|table)\b", re.IGNORECASE)


def check_where(where: str | None) -> str | None:
    """``--where`` as one condition: no statement end, comment, psql command or dollar
    quote outside its strings, parentheses balanced (it is put inside ``( )``), and no
    subquery (``READS_A_TABLE``)."""
    if where is None or not where.strip():
        return None
    text = where.strip()
    outside = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", text)
    depth = 0
    for character in outside:
        depth += (character == "(") - (character == ")")
        if depth < 0:
            break
    if "\n" in text or WHERE_FORBIDDEN.search(outside) or depth != 0 or outside.count("'") % 2 \
            or outside.count('"') % 2:
        raise RunbookError(f"--where={where!r} は 1 つの条件として使えません",
                           "; \\ -- /* $ と改行を含まない、括弧の閉じた条件を指定"
                           "（例: --where=\"topic = '予算'\"）",
                           exit_code=2)
    if READS_A_TABLE.search(outside):
        raise RunbookError(f"--where={where!r} はほかのテーブルを読むため使えません（作業用 DB には"
                           "指定したテーブルの行しかなく、バックアップ側の行が条件を満たさなくなります）",
                           "そのテーブルの列だけで条件を書く（例: --where=\"member_id IN (3, 5)\"）",
                           exit_code=2)
    return text
