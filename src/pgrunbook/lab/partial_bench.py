"""``bench --partial``: putting back 1 % of a 1 M-row table against the kit's full
restore-replace of the same backup, side by side in one run.

A disposable server (no network) with a ``ballots`` table of ``rows`` rows and the
bench's default dataset around it up to ``size_mb``; one kit backup. Then, each
round: 1 % of the ballots deleted, ``restore-partial --mode=missing`` timed (its
peak RSS too) while an app session keeps writing to another table; the same with
the 1 % being five topics' ballots, put back with ``--where`` naming them (the
operator who knows what the mistaken DELETE hit); then ``restore-replace`` of the
same backup timed, alternating which goes first. The
app container is in APP_CONTAINERS for both: the replace stops it, the partial
restore must not (its stops are counted from the engine's events), nor end the
writing session (its backend pid is compared). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgrunbook.infra.container import Container, engine
from pgrunbook.lab.bench import (
    ROOT,
    USER,
    _psql,
    _run,
    _run_traced,
    compile_kit,
    fill,
    machine,
    settle,
    start_app,
    start_container,
    step_times,
    update_page,
)

TARGET_RATIO = 0.25
TARGET_RSS_MB = 60
BALLOTS = """
CREATE TABLE public.ballots (
    id bigserial PRIMARY KEY, member_id int NOT NULL, topic text NOT NULL, choice text NOT NULL,
    cast_at timestamptz NOT NULL, note text NOT NULL);
INSERT INTO public.ballots (member_id, topic, choice, cast_at, note)
SELECT (random() * 50000)::int, '議題 第' || (g % 500) || '号', (ARRAY['賛成','反対','棄権'])[1 + g % 3],
       now() - random() * interval '900 days', md5(random()::text) || ' ' || md5(random()::text)
FROM generate_series(1, {rows}) AS g;
CREATE INDEX ballots_topic ON public.ballots (topic);
CREATE TABLE public.app_writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""
# the --where case: five of the 500 topics, 1 % of the ballots
TOPICS = [f"議題 第{number}号" for number in (11, 111, 211, 311, 411)]
WHERE = "topic IN (" + ", ".join(f"'{topic}'" for topic in TOPICS) + ")"
WRITER = ("DO $$ BEGIN FOR i IN 1..10000000 LOOP INSERT INTO public.app_writes DEFAULT VALUES; COMMIT; "
          "PERFORM pg_sleep(0.05); END LOOP; END $$")


# restore-partial's console steps (PGRUNBOOK_VERBOSE=1), by the start of their line (the first
# prefix that matches): a step runs from its line to the next named one
STEPS = (
    ("(start)", "起動・ファイルとサーバーの確認・作業用 DB の作成・目次"),
    ("・public.ballots をキー", "突き合わせ・戻す行の読み出し（確認の前）"),
    ("・ロックを取り", "ロック・行の変化の確認・戻す行の読み込み"),
    ("・取り消し用ファイル", "取り消し用ファイル・書き込み・COMMIT"),
    ("・作業用 DB", "作業用 DB の削除"),
    ("・", "作業用 DB への復元（そのテーブルの行だけ）"),
    ("====", "確認の表示"),
    ("戻しました", "結果の表示"),
)


def _stops(app: Any, since: float, until: float) -> int:
    """The engine's kill/stop events of the app container between two wall-clock times."""
    events = engine().events(since=datetime.fromtimestamp(since, timezone.utc),
                             until=datetime.fromtimestamp(until + 1, timezone.utc),
                             filters={"container": app.id}, decode=True)
    actions = (event.get("Action") or event.get("status") for event in events)
    return sum(1 for action in actions if action in ("kill", "stop", "die"))


def _writer_pid(container: Container) -> str:
    return _psql(container, "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench-app-writer'",
                 "postgres")


def _writes(container: Container) -> int:
    return int(_psql(container, "SELECT count(*) FROM public.app_writes"))


