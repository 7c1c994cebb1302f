"""The evidence file as HTML: self-contained, Japanese, printable on A4 (issue 25).

No outside request of any kind: CSS inline, the one chart as inline SVG
(``report.svg_chart``), no script, no font, no image. The print CSS sets A4
pages with their margins, keeps the colours of the calendar (browsers drop
backgrounds when printing unless told), keeps table rows whole and repeats
table headers on each page. Every status of the calendar has its symbol
too, so that a black-and-white copy still reads.

The page carries, in ``<meta name="pgrunbook-…">``, the env, the period and the
work log's head when it was made: ``evidence-verify`` compares them with the log.
"""

from __future__ import annotations

import calendar
import html
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from pgrunbook.core.console import human_size
from pgrunbook.core.durations import describe_age
from pgrunbook.monitoring.evidence_facts import Day, Evidence
from pgrunbook.monitoring.report import STYLE, Point, seconds_text, svg_chart, when_text

esc = html.escape

# status -> (symbol, Japanese)
STATUS = {
    "verified": ("✓", "検証済みのバックアップあり"),
    "taken": ("○", "バックアップあり（未検証）"),
    "suspect": ("!", "疑わしいバックアップ（内容の急変。未承認）"),
    "failed": ("×", "バックアップ失敗のみ"),
    "none": ("", "バックアップなし"),
}
RESULTS = {"ok": "成功", "failed": "失敗", "refused": "拒否", "interrupted": "中断", "suspect": "疑わしい"}
TASK_NAMES = {"restore-replace": "置き換え", "restore-rollback": "ロールバック",
              "restore-partial": "部分リストア",
              "restore-partial-undo": "部分リストアの取り消し", "restore-recover": "中断の修復"}

EVIDENCE_STYLE = """
body{max-width:980px}
h1{font-size:1.35em}
.meta-line{color:#556;font-size:13px;margin:2px 0}
section{margin-top:22px}
.cards .card{flex:1 1 170px}
table.calendar{width:auto;border-collapse:separate;border-spacing:2px;font-size:11px}
table.calendar th{font-weight:600;padding:0 4px;text-align:right;color:#556;border:0}
table.calendar td{width:17px;height:17px;padding:0;text-align:center;border:0;border-radius:3px;
font-weight:700;line-height:17px}
td.d-verified{background:#43a047;color:#fff}td.d-taken{background:#c5e1a5;color:#1b5e20}
td.d-suspect{background:#ffb300;color:#3e2723}td.d-failed{background:#e53935;color:#fff}
td.d-none{background:#eceff1;color:#90a4ae}td.d-out{background:transparent}
td.drill{outline:2px solid #1a237e;outline-offset:-2px}
.legend span.item{white-space:nowrap;display:inline-block}
.legend span.key{display:inline-block;width:15px;height:15px;border-radius:3px;text-align:center;
font-weight:700;font-size:11px;line-height:15px;margin:0 4px 0 12px;vertical-align:middle}
.hash{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.alarm{background:#fde2e1;color:#8a1c16;padding:8px 10px;border-radius:6px;font-weight:600}
.fine{background:#e3f5e6;color:#145c23;padding:8px 10px;border-radius:6px;font-weight:600}
dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;font-size:13px}
dl.settings dt{font-weight:600;color:#445}dl.settings dd{margin:0}
* {-webkit-print-color-adjust:exact;print-color-adjust:exact}
@page{size:A4;margin:14mm 12mm}
@media print{
body{max-width:none;margin:0;padding:0;font-size:10pt}
section{break-inside:auto}h2{break-after:avoid}
tr,.card,svg.chart,table.calendar{break-inside:avoid}
thead{display:table-header-group}
.cards{gap:6px}.card{padding:6px}
}
"""


def _table(headers: list[str], rows: Iterable[tuple[list[str], bool]], empty: str, table_id: str) -> str:
    """Rows of escaped cells (each given as ready HTML); a bad row shows red."""
    body = "".join(f'<tr class="{"bad" if bad else ""}">' + "".join(f"<td>{cell}</td>" for cell in cells)
                   + "</tr>" for cells, bad in rows)
    if not body:
        return f'<p class="muted" id="{table_id}-empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _result(value: Any) -> str:
    return esc(RESULTS.get(str(value), str(value)))


def _date(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d}" if moment else "—"


