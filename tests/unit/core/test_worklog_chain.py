"""Pure logic of issue 12: the drift comparison, the work log's hash chain, pins and labels,
and the retention policy's distrust of suspect backups."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from pgrunbook.core import worklog


def test_chain_detects_an_edited_deleted_or_inserted_line(tmp_path):
    log = tmp_path / "worklog.jsonl"
    for number in range(6):
        worklog.append(log, {"task": "backup", "n": number, "result": "ok", "note": "日本語"})
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained == 1 and report.lines == 6
    lines = log.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line)["hash"] for line in lines)

    edited = list(lines)
    edited[2] = edited[2].replace('"n": 2', '"n": 7')  # one character
    assert worklog.check_chain(edited).broken_line == 3
    assert "書き換え" in worklog.check_chain(edited).reason
    assert worklog.check_chain(lines[:3] + lines[4:]).broken_line == 4  # line 4 deleted
    forged = json.dumps({"task": "verify", "result": "ok"}, ensure_ascii=False)
    assert worklog.check_chain(lines[:4] + [forged] + lines[4:]).broken_line == 5
    rehashed = worklog.chained_line({"task": "verify", "result": "ok"}, lines[3])
    assert worklog.check_chain(lines[:4] + [rehashed] + lines[4:]).broken_line == 6  # next link breaks

    log.write_text("\n".join(edited) + "\n", encoding="utf-8")
    records, trusted = worklog.read_trusted(log)
    assert [r["n"] for r in records] == [0, 1] and trusted.broken_line == 3
    assert len(worklog.read(log)) == 6  # display still shows everything


def test_old_logs_without_hashes_still_load_and_the_chain_starts_after_them(tmp_path):
    log = tmp_path / "worklog.jsonl"
    old = [json.dumps({"task": "backup", "n": n, "result": "ok"}) for n in range(3)]
    log.write_text("\n".join(old) + "\n", encoding="utf-8")
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained is None and "旧形式" in report.describe()
    worklog.append(log, {"task": "verify", "result": "ok"})
    worklog.append(log, {"task": "prune", "result": "ok"})
    report = worklog.verify_chain(log)
    assert report.intact and report.first_chained == 4 and report.unchained == 3
    assert "1〜3 行目は旧形式" in report.describe() and "4 行目から" in report.describe()
    assert [r["task"] for r in worklog.read_trusted(log)[0]] == ["backup"] * 3 + ["verify", "prune"]
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"n": 2', '"n": 9')  # the last old line is tied to the chain
    assert worklog.check_chain(lines).broken_line == 4


def test_a_line_cut_by_a_crash_breaks_the_chain_but_new_lines_stay_whole(tmp_path):
    log = tmp_path / "worklog.jsonl"
    worklog.append(log, {"task": "backup", "result": "ok"})
    with open(log, "a", encoding="utf-8") as handle:
        handle.write('{"task": "ba')  # a crash in the middle of a write
    worklog.append(log, {"task": "verify", "result": "ok"})
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["task"] == "verify"
    assert worklog.verify_chain(log).broken_line == 2


def _append_many(path: str, writer: int) -> None:
    for number in range(40):
        worklog.append(Path(path), {"task": "status", "writer": writer, "n": number})


def test_concurrent_writers_form_one_unbroken_chain(tmp_path):
    log = tmp_path / "worklog.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(str(log), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(30)
        assert process.exitcode == 0
    report = worklog.verify_chain(log)
    assert report.lines == 160 and report.intact, report
