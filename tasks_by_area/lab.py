"""Practice and measurement: the sandbox and the bench (``pgrunbook.lab``)."""

from __future__ import annotations

from invoke import Exit

from pgrunbook.cli import guarded, settings_for, task
from tasks_by_area.common import ROOT, lazy


@task(name="sandbox-up", help={"env": "練習用の環境（保護環境は不可）。例: dev"})
def sandbox_up(c, env=None):
    """練習用 PostgreSQL コンテナをサンプルデータ入りで起動する（DB_CONTAINER の名前で）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: lazy.lab_sandbox.sandbox_up(settings, console), console)


@task(name="sandbox-down", help={"env": "sandbox-up で作った環境。例: dev"})
def sandbox_down(c, env=None):
    """sandbox-up で作ったコンテナを削除する（キットが作ったもの以外は触らない）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: lazy.lab_sandbox.sandbox_down(settings, console), console)


@task(
    help={
        "size_mb": "作成するデータベースの大きさ（MB）",
        "rounds": "手作業とキットを交互に何回ずつ測るか",
        "image": "使う PostgreSQL イメージ（既定: PGRUNBOOK_TEST_IMAGE または postgres:15）",
        "output": "レポート（bench.json / bench.md）の出力先",
        "compressions": "キットで測る圧縮形式（カンマ区切り。既定: 16 以降は gzip:1,lz4,zstd:1,zstd:3）",
        "dataset": "データ: default（多数のテーブル）か large-tables（大きなテーブル 2 つ）",
        "variants": ("キットの置き換えと並べて測る試み（mwm, mwm-auto, nosync, nocheckpoint, jobs2, stream, "
                     "notxsize, section。+ でつなぐと両方）と、キットのファイルの素の pg_restore の別の方法"
                     "（bare-stdin, bare-nolive）"),
        "tag": "コンテナ名に入れる語（共有マシンで誰の実行か分かるように）",
        "prestaged": "事前展開した最新バックアップへの置き換え（RESTORE_PRESTAGE）も測る",
        "partial": "代わりに、100 万行のテーブルの 1 % を一部だけ戻す時間を、"
                   "同じバックアップの置き換えと並べて測る",
    }
)
def bench(c, size_mb=900, rounds=3, image=None, output="bench-results", compressions="",
          dataset="default", variants="", tag="", prestaged=False, partial=False):
    """手順書の手作業とキットの速度・書き込み停止時間・メモリを使い捨てコンテナで比較する。"""
    argv = ["--size-mb", str(size_mb), "--rounds", str(rounds), "--output", output]
    if image:
        argv += ["--image", image]
    if partial:
        raise Exit(code=lazy.lab_partial_bench.main(argv + (["--tag", tag] if tag else [])))
    if compressions:
        argv += ["--compressions", compressions]
    argv += ["--dataset", dataset] + (["--variants", variants] if variants else []) + (
        ["--tag", tag] if tag else []) + (["--prestaged"] if prestaged else [])
    raise Exit(code=lazy.lab_bench.main(argv))


TASKS = (sandbox_up, sandbox_down, bench)
