"""``invoke report``: one self-contained HTML page of an env's history (issue 13).

Backup sizes and durations over time (a sudden drop stands out in red), the
restore drills with their results and time to recover, and the freshness that
``status`` reports. Everything comes from the work log (which outlives pruned
files) and the manifests beside the files still there; nothing touches the
database. The page has no external assets: CSS inline, plots as inline SVG
drawn here (a few dozen lines; a plotting library would add a dependency for
three line charts), so it opens from a file server or a mail attachment.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pgrunbook.core import worklog
from pgrunbook.core.console import human_size
from pgrunbook.core.errors import RunbookError
from pgrunbook.core.files import ensure_private_dir, write_private
from pgrunbook.core.settings import Settings
from pgrunbook.monitoring import status
from pgrunbook.restore import drill
from pgrunbook.store import catalog

BACKUP_TASKS = ("backup", "backup-sql")
DROP_RATIO = 0.5  # smaller than half the median of the previous ones: a sudden drop
DROP_WINDOW = 5


@dataclass(frozen=True)
class Point:
    when: datetime
    value: float
    label: str
    bad: bool = False


@dataclass(frozen=True)
class BackupRun:
    when: datetime
    file: str
    size: int | None
    seconds: float | None
    result: str
    error: str | None


def parse_time(text: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment.astimezone().replace(tzinfo=None) if moment.tzinfo else moment


def backup_runs(settings: Settings) -> list[BackupRun]:
    """Every backup run of the env from the work log, with sizes from the manifests
    when the log line has none (older lines); oldest first."""
    runs = []
    for record in worklog.read(settings.worklog_path):
        if record.get("task") not in BACKUP_TASKS or record.get("env") != settings.env:
            continue
        when = parse_time(record.get("time"))
        if when is None:
            continue
        size = record.get("size")
        if size is None and record.get("file"):
            size = (catalog.read_manifest(Path(record["file"])) or {}).get("size")
        runs.append(BackupRun(when, Path(str(record.get("file") or "")).name, size,
                              record.get("duration_seconds"), str(record.get("result")),
                              record.get("error")))
    return sorted(runs, key=lambda run: run.when)


def sudden_drops(runs: list[BackupRun]) -> set[int]:
    """Indexes of good backups much smaller than the median of the ones before."""
    drops, sizes = set(), []
    for index, run in enumerate(runs):
        if run.result != "ok" or not run.size:
            continue
        window = sizes[-DROP_WINDOW:]
        if len(window) >= 2 and run.size < DROP_RATIO * statistics.median(window):
            drops.add(index)
        sizes.append(run.size)
    return drops


# ---- plain SVG ------------------------------------------------------------------------
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 230, 78, 16, 16, 40


def svg_chart(points: list[Point], describe, empty: str) -> str:
    """A line chart with its points; bad points in red. ``describe`` formats a value."""
    if not points:
        return (f'<svg class="chart" viewBox="0 0 {WIDTH} 60" role="img" xmlns="http://www.w3.org/2000/svg">'
                f'<text x="{WIDTH / 2}" y="35" text-anchor="middle" class="muted">'
                f"{html.escape(empty)}</text></svg>")
    first, last = points[0].when, points[-1].when
    span = max((last - first).total_seconds(), 1.0)
    top_value = max(p.value for p in points) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(p: Point) -> float:
        if len(points) == 1:
            return LEFT + plot_w / 2
        return LEFT + plot_w * (p.when - first).total_seconds() / span

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / (top_value * 1.1))

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             'xmlns="http://www.w3.org/2000/svg">']
    for fraction in (0, 0.5, 1):
        value = top_value * fraction
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     'class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" class="axis">'
                     f"{html.escape(describe(value))}</text>")
    ticks = [first, last] if len(points) > 1 else [first]
    if len(points) > 2:
        ticks.insert(1, first + (last - first) / 2)
    for moment in ticks:
        position = LEFT + (plot_w / 2 if len(points) == 1
                           else plot_w * (moment - first).total_seconds() / span)
        anchor = "middle"
        if len(ticks) > 1 and moment in (first, last):
            anchor = "start" if moment == first else "end"
        parts.append(f'<text x="{position:.1f}" y="{HEIGHT - 14}" text-anchor="{anchor}" class="axis">'
                     f'{moment.strftime("%m/%d %H:%M")}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(p):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
    parts.append(f'<path d="{path}" class="line"/>')
    for p in points:
        css = "dot bad" if p.bad else "dot"
        parts.append(f'<circle cx="{x(p):.1f}" cy="{y(p.value):.1f}" r="{5 if p.bad else 3.5}" '
                     f'class="{css}"><title>{html.escape(p.label)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def when_text(value: Any) -> str:
    moment = parse_time(value)
    return f"{moment:%Y-%m-%d %H:%M}" if moment else str(value or "")


def seconds_text(value: float) -> str:
    return f"{value:.1f} 秒" if value < 120 else f"{value / 60:.1f} 分"


# ---- the page -------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,"Hiragino Sans","Noto Sans CJK JP",sans-serif;
margin:24px auto;max-width:820px;color:#1f2430;padding:0 12px}
h1{font-size:1.4em;margin-bottom:4px}
h2{font-size:1.1em;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
.muted{color:#778;fill:#778;font-size:13px}
.badge{display:inline-block;padding:6px 10px;border-radius:6px;font-weight:600;margin:8px 0}
.ok{background:#e3f5e6;color:#145c23}.stale{background:#fff3d6;color:#7a5200}
.none{background:#fde2e1;color:#8a1c16}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1 1 220px;border:1px solid #dde;border-radius:8px;padding:10px}
.card b{display:block;font-size:1.2em}
svg.chart{width:100%;height:auto;background:#fafbfe;border:1px solid #e4e6f0;border-radius:6px}
.grid{stroke:#e2e4ee}.axis{fill:#667;font-size:12px}.line{fill:none;stroke:#3f51b5;stroke-width:2}
.dot{fill:#3f51b5}.dot.bad{fill:#d32f2f}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:4px 6px;text-align:left}td.num{text-align:right}
tr.bad td{color:#b71c1c}
"""


