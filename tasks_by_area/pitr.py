"""Point-in-time recovery with pgBackRest (``pgrunbook.pitr``)."""

from __future__ import annotations

import sys

from invoke import Exit

from pgrunbook.cli import guarded, print_lines, settings_for, task
from tasks_by_area.common import ENV_HELP, ROOT, lazy


@task(
    name="pitr-setup",
    help={"env": ENV_HELP, "dry_run": "何もせず、同じことを手で行うコマンドを表示する"},
)
def pitr_setup(c, env=None, dry_run=False):
    """pgBackRest のスタンザを作り（stanza-create）、WAL がリポジトリに届くことを確かめる（check）。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(lambda: lazy.pitr_setup.pitr_setup(settings, dry_run, console), console)
    if isinstance(result, list):
        print_lines(result)


@task(
    name="pitr-backup",
    help={
        "env": ENV_HELP,
        "type": "full（フル）か diff（前回のフルからの差分）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_backup(c, env=None, type="full", dry_run=False):  # noqa: A002 - pgBackRest's own word
    """pgBackRest のベースバックアップ（--type=full|diff）。古いものはリポジトリの保持設定で消える。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(lambda: lazy.pitr_backup.pitr_backup(settings, type, dry_run, console), console)
    if isinstance(result, list):
        print_lines(result)
    else:
        console.result(result)


@task(
    name="pitr-status",
    help={
        "env": ENV_HELP,
        "max_age": "WAL がアーカイブ待ちのままでよい時間（例: 15m。既定 15m）",
        "backup_max_age": "最新のベースバックアップの許容経過時間（既定 8d）",
        "format": "text（既定: 1 行と終了コード 0/1/2）か prometheus（メトリクスを表示、終了コード 0）",
    },
)
def pitr_status(c, env=None, max_age="15m", backup_max_age="8d", format="text"):  # noqa: A002
    """監視用に 1 行表示（pg_stat_archiver と pgbackrest info）: 0=正常、1=警告（遅れ）、2=異常。
    見た結果はメトリクス（METRICS_FILE）にも書く。"""
    settings, console = settings_for(ROOT, env)
    if format not in ("text", "prometheus"):
        raise Exit(f"エラー: --format={format} は使えません → text か prometheus", code=2)
    parse = lazy.core_durations.parse_duration
    limits = guarded(lambda: (parse(max_age), parse(backup_max_age)), console)  # exit 2 on a typo, as status
    result = lazy.pitr_status.pitr_status(settings, *limits, console)
    if lazy.pitr_observation.record_status(settings, result, console):
        lazy.monitoring_metrics.write(settings, console)
    if format == "prometheus":
        sys.stdout.write(guarded(lambda: lazy.monitoring_metrics.text(settings), console))
        return
    console.result(result.line)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    name="pitr-restore-scratch",
    help={
        "env": ENV_HELP,
        "target_time": "戻す時刻（必須）。例: '2026-01-28 10:15:00'（この端末の時刻帯）、"
                       "'2026-01-28T01:15:00Z'",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_restore_scratch(c, env=None, target_time=None, dry_run=False):
    """指定時刻の状態を別のコンテナ（新しいボリューム・ネットワークなし）に戻して中身を表示する。本番には触れない。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: lazy.pitr_scratch.pitr_restore_scratch(settings, target_time, dry_run, console), console
    )
    if isinstance(result, list):
        print_lines(result)
    else:
        print_lines(result.report_lines(settings.db_name))
        console.result(result.name)


@task(
    name="pitr-drill",
    help={
        "env": ENV_HELP,
        "minutes": "何分前に戻すか（既定 5）",
        "target_time": "分の代わりに時刻で指定（pitr-restore-scratch と同じ書き方）",
        "dry_run": "何もせず、同じことを手で行うコマンドを表示する",
    },
)
def pitr_drill(c, env=None, minutes=5.0, target_time=None, dry_run=False):
    """訓練: N 分前の状態を別コンテナに戻し、本番と行数を比べ、かかった時間を記録して削除する。"""
    settings, console = settings_for(ROOT, env)
    result = guarded(
        lambda: lazy.pitr_drill.pitr_drill(settings, float(minutes), target_time, dry_run, console), console
    )
    if isinstance(result, list):
        print_lines(result)


@task(
    name="pitr-scratch-drop",
    help={"env": ENV_HELP, "name": "削除する検証用コンテナ（pitr-restore-scratch が表示した名前）"},
)
def pitr_scratch_drop(c, env=None, name=None):
    """pitr-restore-scratch が作った検証用コンテナとそのデータボリュームを削除する（それ以外は消さない）。"""
    settings, console = settings_for(ROOT, env)
    guarded(lambda: lazy.pitr_scratch.drop_scratch(settings, name, console), console)


TASKS = (pitr_setup, pitr_backup, pitr_status, pitr_restore_scratch, pitr_drill, pitr_scratch_drop)
