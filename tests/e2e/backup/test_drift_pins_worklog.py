"""Issue 12 through the real CLI and a real engine: a backup of an emptied or recreated
database is suspect, retention never trusts it, pinned backups survive prune, and an
edited work log is found."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import PASSWORD, Cli, at, last_line, make_backup, start_postgres
from pgrunbook.core import worklog
from pgrunbook.store import drift


def log_records(folder: Path) -> list[dict]:
    path = folder / "worklog.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def manifest_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))


def notifier(tmp_path: Path) -> tuple[str, Path]:
    """A NOTIFY_COMMAND that appends each message it gets to a file."""
    received = tmp_path / "notified.jsonl"
    script = tmp_path / "notify.py"
    script.write_text("import sys\n"
                      f"with open({str(received)!r}, 'ab') as out:\n"
                      "    out.write(sys.stdin.buffer.read() + b'\\n')\n")
    return f"{sys.executable} {script}", received


@pytest.fixture
def own_database(pg):
    """A sample database of this test only (it gets truncated)."""
    name = f"drift_{uuid.uuid4().hex[:8]}"
    pg.create_database(name, sample=True)
    yield name
    pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', "postgres")


def test_backup_after_a_truncate_is_suspect_warns_notifies_and_can_be_accepted(tmp_path, pg,
                                                                              own_database):
    cli = Cli(tmp_path)
    command, received = notifier(tmp_path)
    cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=own_database, DB_PASSWORD=PASSWORD,
                  NOTIFY_COMMAND=command)
    first = cli("backup", "--env=prod", "--label=fy2025-close", "--keep=10y")
    assert first.returncode == 0, first.stderr
    first_path = Path(last_line(first.stdout))
    assert first_path.name.endswith("-fy2025-close.dump")
    manifest = manifest_of(first_path)
    assert manifest["label"] == "fy2025-close" and manifest["suspect"] is False
    assert manifest["keep_until"] == (datetime.now().date().replace(year=datetime.now().year + 10)
                                      .isoformat())
    assert manifest["drift"]["status"] == "first"
    assert manifest["identity"]["system_identifier"].isdigit()
    assert manifest["identity"]["database_oid"].isdigit()
    assert cli("verify", "--env=prod").returncode == 0

    pg.psql("TRUNCATE audit.audit_log", own_database)
    second = cli("backup", "--env=prod")
    assert second.returncode == drift.SUSPECT_EXIT_CODE == 3, second.stderr
    second_path = Path(last_line(second.stdout))
    assert second_path.is_file() and second_path != first_path  # kept, never half-done
    assert "疑わしい" in second.stderr and first_path.name in second.stderr
    assert "audit.audit_log: 900 行 → 0 行（100% 減、上限 50%）" in second.stderr
    assert f"invoke accept-drift --env=prod --file={second_path.name}" in second.stderr
    marked = manifest_of(second_path)
    assert marked["suspect"] is True and marked["drift"]["compared_with"] == first_path.name
    assert marked["drift"]["findings"][0]["table"] == "audit.audit_log"

    backup_line = [r for r in log_records(second_path.parent) if r["task"] == "backup"][-1]
    assert backup_line["result"] == "suspect" and backup_line["file"] == str(second_path)
    assert "audit.audit_log: 900 行 → 0 行" in backup_line["suspect_reasons"][0]
    messages = [json.loads(line) for line in received.read_text().splitlines()]
    assert [m["result"] for m in messages] == ["suspect"]  # the good one stayed quiet
    assert "要確認" in messages[0]["summary"] and "audit.audit_log" in messages[0]["summary"]

    status = cli("status", "--env=prod")
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stdout.startswith("WARNING env=prod") and second_path.name in status.stdout
    listing = cli("list", "--env=prod")
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.stdout.splitlines()}
    assert rows[second_path.name][-1] == "疑わしい"
    assert rows[first_path.name][-3:-1] == ["fy2025-close", manifest["keep_until"]]

    no_reason = cli("accept-drift", "--env=prod", f"--file={second_path.name}")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    not_suspect = cli("accept-drift", "--env=prod", f"--file={first_path.name}", "--reason=x")
    assert not_suspect.returncode == 1 and "疑わしいバックアップではありません" in not_suspect.stderr
    accepted = cli("accept-drift", "--env=prod", f"--file={second_path.name}",
                   "--reason=監査ログを外部に移した（#123）")
    assert accepted.returncode == 0, accepted.stderr
    after = manifest_of(second_path)
    assert after["suspect"] is False and after["drift"]["accepted"]["reason"] == "監査ログを外部に移した（#123）"
    line = log_records(second_path.parent)[-1]
    assert line["task"] == "accept-drift" and line["result"] == "ok" and line["operator"]
    assert line["reason"] == "監査ログを外部に移した（#123）"

    third = cli("backup", "--env=prod")  # compared with the accepted one now
    assert third.returncode == 0, third.stderr
    assert manifest_of(Path(last_line(third.stdout)))["drift"]["compared_with"] == second_path.name
    assert cli("status", "--env=prod").returncode == 0
    assert worklog.verify_chain(second_path.parent / "worklog.jsonl").intact


def test_a_recreated_container_is_a_different_database(tmp_path, docker_engine):
    name = f"pgrunbook-test-drift12-{uuid.uuid4().hex[:8]}"
    server = start_postgres(docker_engine, name)
    try:
        server.create_database("app", sample=True)
        cli = Cli(tmp_path)
        cli.write_env("prod", DB_CONTAINER=name, DB_NAME="app", DB_PASSWORD=PASSWORD)
        good = cli("backup", "--env=prod")
        assert good.returncode == 0, good.stderr

        server.container.remove(force=True, v=True)  # the volume is gone with it
        server = start_postgres(docker_engine, name)  # same image, same name, empty "app"
        recreated = cli("backup", "--env=prod")
        assert recreated.returncode == 3, recreated.stderr
        assert "別のデータベースです: クラスタのシステム識別子" in recreated.stderr
        findings = manifest_of(Path(last_line(recreated.stdout)))["drift"]["findings"]
        assert findings[0]["kind"] == drift.IDENTITY
        assert {f["kind"] for f in findings} >= {drift.TABLE_MISSING, drift.NEARLY_EMPTY}
    finally:
        server.container.remove(force=True, v=True)


def test_a_move_to_a_new_cluster_made_by_the_kits_replace_is_not_suspect(tmp_path, pg, docker_engine):
    """The runbook's way to move majors or hosts: back up on the old server, restore-replace
    on the new one. The next backup is of another cluster, but the kit made it so and
    logged the identity it swapped in: not suspect (the counts are still compared)."""
    name = f"pgrunbook-test-move-{uuid.uuid4().hex[:8]}"
    source = f"move_{uuid.uuid4().hex[:8]}"
    pg.create_database(source, sample=True)
    new = start_postgres(docker_engine, name)
    try:
        cli = Cli(tmp_path)
        cli.write_env("prod", DB_CONTAINER=pg.name, DB_NAME=source, DB_PASSWORD=PASSWORD)
        old = cli("backup", "--env=prod")
        assert old.returncode == 0, old.stderr
        new.create_database(source, sample=False)  # the new server's own empty database
        cli.write_env("prod", DB_CONTAINER=name, DB_NAME=source, DB_PASSWORD=PASSWORD)
        replaced = cli("restore-replace", "--env=prod", f"--file={last_line(old.stdout)}", "--confirm=prod")
        assert replaced.returncode == 0, replaced.stderr
        moved = cli("backup", "--env=prod")
        assert moved.returncode == 0, moved.stderr
        block = manifest_of(Path(last_line(moved.stdout)))["drift"]
        assert block["status"] == "ok" and block["identity_change_explained_by"].startswith("restore-replace")

        # another cluster the kit did not swap in is still a different database
        new.container.remove(force=True, v=True)
        new = start_postgres(docker_engine, name)
        new.create_database(source, sample=True)
        recreated = cli("backup", "--env=prod")
        assert recreated.returncode == 3 and "システム識別子" in recreated.stderr, recreated.stderr
    finally:
        new.container.remove(force=True, v=True)
        pg.psql(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)', "postgres")


def test_forty_days_of_backups_of_a_database_emptied_on_day_10_keep_day_9(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db-not-needed", RETENTION_DAYS="30",
                  RETENTION_WEEKLY_DAYS="0", RETENTION_MONTHLY_DAYS="0", RETENTION_MIN_KEEP="3")
    folder = cli.backup_dir("prod")
    identity = {"system_identifier": "7311111111111111111", "database_oid": "16384"}
    full = [{"schema": "accounting", "name": "journal_entries", "rows": 600},
            {"schema": "audit", "name": "audit_log", "rows": 900}]
    empty = [{**table, "rows": 0} for table in full]
    # day 40 at 03:00 must be within the last 24 hours: not in the future (before 03:00, the day
    # before), and day 11 (29 days earlier) must still be inside the 30 days kept
    today = datetime.now() - timedelta(hours=3)
    names: dict[int, str] = {}
    previous = None
    for day in range(1, 41):  # day 40 is today
        name = make_backup(folder, at(today - timedelta(days=40 - day)))
        tables = full if day < 10 else empty
        manifest_path = folder / f"{name}.json"
        manifest = json.loads(manifest_path.read_text())
        block = drift.assess(previous, tables, identity, drift.Thresholds())
        manifest.update(tables=tables, identity=identity, drift=block,
                        suspect=block["status"] == "suspect")
        manifest_path.write_text(json.dumps(manifest))
        if not manifest["suspect"]:
            previous = (name, manifest)
        worklog.append(folder / "worklog.jsonl", {
            "task": "verify", "env": "prod", "file": str(folder / name), "result": "ok",
            "sha256": manifest["sha256"], "time": at(today - timedelta(days=40 - day)).isoformat()})
        names[day] = name
    assert [day for day in names if manifest_of(folder / names[day])["suspect"]] == list(range(10, 41))

    result = cli("prune", "--env=prod")
    assert result.returncode == 0, result.stderr
    left = {p.name for p in folder.iterdir()}
    for day in (7, 8, 9):  # the three newest trusted backups, whatever their age
        assert names[day] in left, day
    kept = {line.split("\t")[1]: line.split("\t")[2] for line in result.stdout.splitlines()
            if line.startswith("保持")}
    assert "これより新しいものは疑わしいものだけ" in kept[names[9]]
    for day in range(1, 7):
        assert names[day] not in left, day
    for day in range(11, 41):  # suspect, but recent: kept for a person to look at
        assert names[day] in left, day
    assert cli("status", "--env=prod", "--max-age=1000d").returncode == 3
    make_backup(folder, datetime.now(), "plain")  # a newer good SQL dump hides nothing
    assert cli("status", "--env=prod", "--max-age=1000d").returncode == 3


def test_pinned_backup_survives_prune_until_unpinned(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db-not-needed", RETENTION_DAYS="10",
                  RETENTION_WEEKLY_DAYS="0", RETENTION_MONTHLY_DAYS="0", RETENTION_MIN_KEEP="1")
    folder = cli.backup_dir("prod")
    now = datetime.now()
    old = make_backup(folder, at(now - timedelta(days=800)))
    make_backup(folder, at(now - timedelta(days=1)))

    bad = cli("pin", "--env=prod", f"--file={old}", "--keep=forever")
    assert bad.returncode == 2 and "--keep=10y" in bad.stderr
    pinned = cli("pin", "--env=prod", f"--file={old}", "--keep=7y", "--label=release-2026-04")
    assert pinned.returncode == 0, pinned.stderr
    until = manifest_of(folder / old)["keep_until"]
    assert until == now.date().replace(year=now.year + 7).isoformat()
    pruned = cli("prune", "--env=prod")
    assert pruned.returncode == 0, pruned.stderr
    assert (folder / old).exists()
    assert f"保持\t{old}\t固定（{until} まで）" in pruned.stdout
    listing = cli("list", "--env=prod")
    assert [line for line in listing.stdout.splitlines() if line.startswith(old)][0].split("\t")[-3:] == \
        ["release-2026-04", until, "-"]

    assert cli("unpin", "--env=prod", f"--file={old}").returncode == 0
    again = cli("unpin", "--env=prod", f"--file={old}")
    assert again.returncode == 1 and "固定されていません" in again.stderr
    assert cli("prune", "--env=prod").returncode == 0
    assert not (folder / old).exists()
    tasks = [r["task"] for r in log_records(folder)]
    assert tasks.count("pin") == 1 and tasks.count("unpin") == 2


def test_an_edited_work_log_line_is_named_and_status_warns(cli):
    assert cli("backup", "--env=prod").returncode == 0
    for _ in range(3):
        assert cli("verify", "--env=prod").returncode == 0
    log = cli.backup_dir("prod") / "worklog.jsonl"
    intact = cli("worklog-verify", "--env=prod")
    assert intact.returncode == 0 and "4 行の鎖は途切れていません" in intact.stdout
    lines = log.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"result": "ok"', '"result": "oK"', 1)  # one character
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")

    checked = cli("worklog-verify", "--env=prod")
    assert checked.returncode == 1
    assert "作業ログの 3 行目で改ざんの疑い" in checked.stderr and "Traceback" not in checked.stderr
    status = cli("status", "--env=prod")
    assert status.returncode == 4, status.stdout + status.stderr
    assert status.stdout.startswith("WARNING env=prod") and "3 行目" in status.stdout


def test_a_forged_verify_line_never_makes_a_backup_verified(cli):
    made = cli("backup", "--env=prod")
    assert made.returncode == 0
    path = Path(last_line(made.stdout))
    sha256 = manifest_of(path)["sha256"]
    log = cli.backup_dir("prod") / "worklog.jsonl"
    with open(log, "a", encoding="utf-8") as handle:  # appended by hand, without the chain
        handle.write(json.dumps({"task": "verify", "env": "prod", "file": str(path),
                                 "sha256": sha256, "result": "ok", "time": "2026-01-01"}) + "\n")
    status = cli("status", "--env=prod")
    assert status.returncode == 2 and status.stdout.startswith("CRITICAL"), status.stdout
    assert "2 行目で改ざんの疑い" in status.stdout
    assert cli("worklog-verify", "--env=prod").returncode == 1
