"""Where an empty answer decided wrongly: each call site of the replace path whose
lost answer once read as "nothing", hit through the engine's lost-output seam
(infra/container.py, the ``lost_outputs`` fixture).

Each test aims the seam at exactly that answer (PGRUNBOOK_TEST_DROP_MATCH and
_NTH): once, where the point is that the answer is asked again and the decision
is the one made without the seam; every try, where the point is the final
refusal: one line naming the lost answer, nothing changed, no traceback.
tests/e2e/infra/test_lost_outputs.py covers the facts, database_exists, df and a
wholly lost swap verdict; test_lost_outputs_flows.py drops outputs at random.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

from helpers import (
    PASSWORD,
    ROOT,
    allows_connections,
    assert_clean_env,
    backup,
    databases,
    one_clean_line,
    replace_scenario,
    small_disk,
    table_fingerprints,
    uploads,
    wait_for,
    wait_for_kit_processes_to_end,
)
from pgrunbook.infra.framing import TRIES

JOURNAL = ".restore-in-progress.json"
EVERY_TRY = ",".join(str(n) for n in range(1, TRIES + 1))  # DROP_NTH: the read and each of its retries
LOST = f"応答が届きませんでした（{TRIES} 回とも"  # framing.lost_answer, the final refusal


def in_background(cli, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The CLI as a process of its own: the test acts while it runs."""
    environment = dict(os.environ, PGRUNBOOK_HOME=str(cli.home), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment, cwd=cli.home)


def staging_of(pg, database: str) -> list[str]:
    return [d for d in databases(pg) if d.startswith(database) and "_staging_" in d]


def previous_of(pg, database: str) -> list[str]:
    return [d for d in databases(pg) if d.startswith(database) and "_previous_" in d]


def sleeping(pg, application: str) -> bool:
    """The session started by run_detached holds what it took and sleeps."""
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                   f"AND application_name = '{application}'", "postgres").strip() == "1"


def end_sessions(pg, *applications: str) -> None:
    names = ", ".join(f"'{name}'" for name in applications)
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name IN ({names})",
            "postgres")


# ---- restore/replace.shrink_findings ----------------------------------------------------------

# the live side of the shrink check (the server's estimates of the live tables)
SHRINK_LIVE_SIDE = r"greatest\(c\.reltuples::bigint"


def test_a_lost_live_side_of_the_shrink_check_is_asked_again_and_still_asks_for_the_yes(
        cli, pg, target, lost_outputs):
    """Read as "no live tables", the lost answer found no shrink: the second yes for
    an archive of an emptied table was skipped and the replace went ahead."""
    pg.psql("CREATE TABLE public.ledger (id int PRIMARY KEY, amount int)", target)
    dump = backup(cli, "--env=prod")  # the ledger is empty in this archive
    pg.psql("INSERT INTO public.ledger SELECT g, g FROM generate_series(1, 5000) g; ANALYZE public.ledger",
            target)
    before = table_fingerprints(pg, target)

    once = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
               env=lost_outputs.env(match=SHRINK_LIVE_SIDE, nth="1"))
    line = one_clean_line(once)
    assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
    assert "public.ledger" in once.stderr and "5,000" in once.stderr and "--accept-shrink" in line, once.stderr

    lost_outputs.clear()
    every = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                env=lost_outputs.env(match=SHRINK_LIVE_SIDE, nth=EVERY_TRY))
    line = one_clean_line(every)
    assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
    assert LOST in line, line
    for result in (once, every):  # refused before anything was made or changed
        assert "置き換え完了" not in result.stdout + result.stderr
    assert table_fingerprints(pg, target) == before
    assert not staging_of(pg, target) and not previous_of(pg, target)
    assert not (cli.backup_dir("prod") / JOURNAL).exists()


# ---- restore/staging.check_free_space ---------------------------------------------------------

def live_state(server) -> str:
    """The live DB without a sort (a fingerprint needs temporary files: no room for them)."""
    return server.psql("SELECT (SELECT oid FROM pg_database WHERE datname = 'big'), "
                       "(SELECT count(*) FROM public.filler), (SELECT count(*) FROM public.votes), "
                       "(SELECT count(*) FROM public.members)", "big")