# ---- the sections --------------------------------------------------------------------


def _cards(ev: Evidence) -> str:
    total = len(ev.days)
    verified = sum(1 for d in ev.days if d.status == "verified")
    longest = max(((last - first).days + 1 for first, last in ev.gaps), default=0)
    passed = [row for row in ev.drills if row.result == "ok"]
    rpo = max((row.backup_age for row in passed if row.backup_age is not None), default=None)
    cards = [
        ("期間の日数", f"{total} 日", ev.period.text),
        ("検証済みのバックアップがある日", f"{verified} 日", f"ない日 {total - verified} 日"),
        ("バックアップのない期間", f"{len(ev.gaps)} 件", f"最長 {longest} 日" if ev.gaps else "なし"),
        ("疑わしいバックアップの日", f"{sum(1 for d in ev.days if d.suspect)} 日", "内容の急変（未承認）"),
        ("復元訓練", f"{len(passed)} / {len(ev.drills)} 回成功",
         (f"最長の復旧 {seconds_text(max(r.seconds for r in passed))}・最大の古さ "
          f"{describe_age(rpo) if rpo is not None else '—'}") if passed else "成功した訓練なし"),
        ("作業ログの鎖", "途切れていません" if ev.chain.intact else "改ざんの疑い",
         f"{ev.chain.lines} 行"),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="muted">{esc(t)}</span><b>{esc(v)}</b>'
        f'<span class="muted">{esc(sub)}</span></div>' for t, v, sub in cards) + "</div>"


def _months(days: list[Day]) -> list[tuple[int, int]]:
    return list(dict.fromkeys((d.day.year, d.day.month) for d in days))


