"""Pure logic of operations: the retention policy, durations, the inventory table."""

from __future__ import annotations

from pgrunbook.store.inventory import verified_index


def test_verified_index_needs_ok_same_env_and_sha():
    records = [
        {"task": "verify", "result": "ok", "env": "prod", "file": "/x/a.dump", "sha256": "aa", "time": "t1"},
        {"task": "verify", "result": "failed", "env": "prod", "file": "/x/b.dump", "sha256": "bb"},
        {"task": "verify", "result": "ok", "env": "dev", "file": "/x/c.dump", "sha256": "cc"},
        {"task": "backup", "result": "ok", "env": "prod", "file": "/x/d.dump", "sha256": "dd"},
    ]
    assert verified_index(records, "prod") == {("a.dump", "aa"): "t1"}


def test_list_table_aligns_japanese_cells(tmp_path):
    from pgrunbook.store import catalog
    from pgrunbook.store.inventory import Inventoried, _width, plain_lines, table

    def item(name: str, verified: str | None, checksum: str) -> Inventoried:
        backup = catalog.parse(tmp_path / name)
        return Inventoried(backup, 2048, checksum, "ab", True, verified)

    items = [item("knot-prod-20260128-020000.dump", "2026-01-28T02:01:00+09:00", "ok"),
             item("knot-prod-globals-20260128-020000.sql", None, "なし"),
             item("knot-prod-20250101.dump", None, "なし")]
    lines = table(items)
    assert lines[0].split() == ["名前", "形式", "サイズ", "作成日時", "検証", "チェックサム", "ラベル",
                                "保管期限", "内容"]
    starts = {lines[i].index("2026-01-28 02:00:00") for i in (2, 3)}
    assert len(starts) == 1
    checksum_column = {_width(line[: line.rindex(" ") + 1]) for line in lines[2:]}
    assert len(checksum_column) == 1, lines
    assert "済 2026-01-28T02:01" in lines[2] and "globals" in lines[3] and "custom(旧形式)" in lines[4]
    assert plain_lines(items)[1].split("\t") == [
        "knot-prod-globals-20260128-020000.sql", "globals", "2.0 KiB", "2026-01-28 02:00:00", "未", "なし",
        "-", "-", "-"]