def test_a_lost_df_never_lets_a_restore_that_does_not_fit_fill_the_disk_of_the_live_db(
        cli, docker_engine, lost_outputs):
    """Read as "no df rows", the lost answer skipped the check: a restore too big for
    the disk that also holds the live cluster's WAL went ahead. Here the data
    directory is a small tmpfs with less free space than the live database's size."""
    with small_disk(cli, docker_engine, "lost-df") as server:
        cli.write_env("prod", DB_CONTAINER=server.name, DB_NAME="big", DB_PASSWORD=PASSWORD)
        dump = backup(cli, "--env=prod")
        size = int(server.psql("SELECT pg_database_size('big')", "postgres"))
        _, out, _ = server.exec(["df", "-Pk", "/var/lib/postgresql/data"])
        free = int(out.decode().splitlines()[1].split()[3]) * 1024
        # leave about 60 % of the live DB free: room for the staging DB's creation and
        # the server's WAL, not for a copy of the data
        server.exec(["sh", "-c", f"head -c {free - size * 6 // 10} /dev/zero "
                                 "> /var/lib/postgresql/data/filler"])
        before = live_state(server)

        once = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=1",
                   env=lost_outputs.env(match="^df ", nth="1"))
        line = one_clean_line(once)
        assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
        assert "ディスクの空きが足りません" in line, line  # asked again: the check as without the seam

        lost_outputs.clear()
        every = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", "--jobs=1",
                    env=lost_outputs.env(match="^df ", nth=EVERY_TRY))
        line = one_clean_line(every)
        assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
        assert LOST in line and "df" in line, line
        for result in (once, every):
            assert "pg_restore で" not in result.stderr, result.stderr  # no restore was started
        assert live_state(server) == before  # the live DB and the cluster are as they were
        assert not staging_of(server, "big")
        assert not (cli.backup_dir("prod") / JOURNAL).exists()


# ---- restore-recover: the swap script still running, the uploads of other runs ----------------

SWAP_FOLDERS = "pgrunbook-swap-"  # recover's listing of /tmp/pgrunbook-swap-*, then the script's state


def test_recover_with_a_lost_listing_still_waits_for_a_swap_script_that_is_running(
        cli, pg, target, app_container, lost_outputs):
    """Read as "no swap folder", the lost listing let restore-recover judge and repair
    while a swap script was still deciding the live database's state. The replace is
    killed while its script waits on locks; recover's first listing is lost."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    # the rename waits for this lock, and (after the close) the reopen for the second
    renaming = pg.run_detached(f"BEGIN; COMMENT ON DATABASE \"{target}\" IS 'busy'; SELECT pg_sleep(600); "
                               "COMMIT;", "postgres")
    wait_for(lambda: sleeping(pg, renaming), "the lock on the live DB's name")
    holders = [renaming]
    recover = None
    try:
        replace = in_background(cli, "restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                                "--jobs=1")
        wait_for(lambda: replace.poll() is not None or allows_connections(pg, target) == "f",
                 "the swap script closing the live DB", 180)
        assert replace.poll() is None, replace.communicate()
        replace.send_signal(signal.SIGKILL)  # kill -9: the script goes on by itself
        replace.communicate()
        holders.append(pg.run_detached(f'BEGIN; ALTER DATABASE "{target}" CONNECTION LIMIT 77; '
                                       "SELECT pg_sleep(600); COMMIT;", "postgres"))
        wait_for(lambda: sleeping(pg, holders[1]), "the lock on the live DB's catalog row")
        # the 1st listing lost; the 3rd exec (the first look at the script's state)
        # lost too, only to show when recover has begun to wait for it
        recover = in_background(cli, "restore-recover", "--env=prod", "--confirm=prod",
                                env=lost_outputs.env(match=SWAP_FOLDERS, nth="1,3"))
        wait_for(lambda: recover.poll() is not None or len(lost_outputs.dropped()) == 2,
                 "restore-recover to wait for the swap script", 90)
        assert recover.poll() is None, recover.communicate()  # it must not have judged already
        assert [n for n in uploads(pg) if n.startswith(SWAP_FOLDERS)]  # the script was still running
        assert allows_connections(pg, target) == "f"
        end_sessions(pg, *holders)  # the script decides now: reopened or swapped
        _, stderr = recover.communicate(timeout=180)
        assert recover.returncode == 0, stderr
    finally:
        end_sessions(pg, *holders)
        if recover is not None and recover.poll() is None:
            recover.kill()
            recover.communicate()
    wait_for_kit_processes_to_end(pg)
    assert_clean_env(cli, pg, target, app_container, (old, live), stderr)


def test_recover_whose_listing_of_swap_scripts_is_lost_every_time_repairs_nothing(
        cli, pg, target, app_container, lost_outputs):
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    killed = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env={"PGRUNBOOK_TEST_KILL_AT": "checks"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    wait_for_kit_processes_to_end(pg)
    left = staging_of(pg, target)
    assert left

    refused = cli("restore-recover", "--env=prod", "--confirm=prod",
                  env=lost_outputs.env(match=r"ls -d /tmp/pgrunbook-swap-", nth=EVERY_TRY))
    line = one_clean_line(refused)
    assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
    assert LOST in line, line
    assert staging_of(pg, target) == left  # nothing repaired on a guess
    assert (cli.backup_dir("prod") / JOURNAL).exists()

    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert_clean_env(cli, pg, target, app_container, (old, live))


# what restore-recover reads to see which uploads a process in the container is reading
PROCESSES = r"for p in /proc/"


def test_recover_with_a_lost_process_list_never_deletes_an_upload_another_run_is_reading(
        cli, pg, target, lost_outputs):
    """Read as "no process", the lost list made another run's upload (no journal here
    names it) look abandoned: restore-recover deleted it under that run's pg_restore."""
    run = uuid.uuid4().hex[:12]
    upload, pid = f"/tmp/pgrunbook-upload-prod-{run}", f"/tmp/reader-{run}.pid"
    pg.exec(["mkdir", "-p", upload])
    pg.put(b"PGDMP", f"{upload}/other.dump")
    # what a pg_restore -j of another checkout reading it looks like
    reader = pg.client.api.exec_create(pg.container.id, ["sh", "-c", f"echo $$ > {pid}; "
                                                          f"exec timeout 300 tail -f {upload}/other.dump"])["Id"]
    pg.client.api.exec_start(reader, detach=True)
    wait_for(lambda: pg.exec(["test", "-s", pid], check=False)[0] == 0, "the reader")
    try:
        once = cli("restore-recover", "--env=prod", "--confirm=prod",
                   env=lost_outputs.env(match=PROCESSES, nth="1"))
        assert once.returncode == 0, once.stderr
        assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
        assert pg.exec(["test", "-d", upload], check=False)[0] == 0, once.stderr  # left alone
        assert upload in once.stderr and "使用中" in once.stderr, once.stderr  # and named

        lost_outputs.clear()
        every = cli("restore-recover", "--env=prod", "--confirm=prod",
                    env=lost_outputs.env(match=PROCESSES, nth=EVERY_TRY))
        line = one_clean_line(every)
        assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
        assert LOST in line, line
        assert pg.exec(["test", "-d", upload], check=False)[0] == 0
    finally:
        pg.exec(["sh", "-c", f'kill "$(cat {pid})"; rm -rf {upload} {pid}'], check=False)