def run(size_mb: float, rounds: int, image: str, output: Path, rows: int = 1_000_000,
        tag: str = "") -> dict[str, Any]:
    compile_kit()
    container = start_container(image, tag)
    app = start_app(image, tag)
    work = Path(tempfile.mkdtemp(prefix="pgrunbook-bench-partial-"))
    times: dict[str, list[float]] = {"partial": [], "partial_where": [], "replace": []}
    rss: dict[str, list[float]] = {"partial": [], "partial_where": [], "replace": []}
    stops, ended, put_back = [], [], []
    steps: dict[str, list[float]] = {}
    try:
        version = _psql(container, "SHOW server_version", "postgres").split()[0]
        _psql(container, BALLOTS.format(rows=rows))
        size = fill(container, size_mb)
        table_bytes = int(_psql(container, "SELECT pg_total_relation_size('public.ballots')"))
        (work / ".env.bench").write_text(f"DB_CONTAINER={container.name}\nDB_NAME=app\n"
                                         f"APP_CONTAINERS={app.name}\n")
        env = {**os.environ, "PGRUNBOOK_HOME": str(work)}
        invoke = [sys.executable, "-m", "invoke", "-r", str(ROOT)]
        settle(container)
        backup = Path(_run(invoke + ["backup", "--env=bench"], env=env).last_line)
        archive_bytes = backup.stat().st_size

        def partial(number: int, where: bool = False) -> None:
            _psql(container, f"DELETE FROM public.ballots WHERE {WHERE}" if where
                  else f"DELETE FROM public.ballots WHERE id % 100 = {number % 100}")
            missing = rows - int(_psql(container, "SELECT count(*) FROM public.ballots"))
            settle(container)
            environment = {**os.environ, "PGAPPNAME": "bench-app-writer"}
            exec_id = container.api.exec_create(container.model.id,
                                                ["psql", "-U", USER, "-d", "app", "-c", WRITER],
                                                environment=environment)["Id"]
            container.api.exec_start(exec_id, detach=True)
            deadline = time.monotonic() + 60
            while not _writer_pid(container) and time.monotonic() < deadline:
                time.sleep(0.1)
            pid, written, since = _writer_pid(container), _writes(container), time.time()
            done, lines = _run_traced(invoke + ["restore-partial", "--env=bench", f"--file={backup}",
                                                "--table=public.ballots", "--mode=missing",
                                                "--confirm=bench"] + ([f"--where={WHERE}"] if where else []),
                                      env=env)
            if not where:
                for step, seconds in step_times(lines, STEPS, other=None).items():
                    steps.setdefault(step, []).append(round(seconds, 3))
            stops.append(_stops(app, since, time.time()))
            ended.append(int(_writer_pid(container) != pid or _writes(container) <= written))
            _psql(container, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'bench-app-writer'", "postgres")
            if int(_psql(container, "SELECT count(*) FROM public.ballots")) != rows:
                raise RuntimeError("restore-partial did not put every row back")
            name = "partial_where" if where else "partial"
            times[name].append(round(done.seconds, 3))
            rss[name].append(round(done.rss_mb, 1))
            if not where:
                put_back.append(missing)

        def replace() -> None:
            settle(container)
            done = _run(invoke + ["restore-replace", "--env=bench", f"--file={backup}", "--confirm=bench",
                                  "--accept-shrink"], env=env)  # the app's writes since are dropped: meant
            times["replace"].append(round(done.seconds, 3))
            rss["replace"].append(round(done.rss_mb, 1))
            _run(invoke + ["restore-drop", "--env=bench", f"--db={done.last_line}", "--confirm=bench"],
                 env=env)

        for number in range(rounds):
            if number % 2:
                replace()
                partial(number + 7, where=True)
                partial(number + 7)
            else:
                partial(number + 7)
                partial(number + 7, where=True)
                replace()
    finally:
        container.model.remove(force=True, v=True)
        app.remove(force=True)
        shutil.rmtree(work, ignore_errors=True)  # the backup (prod-like data) and the work log
    partial_median, replace_median = statistics.median(times["partial"]), statistics.median(times["replace"])
    report = {
        "when": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "image": image, "server_version": version, "rounds": rounds, "database_bytes": size,
        "archive_bytes": archive_bytes, "table_rows": rows, "table_bytes": table_bytes,
        "rows_put_back": put_back, "times_seconds": times, "peak_rss_mb": rss,
        "medians_seconds": {"partial": partial_median, "replace": replace_median,
                            "partial_where": statistics.median(times["partial_where"])},
        "ratio": round(partial_median / replace_median, 3),
        "ratio_where": round(statistics.median(times["partial_where"]) / replace_median, 3),
        "where": WHERE,
        "partial_steps_seconds": {step: round(statistics.median(values), 3)
                                  for step, values in steps.items()},
        "app_container_stops_during_partial": stops, "app_sessions_ended_during_partial": ended,
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
        "machine": machine(),
    }
    report["met"] = {"ratio": report["ratio"] <= TARGET_RATIO,
                     "peak_rss": max(rss["partial"] + rss["partial_where"]) <= TARGET_RSS_MB,
                     "no_downtime": not any(stops) and not any(ended)}
    output.mkdir(parents=True, exist_ok=True)
    (output / "partial.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    (output / "partial.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    ok = {True: "達成", False: "未達"}
    medians = report["medians_seconds"]
    mib = report["database_bytes"] / 1024 / 1024
    partial_rss = max(report["peak_rss_mb"]["partial"] + report["peak_rss_mb"].get("partial_where", []))
    lines = [
        f"{report['table_rows']:,} 行のテーブル（{report['table_bytes'] / 1024 / 1024:.0f} MiB）を含む "
        f"{mib:.0f} MiB の DB（アーカイブ {report['archive_bytes'] / 1024 / 1024:.0f} MiB、PostgreSQL "
        f"{report['server_version']}）。各回 1 % の行（{report['rows_put_back'][0]:,} 行）を消してから、"
        f"同じ 1 回の実行の中で交互に測った中央値（{report['rounds']} 回）:",
        "",
        "| 項目 | 一部だけ戻す（`restore-partial --mode=missing`） "
        "| 置き換え（`restore-replace`、DB 全体） |",
        "|---|---|---|",
        f"| 時間 | {medians['partial']:.1f} 秒 | {medians['replace']:.1f} 秒 |",
        f"| 比（一部 / 全体） | **{report['ratio']:.2f}**（目標 ≤ {report['targets']['ratio']}: "
        f"{ok[report['met']['ratio']]}） | 1 |",
        f"| 時間: 同じ 1 % を議題 5 つの行として消し、`--where` で戻す | {medians['partial_where']:.1f} 秒 "
        f"| {medians['replace']:.1f} 秒 |",
        f"| 比（`--where`） | **{report['ratio_where']:.2f}**（目標 ≤ {report['targets']['ratio']}: "
        f"{ok[report['ratio_where'] <= report['targets']['ratio']]}） | 1 |",
        f"| キットの最大メモリ（RSS） | {partial_rss:.0f} MB（目標 ≤ "
        f"{report['targets']['peak_rss_mb']}: {ok[report['met']['peak_rss']]}） | "
        f"{max(report['peak_rss_mb']['replace']):.0f} MB |",
        *[f"| 　{step} | {seconds:.1f} 秒 | |"
          for step, seconds in report.get("partial_steps_seconds", {}).items() if seconds >= 0.05],
        "| アプリの書き込み停止 | なし（コンテナの停止 "
        f"{sum(report['app_container_stops_during_partial'])} 回、"
        f"書き込み中のセッションの切断 {sum(report['app_sessions_ended_during_partial'])} 回: "
        f"{ok[report['met']['no_downtime']]}） | アプリのコンテナを止めて入れ替え |",
        "",
        "各回（一部 / 全体）: " + "、".join(f"{p:.1f} / {r:.1f} 秒" for p, r in zip(
            report["times_seconds"]["partial"], report["times_seconds"]["replace"], strict=False)),
        "",
        f"測定: {report['when']} / マシン: {report['machine'].get('cpu', '')}、"
        f"{report['machine'].get('cpus')} コア、"
        f"開始時の load average: {' '.join(report['machine'].get('load_average_at_start', []))}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=900)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", default=os.environ.get("PGRUNBOOK_TEST_IMAGE", "postgres:15"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--tag", default="", help="a word in the containers' names (a shared machine)")
    parser.add_argument("--page", type=Path, help="a runbook page whose report block to replace")
    parser.add_argument("--block", default="partial", help="the named block of --page")
    args = parser.parse_args(argv)
    report = run(args.size_mb, args.rounds, args.image, args.output, args.rows, args.tag)
    text = markdown(report)
    if args.page:
        update_page(args.page, text, args.block)
    sys.stdout.write(text + f"\n{args.output / 'partial.json'}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