def _rows(cells: list[list[str]], bad: list[bool]) -> str:
    return "".join(f'<tr class="{"bad" if b else ""}">' + "".join(cells_row) + "</tr>"
                   for cells_row, b in zip(cells, bad, strict=True))


def render(settings: Settings, now: datetime | None = None) -> str:
    now = now or datetime.now()
    esc = html.escape
    runs = backup_runs(settings)
    drops = sudden_drops(runs)
    drills = drill.drills(settings)
    fresh = status.freshness(settings, timedelta(hours=26), now)
    badge = {0: "ok", 1: "stale", 2: "none"}[fresh.exit_code]
    good = [r for r in runs if r.result == "ok"]

    size_points = [Point(r.when, float(r.size or 0), f"{r.when:%Y-%m-%d %H:%M} {r.file}: "
                         f"{human_size(r.size or 0)}" + ("（急減）" if i in drops else ""), i in drops)
                   for i, r in enumerate(runs) if r.result == "ok" and r.size]
    time_points = [Point(r.when, float(r.seconds or 0), f"{r.when:%Y-%m-%d %H:%M} {r.file}: "
                         f"{seconds_text(float(r.seconds or 0))}") for r in good if r.seconds is not None]
    drill_points = []
    for line in drills:
        when = parse_time(line.get("time"))
        if when is not None:
            seconds = float(line.get("duration_seconds") or 0)
            drill_points.append(Point(when, seconds, f"{when:%Y-%m-%d %H:%M} {line.get('result')}: "
                                      f"{seconds_text(seconds)}", line.get("result") != "ok"))

    last_drill = drills[-1] if drills else None
    cards = [
        ("最新のバックアップ", f"{good[-1].when:%Y-%m-%d %H:%M}" if good else "なし",
         f"{human_size(good[-1].size or 0)}・{seconds_text(float(good[-1].seconds or 0))}" if good else ""),
        ("成功したバックアップ", f"{len(good)} 回", f"失敗 {len(runs) - len(good)} 回"),
        ("最後の復元訓練", (f"{last_drill.get('result')}・"
                      f"{seconds_text(float(last_drill.get('duration_seconds') or 0))}"
                      if last_drill else "なし"),
         when_text(last_drill.get("time")) if last_drill else "invoke verify --restore-test"),
    ]
    card_html = "".join(f'<div class="card"><span class="muted">{esc(t)}</span><b>{esc(v)}</b>'
                        f'<span class="muted">{esc(sub)}</span></div>' for t, v, sub in cards)

    drill_cells, drill_bad = [], []
    for line in reversed(drills[-30:]):
        drill_cells.append([
            f"<td>{esc(when_text(line.get('time')))}</td>",
            f"<td>{esc(Path(str(line.get('file') or '')).name)}</td>",
            f"<td class=num>{esc(seconds_text(float(line.get('duration_seconds') or 0)))}</td>",
            f"<td class=num>{line.get('tables_compared', 0)} / {line.get('rows_compared', 0)}</td>",
            f"<td>{esc(str(line.get('result')))} {esc(str(line.get('error') or ''))}</td>",
        ])
        drill_bad.append(line.get("result") != "ok")
    backup_cells, backup_bad = [], []
    index_of = {id(r): i for i, r in enumerate(runs)}
    for r in reversed(runs[-30:]):
        dropped = index_of[id(r)] in drops
        backup_cells.append([
            f"<td>{r.when:%Y-%m-%d %H:%M}</td>", f"<td>{esc(r.file)}</td>",
            f"<td class=num>{esc(human_size(r.size)) if r.size else '-'}</td>",
            f"<td class=num>{esc(seconds_text(float(r.seconds))) if r.seconds is not None else '-'}</td>",
            f"<td>{esc(r.result)}{' 急減' if dropped else ''}"
            f"{(' ' + esc(r.error)) if r.error else ''}</td>",
        ])
        backup_bad.append(r.result != "ok" or dropped)
    drop_note = ""
    if drops:
        names = ", ".join(esc(runs[i].file) for i in sorted(drops))
        drop_note = (f'<p class="badge none">サイズが急に減ったバックアップ: {names}'
                     "（データが消えた・別の DB を取った可能性。中身を確認するまで信用しない）</p>")

    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgrunbook レポート {esc(settings.env)}</title><style>{STYLE}</style></head>