# ---- the swap's verdict: a stream that ends early -------------------------------------------

VERDICT = "pgrunbook:verdict:swapped\n"


def test_a_swap_whose_output_ends_just_before_its_verdict_is_a_replace_that_happened(
        cli, pg, target, app_container, lost_outputs):
    """Everything the script said arrives except its last line, the verdict: the
    server is asked, the swap it committed is reported as done (with its checks),
    never "not swapped" (and the journal of a swapped run removed as if nothing
    happened). The same for the rollback's swap."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    cut = lost_outputs.env(rate=1, match="pgrunbook:verdict", kind=f"tail:{len(VERDICT)}")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=cut)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
    assert "置き換え完了" in replaced.stderr + replaced.stdout
    assert table_fingerprints(pg, target) == old
    previous = previous_of(pg, target)
    assert len(previous) == 1 and not staging_of(pg, target)
    assert not (cli.backup_dir("prod") / JOURNAL).exists()

    rolled = cli("restore-rollback", "--env=prod", f"--previous={previous[0]}", "--confirm=prod", env=cut)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert len(lost_outputs.dropped()) == 2, lost_outputs.dropped()
    assert table_fingerprints(pg, target) == live
    assert_clean_env(cli, pg, target, app_container, (live,))


def test_a_swap_whose_stream_ends_while_the_script_still_runs_waits_for_it_and_asks_the_server(
        cli, pg, target, app_container, lost_outputs):
    """The engine ends the script's stream early: nothing of it arrives and its exit code
    is unknown (-1). The kit neither reports "result unknown" nor cleans up as if nothing
    happened: it waits for the script, then asks the server, and the replace is done."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    ended = lost_outputs.env(match="pgrunbook:verdict", nth="1", kind="unfinished")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod", env=ended)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
    assert table_fingerprints(pg, target) == old
    assert len(previous_of(pg, target)) == 1 and not staging_of(pg, target)
    assert_clean_env(cli, pg, target, app_container, (old,))


# ---- after a committed swap, and the reads that used to raise IndexError -----------------------

