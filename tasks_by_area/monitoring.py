"""Knowing the state: check, status, report, the schedule, pings, the work log (``pgrunbook.monitoring``)."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit

from pgrunbook.cli import guarded, print_lines, settings_for, task
from tasks_by_area.common import ENV_HELP, ROOT, lazy


@task(name="check", help={"env": ENV_HELP})
def check_task(c, env=None):
    """1. 事前確認: 接続先・コンテナ・DB・権限・バックアップ先・最新のバックアップ・cron を 1 画面で確認する。
    終了コード 0=すべて OK、1=WARN あり、2=NG あり。何も変更しない。"""
    settings, console = settings_for(ROOT, env)
    lines = guarded(lambda: lazy.monitoring_check.run_check(settings), console)
    for line in lines:
        console.result(line.render())
    code = lazy.monitoring_check.exit_code(lines)
    counts = {level: sum(1 for line in lines if line.level == level) for level in ("OK", "WARN", "NG")}
    console.result(f"事前確認 env={settings.env}: OK {counts['OK']} / WARN {counts['WARN']} / "
                   f"NG {counts['NG']}" + ("（NG を直すまで作業しない）" if code == 2 else ""))
    if code:
        raise Exit(code=code)


@task(
    help={
        "env": ENV_HELP,
        "max_age": "最新の検証済みバックアップの許容経過時間（例: 26h, 90m, 2d。既定 26h）",
        "format": "text（既定: 1 行と終了コード 0/1/2）か prometheus（メトリクスを表示、終了コード 0）",
    }
)
def status(c, env=None, max_age="26h", format="text"):
    """監視用に 1 行表示: 0=新しい検証済みバックアップあり、1=古い、2=ない。METRICS_FILE も更新する。

    3=最新のバックアップが疑わしい（行数の急減・別 DB）、4=作業ログに改ざんの疑い、
    5=鍵の訓練（key-drill）が KEY_DRILL_MAX_AGE より古い・ない・失敗（オフサイトのある環境）。
    """
    settings, console = settings_for(ROOT, env)
    if format not in ("text", "prometheus"):
        raise Exit(f"エラー: --format={format} は使えません → text か prometheus", code=2)
    if settings.metrics_file is not None:
        lazy.monitoring_metrics.write(settings, console)  # hourly from cron: the textfile stays current
    if format == "prometheus":
        sys.stdout.write(guarded(lambda: lazy.monitoring_metrics.text(settings), console))
        return
    parse = lazy.core_durations.parse_duration
    result = guarded(lambda: lazy.monitoring_status.freshness(settings, parse(max_age)), console)
    console.result(result.line)
    if result.exit_code:
        raise Exit(code=result.exit_code)


@task(
    help={
        "env": ENV_HELP,
        "output": "HTML の出力先（既定: <BACKUP_DIR>/report-<env>.html）",
    }
)
def report(c, env=None, output=None):
    """バックアップのサイズ・所要時間、復元訓練の結果・復旧時間、鮮度の履歴を 1 枚の HTML にする。"""
    settings, console = settings_for(ROOT, env)
    target = Path(output).expanduser().resolve() if output else None
    path = guarded(lambda: lazy.monitoring_report.write_report(settings, target), console)
    console.result(str(path))


@task(
    help={
        "env": ENV_HELP,
        "install": "このユーザーの crontab に登録する（# BEGIN/END pgrunbook <env> の間。再実行しても同じ）",
        "remove": "crontab から pgrunbook <env> のブロックを削除する",
        "mailto": "失敗を知らせるメールの宛先（cron の MAILTO。既定 root、空で送信なし）",
        "user": "root が別ユーザーの crontab を扱うとき（crontab -u）",
        "example": "crontab.example の内容（見本）を表示する",
    }
)
def crontab(c, env=None, install=False, remove=False, mailto="root", user=None, example=False):
    """定期実行（バックアップ・検証・リストア試験・削除・鮮度チェック）の crontab を表示・登録する。"""
    if example:
        sys.stdout.write(lazy.monitoring_schedule.example_text())
        return
    settings, console = settings_for(ROOT, env)
    target = guarded(lambda: lazy.monitoring_schedule.target_for(settings, ROOT, mailto), console)
    block = lazy.monitoring_schedule.render(target)
    if remove:
        removed = guarded(lambda: lazy.monitoring_schedule.remove(settings.env, user), console)
        console.summary(f"crontab から pgrunbook {settings.env} を削除しました" if removed
                        else f"crontab に pgrunbook {settings.env} はありません（変更なし）")
    elif install:
        changed = guarded(
            lambda: lazy.monitoring_schedule.install(block, settings.env, user, settings.backup_dir), console
        )
        console.summary(f"crontab に pgrunbook {settings.env} を登録しました（crontab -l で確認）"
                        if changed else f"crontab の pgrunbook {settings.env} は登録済みです（変更なし）")
    else:
        print_lines(block)


@task(
    help={
        "env": ENV_HELP,
        "start": "ジョブの開始を知らせる（<PING_URL>/start）",
        "exit_code": "ジョブの終了コード（crontab では $?）。0 なら成功、それ以外は失敗（/fail）を送り、"
                     "この値で終了する",
        "since": "ジョブの開始時刻（UNIX 秒）。失敗時、これ以後の作業ログから 1 行のエラーを探す",
        "message": "失敗時に送る文（既定: 作業ログの 1 行のエラー）",
    }
)
def ping(c, env=None, start=False, exit_code=None, since=None, message=None):
    """死活監視（healthchecks.io / Uptime Kuma）に開始・成功・失敗を送る。PING_URL が空なら何もしない。"""
    settings, console = settings_for(ROOT, env)
    code = guarded(
        lambda: lazy.monitoring_ping.run(settings, console, start=start, exit_code=exit_code, since=since,
                                message=message),
        console,
    )
    if code:
        raise Exit(code=code)


@task(name="worklog-verify", help={"env": ENV_HELP})
def worklog_verify(c, env=None):
    """作業ログのハッシュの鎖を確かめ、書き換え・削除・差し込みがあれば最初の行番号を示す（終了コード 1）。"""
    settings, console = settings_for(ROOT, env)
    report = lazy.core_worklog.verify_chain(settings.worklog_path)
    line = f"{settings.worklog_path}: {report.describe()}"
    if not report.intact:
        raise Exit(f"エラー: {line} → git などに控えた写しやオフサイトの記録と比べ、"
                   "いつ誰が書き換えたかを調べる（runbooks/guards.md）", code=1)
    console.result(line)


@task(
    name="evidence",
    help={
        "env": ENV_HELP,
        "from": "期間の始まり YYYY-MM-DD（既定: 直前の年度の初日。FISCAL_YEAR_START）",
        "to": "期間の終わり YYYY-MM-DD（その日を含む。既定: --from があれば今日、なければ直前の年度の末日）",
        "output": "HTML の出力先（既定: <BACKUP_DIR>/evidence-<env>-<始まり>-<終わり>.html）",
    },
)
def evidence(c, env=None, from_=None, to=None, output=None):
    """監査対応: 期間のバックアップ・検証・復元訓練・置き換え・固定・ロック・作業ログの鎖を 1 枚の HTML に。

    外部のファイルを読まない自己完結の HTML（A4 で印刷できる）。ファイルの sha256 と作業ログの先頭の
    ハッシュを作業ログに記録して封印する（invoke evidence-verify で確かめる）。最後の行がパス。"""
    settings, console = settings_for(ROOT, env)
    target = Path(output).expanduser().resolve() if output else None
    sealed = guarded(lambda: lazy.monitoring_evidence.write_evidence(settings, from_, to, target, console),
                     console)
    console.summary(f"証跡 {sealed.period.first}〜{sealed.period.last}: sha256 {sealed.sha256}"
                    f"（作業ログの先頭 {sealed.chain_head[:16]}… とともに作業ログに記録）")
    console.result(str(sealed.path))


@task(
    name="evidence-verify",
    help={
        "file": "確かめる証跡ファイル（invoke evidence が作った HTML）",
        "env": "環境（既定: ファイルに書かれた環境）",
    },
)
def evidence_verify(c, file, env=None):
    """証跡ファイルが作業ログに封印されたものと同じか、その後に作業ログが書き換えられていないかを確かめる。

    終了コード 0 = 一致し、作業ログも改ざんなし（追記のみ）。1 = 不一致か改ざんの疑い。"""
    path = Path(file).expanduser()
    if env is None:
        _, meta = guarded(lambda: lazy.monitoring_evidence.read_file(path))
        env = meta["env"]
    settings, console = settings_for(ROOT, env)
    verdict = guarded(lambda: lazy.monitoring_evidence.verify_evidence(settings, path), console)
    for line in verdict.lines:
        console.result(line)
    if not verdict.ok:
        raise Exit("エラー: 証跡ファイルと作業ログが一致しません（上の NG の行）→ 受け取った写しや"
                   "オフサイトの記録と比べ、いつ誰が書き換えたかを調べる（runbooks/audit.md）", code=1)


TASKS = (check_task, status, report, crontab, ping, worklog_verify, evidence, evidence_verify)