<body>
<h1>バックアップ・復元訓練のレポート（env={esc(settings.env)}）</h1>
<div class="muted">DB {esc(settings.db_name)}・作成 {now:%Y-%m-%d %H:%M}・\
作業ログ {esc(str(settings.worklog_path))}</div>
<p class="badge {badge}">{esc(fresh.line)}</p>
<div class="cards">{card_html}</div>
{drop_note}
<h2>バックアップのサイズ</h2>
{svg_chart(size_points, lambda v: human_size(v), "成功したバックアップの記録がありません")}
<h2>バックアップの所要時間</h2>
{svg_chart(time_points, seconds_text, "成功したバックアップの記録がありません")}
<h2>復元訓練（verify --restore-test）の復旧時間</h2>
{svg_chart(drill_points, seconds_text, "復元訓練の記録がありません（invoke verify --restore-test）")}
<table><tr><th>日時</th><th>ファイル</th><th>復旧時間</th><th>照合（テーブル / 行）</th><th>結果</th></tr>
{_rows(drill_cells, drill_bad)}</table>
<h2>バックアップの履歴（新しい順、最大 30 件）</h2>
<table><tr><th>日時</th><th>ファイル</th><th>サイズ</th><th>所要時間</th><th>結果</th></tr>
{_rows(backup_cells, backup_bad)}</table>
<p class="muted">pgrunbook が作業ログ（worklog.jsonl）とマニフェストから作成。\
外部のファイルは読み込みません。</p>
</body></html>
"""


def write_report(settings: Settings, target: Path | None = None, now: datetime | None = None) -> Path:
    """Write the page atomically (a reader never sees half of it); return its path."""
    if target is None:
        ensure_private_dir(settings.backup_dir)
        target = settings.backup_dir / f"report-{settings.env}.html"
    elif not target.parent.is_dir():
        raise RunbookError(f"出力先のディレクトリ {target.parent} がありません",
                           "--output に既存のディレクトリの中のパスを指定")
    text = render(settings, now)
    write_private(target, text)
    return target