def test_lost_facts_after_the_swap_say_the_replace_completed_and_how_to_roll_back(
        cli, pg, target, app_container, lost_outputs):
    """The database-level check after the swap reads the facts of the previous DB:
    lost every time, the operator reads that the replace is done, where the old
    data is and the command that puts it back (no traceback, no "failed")."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env=lost_outputs.env(match=r"json_build_object.*_pgrunbook_previous_", nth=EVERY_TRY))
    line = one_clean_line(result)
    assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
    previous = previous_of(pg, target)
    assert len(previous) == 1
    assert "置き換えは完了しました" in line and LOST in line, line
    assert f"restore-rollback --env=prod --previous={previous[0]}" in line, line
    assert table_fingerprints(pg, target) == old
    assert_clean_env(cli, pg, target, app_container, (old,))  # done: nothing for restore-recover

    rollback = line.split("元に戻すなら: ", 1)[1].strip()
    rolled = cli(*rollback.split()[1:])  # the hint, as the operator runs it
    assert rolled.returncode == 0, rolled.stderr
    assert table_fingerprints(pg, target) == live


def test_lost_privileges_of_a_database_are_one_line_and_change_nothing(
        cli, pg, target, app_container, lost_outputs):
    """privileges.rights_of took the first row of an empty answer (IndexError, a traceback)."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    result = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env=lost_outputs.env(rate=1, match=r"WITH objects AS"))
    line = one_clean_line(result)
    assert LOST in line, line
    assert len(lost_outputs.dropped()) >= TRIES, lost_outputs.dropped()
    assert table_fingerprints(pg, target) == live  # refused before the swap
    assert not previous_of(pg, target)
    assert_clean_env(cli, pg, target, app_container, (live,))


SESSIONS = r"count\(\*\) FROM pg_stat_activity WHERE datname"  # recover: is a staging DB in use?


def test_recover_after_a_committed_swap_with_a_lost_session_count_is_one_line_and_keeps_the_journal(
        cli, pg, target, app_container, lost_outputs):
    """A replace killed after its swap, and a staging DB no journal names (another
    run's): restore-recover asks whether it is in use. recover took the first row of
    an empty answer (IndexError, a traceback); now the refusal is one line, the
    replace is said to be done with the way back, and nothing is dropped."""
    dump, old, live = replace_scenario(cli, pg, target, app_container)
    killed = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                 env={"PGRUNBOOK_TEST_KILL_AT": "after-swap"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    previous = previous_of(pg, target)
    assert len(previous) == 1 and table_fingerprints(pg, target) == old
    other = f"{target}_pgrunbook_staging_20260101000000"
    pg.psql(f'CREATE DATABASE "{other}"', "postgres")
    pg.psql(f"COMMENT ON DATABASE \"{other}\" IS "
            "'pgrunbook:staging:prod:2026-12-02T02:00:00+09:00:ops:other.dump'", "postgres")

    refused = cli("restore-recover", "--env=prod", "--confirm=prod",
                  env=lost_outputs.env(match=SESSIONS, nth=EVERY_TRY))
    line = one_clean_line(refused)
    assert len(lost_outputs.dropped()) == TRIES, lost_outputs.dropped()
    assert LOST in line, line
    assert "置き換えは完了しています" in line and f"--previous={previous[0]}" in line, line
    assert other in databases(pg)
    assert (cli.backup_dir("prod") / JOURNAL).exists()
    journal = json.loads((cli.backup_dir("prod") / JOURNAL).read_text())
    assert journal["stage"] == "after-swap"

    repaired = cli("restore-recover", "--env=prod", "--confirm=prod")
    assert repaired.returncode == 0, repaired.stderr
    assert_clean_env(cli, pg, target, app_container, (old,))


SERVER_LOCK_SESSION = r"-d postgres -A -t$"  # the one psql session that holds the server's lock


def test_a_lost_answer_of_the_server_lock_is_asked_of_the_server_and_the_replace_goes_on(
        cli, pg, target, lost_outputs):
    """The lock session's answer (pgrunbook-lock=t) lost: the kit neither waits forever for
    it nor takes the lock as refused; it asks the server what its session got."""
    dump = backup(cli, "--env=prod")
    replaced = cli("restore-replace", "--env=prod", f"--file={dump}", "--confirm=prod",
                   env=lost_outputs.env(match=SERVER_LOCK_SESSION, nth="1"), timeout=300)
    assert len(lost_outputs.dropped()) == 1, lost_outputs.dropped()
    assert replaced.returncode == 0, replaced.stderr
    assert not (cli.backup_dir("prod") / ".restore-in-progress.json").exists()