def _calendar(ev: Evidence) -> str:
    by_day = {d.day: d for d in ev.days}
    rows = []
    for year, month in _months(ev.days):
        cells = []
        for number in range(1, 32):
            if number > calendar.monthrange(year, month)[1] or date(year, month, number) not in by_day:
                cells.append('<td class="d-out"></td>')
                continue
            day = by_day[date(year, month, number)]
            symbol, meaning = STATUS[day.status]
            notes = [meaning, *day.notes()]
            drilled = " drill" if day.drills_ok or day.drills_failed else ""
            title = f"{day.day.isoformat()}: " + "・".join(notes)
            cells.append(f'<td class="d-{day.status}{drilled}" data-day="{day.day.isoformat()}" '
                         f'title="{esc(title)}">{symbol}</td>')
        rows.append(f"<tr><th>{year}-{month:02d}</th>{''.join(cells)}</tr>")
    head = "<tr><th></th>" + "".join(f"<th>{n}</th>" for n in range(1, 32)) + "</tr>"
    legend = "".join(f'<span class="item"><span class="key d-{key}">{symbol}</span>{esc(text)}</span>'
                     for key, (symbol, text) in STATUS.items())
    legend += '<span class="item"><span class="key d-none drill"></span>枠: 復元訓練の日</span>'
    return (f'<table class="calendar" id="calendar"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            f'<p class="legend muted">{legend}</p>')


def _gap_list(ev: Evidence) -> str:
    if not ev.gaps:
        return '<p class="fine" id="gaps">期間中、バックアップのない日はありません</p>'
    items = "".join(f"<li>{first.isoformat()}" + (f"〜{last.isoformat()}" if last != first else "")
                    + f"（{(last - first).days + 1} 日）</li>" for first, last in ev.gaps)
    without = sum(1 for d in ev.days if d.status != "verified")
    return (f'<p>検証済みのバックアップがない日: <b id="days-without">{without}</b> 日'
            f"（うちバックアップ自体がない日 {sum(1 for d in ev.days if not d.backups)} 日）。"
            f"バックアップのない期間:</p><ul id=\"gaps\">{items}</ul>")


def _notable(ev: Evidence) -> str:
    rows = [([day.day.isoformat(), esc("、".join(day.notes(passed_drills=False)))], True)
            for day in ev.days if day.notes(passed_drills=False)]
    return _table(["日", "内容"], rows, "疑わしい・失敗した日はありません", "notable")


def _drills(ev: Evidence) -> str:
    rows = [([esc(f"{r.when:%Y-%m-%d %H:%M}"), esc(r.file), esc(seconds_text(r.seconds)),
              esc(describe_age(r.backup_age)) if r.backup_age is not None else "—",
              f"{r.tables} / {r.rows}", _result(r.result) + (f" {esc(r.error)}" if r.error else "")],
             r.result != "ok") for r in ev.drills]
    points = [Point(r.when, r.seconds, f"{r.when:%Y-%m-%d %H:%M} {r.file}: {seconds_text(r.seconds)}",
                    r.result != "ok") for r in ev.drills]
    chart = svg_chart(points, seconds_text, "期間中の復元訓練の記録がありません") if points else ""
    return chart + _table(["日時", "バックアップ", "復旧時間（RTO）", "バックアップの古さ（RPO）",
                           "照合（テーブル / 行）", "結果"], rows,
                          "期間中の復元訓練の記録がありません（invoke verify --restore-test）", "drills")


def _changes(ev: Evidence) -> str:
    rows = [([esc(f"{r.when:%Y-%m-%d %H:%M}"), esc(TASK_NAMES.get(r.task, r.task)), esc(r.who),
              esc(r.approved_by or "—"), esc(r.what),
              _result(r.result) + (f" {esc(r.error)}" if r.error else "")],
             r.result != "ok") for r in ev.changes]
    return _table(["日時", "作業", "実行者", "承認者", "内容", "結果"], rows,
                  "期間中の置き換え・部分リストア・ロールバックはありません", "changes")


def _lock(copy: Any) -> str:
    if copy is None:
        return "—"
    if copy.retain_until is None:
        return "ロックなし" + ("（リーガルホールド中）" if copy.legal_hold else "")
    return (f"{copy.lock_mode or '?'} {copy.retain_until.astimezone():%Y-%m-%d} まで"
            + ("、リーガルホールド中" if copy.legal_hold else ""))


def _pins(ev: Evidence) -> str:
    rows = []
    for pin in ev.pins:
        offsite = "—（バケットなし）" if ev.bucket is None else (
            esc(pin.offsite.key) if pin.offsite else "なし（オフサイトにありません）")
        covered = "" if pin.offsite is None or pin.lock_covers else "（固定の期限より前にロックが切れます）"
        rows.append(([esc(pin.name), esc(pin.label or "—"), esc(pin.keep_until),
                      f'<span class="hash">{esc(pin.sha256) or "—"}</span>', esc(pin.local), offsite,
                      esc(_lock(pin.offsite)) + esc(covered)],
                     (pin.local.startswith("なし") and pin.offsite is None) or bool(covered)))
    return _table(["バックアップ", "ラベル", "保管期限", "sha256", "このサーバー", "オフサイト",
                   "オブジェクトロック（バケットの値）"], rows, "固定したバックアップはありません", "pins")


def _offsite(ev: Evidence) -> str:
    if ev.bucket is None:
        return '<p class="muted" id="offsite-empty">オフサイト（OFFSITE_BUCKET）は設定されていません</p>'
    rows = [([esc(f"{c.created:%Y-%m-%d %H:%M}"), esc(c.name), esc(human_size(c.size)) if c.size else "—",
              f'<span class="hash">{esc((c.sha256 or "—")[:16])}…</span>', esc(_lock(c)),
              esc(c.keep_until or "—")], False) for c in ev.bucket.copies]
    return (f"<p>{esc(ev.bucket.location)}（バケットから読んだ値）</p>"
            + _table(["作成", "バックアップ", "サイズ（平文）", "sha256", "オブジェクトロック", "固定"], rows,
                     "オフサイトのコピーはありません", "offsite"))


def _drill_line(record: dict[str, Any] | None, what: str) -> str:
    if record is None:
        return f"{what}: 記録なし"
    result = RESULTS.get(str(record.get("result")), record.get("result"))
    text = f"{what}: {when_text(record.get('time'))} {result}"
    return text + (f"（{record.get('error')}）" if record.get("error") else "")


def _keys_and_pitr(ev: Evidence) -> str:
    last_key = ev.key_drills[-1] if ev.key_drills else None
    last_pitr = ev.pitr_drills[-1] if ev.pitr_drills else None
    parts = [f'<p id="last-key-drill">{esc(_drill_line(last_key, "最後の鍵の訓練"))}'
             + (f"（{esc(str(last_key.get('file')))}、鍵 {esc(str(last_key.get('recipient_fingerprint')))}）"
                if last_key and last_key.get("result") == "ok" else "") + "</p>"]
    if ev.key_drill_state is not None:
        css = "fine" if ev.key_drill_state.ok else "alarm"
        parts.append(f'<p class="{css}">{esc(ev.key_drill_state.text)}</p>')
    parts.append(f'<p id="last-pitr-drill">{esc(_drill_line(last_pitr, "最後の PITR 訓練"))}'
                 + (f"（{esc(str(last_pitr.get('total_seconds')))} 秒、テーブル {last_pitr.get('tables')}）"
                    if last_pitr and last_pitr.get("result") == "ok" else "") + "</p>")
    in_period = [r for r in ev.key_drills + ev.pitr_drills
                 if ev.period.first.isoformat() <= str(r.get("time"))[:10] <= ev.period.last.isoformat()]
    rows = [([esc(when_text(r.get("time"))), "鍵" if r.get("task") == "key-drill" else "PITR",
              esc(str(r.get("file") or r.get("stanza") or "")), _result(r.get("result"))
              + (f" {esc(str(r.get('error')))}" if r.get("error") else "")], r.get("result") != "ok")
            for r in sorted(in_period, key=lambda r: str(r.get("time")))]
    return "".join(parts) + _table(["日時", "訓練", "対象", "結果"], rows, "期間中の訓練の記録はありません",
                                   "other-drills")


def _chain(ev: Evidence) -> str:
    css = "fine" if ev.chain.intact else "alarm"
    left = (f'<p class="alarm">改ざんの疑いのある {ev.chain.broken_line} 行目以降の {ev.left_out} 行は、'
            "この証跡に使っていません</p>") if ev.left_out else ""
    return (f'<p class="{css}" id="chain-state">{esc(ev.chain.describe())}</p>{left}'
            f'<p>作業ログ {esc(str(ev.settings.worklog_path))} の先頭'
            f'（最後の行のハッシュ、{ev.chain.lines} 行）:</p>'
            f'<p class="hash" id="chain-head">{esc(ev.chain_head)}</p>'
            '<p class="muted">この証跡ファイルの sha256 と上の値は、'
            '作成時に作業ログの evidence 行に記録しました。'
            f"確かめ方: invoke evidence-verify --env={esc(ev.settings.env)} &lt;このファイル&gt;</p>")


def _settings(ev: Evidence) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in ev.settings_rows)
    return f'<dl class="settings" id="settings">{rows}</dl>'


def render(ev: Evidence) -> str:
    s = ev.settings
    sections = [
        ("days", "日ごとの記録", _calendar(ev) + _gap_list(ev) + _notable(ev)),
        ("restore-drills", "復元訓練（復旧時間と、戻したバックアップの古さ）", _drills(ev)),
        ("live-changes", "置き換え・部分リストア・ロールバック", _changes(ev)),
        ("pinned", "固定したコピー（年度締め・リリース前）", _pins(ev)),
        ("offsite-copies", "オフサイトのコピー", _offsite(ev)),
        ("key-and-pitr", "鍵の訓練・PITR の訓練", _keys_and_pitr(ev)),
        ("worklog", "作業ログ（ハッシュの鎖）", _chain(ev)),
        ("configuration", "設定の要約（秘密の値は載せません）", _settings(ev)),
    ]
    body = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="pgrunbook-env" content="{esc(s.env)}">
<meta name="pgrunbook-period" content="{ev.period.first.isoformat()}/{ev.period.last.isoformat()}">
<meta name="pgrunbook-chain-head" content="{esc(ev.chain_head)}">
<meta name="pgrunbook-chain-lines" content="{ev.chain.lines}">
<title>バックアップの監査証跡 {esc(s.env)} {esc(ev.period.text)}</title>
<style>{STYLE}{EVIDENCE_STYLE}</style></head>
<body>
<h1>バックアップ・リストアの監査証跡（env={esc(s.env)}）</h1>
<p class="meta-line">期間 <b id="period">{esc(ev.period.text)}</b>・DB {esc(s.db_name)}・\
作成 {ev.made:%Y-%m-%d %H:%M}（{esc(ev.made_by)}）</p>
<p class="meta-line">作業ログ・マニフェスト・バケットから pgrunbook が作成。\
外部のファイルは読み込みません。</p>
{_cards(ev)}
{body}
</body></html>
"""
