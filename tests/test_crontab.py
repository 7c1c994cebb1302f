"""The cron schedule: one template, the example file, and a real install with Debian's crontab."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, Cli
from pgrunbook.monitoring import schedule
from pgrunbook.monitoring.schedule import Target


def test_crontab_example_is_generated_from_the_template():
    text = (ROOT / "crontab.example").read_text(encoding="utf-8")
    assert text == schedule.example_text(), "regenerate: invoke crontab --example > crontab.example"


def test_the_schedule_is_cron_safe():
    lines = schedule.render(schedule.example_target())
    jobs = [line for line in lines if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 4
    for job in jobs:
        fields = job.split(None, 5)
        assert all(re.fullmatch(r"[0-9*,/-]+", f) for f in fields[:5]), job
        assert not re.search(r"(?<!\\)%", job), f"unescaped % in {job}"
        assert fields[5].startswith("cd /path/to/pgrunbook && ")
        assert ">> backups/prod/cron.log 2>&1 || tail -n" in job
    assert {"SHELL=/bin/bash", "MAILTO=root"} <= set(lines) and any(x.startswith("PATH=") for x in lines)
    text = "\n".join(lines)
    for command in ("backup --env=prod && .venv/bin/invoke verify --env=prod",
                    "verify --env=prod --restore-test", "prune --env=prod", "status --env=prod"):
        assert command in text
    assert lines[0] == "# BEGIN pgrunbook prod" and lines[-1] == "# END pgrunbook prod"


def test_merge_keeps_other_lines_and_replaces_only_our_block():
    block = schedule.render(schedule.example_target())
    other = ["MAILTO=ops", "15 3 * * * echo keep-me"]
    once = schedule.merged(other, block, "prod")
    assert once[:2] == other and once[-len(block):] == block
    assert schedule.merged(once, block, "prod") == once
    changed = [line.replace("0 5 * * *", "0 6 * * *") for line in block]
    twice = schedule.merged(once + ["# after"], changed, "prod")
    assert twice.count("# BEGIN pgrunbook prod") == 1 and "# after" in twice and twice[-1] == block[-1]
    dev = schedule.merged(twice, [line.replace("prod", "dev") for line in block], "dev")
    assert dev.count("# BEGIN pgrunbook prod") == 1 and dev.count("# BEGIN pgrunbook dev") == 1


def test_printed_schedule_uses_this_checkout_and_this_python(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    result = cli("crontab", "--env=prod")
    assert result.returncode == 0, result.stderr
    invoke = Path(sys.executable).parent / "invoke"
    assert f"cd {ROOT} && " in result.stdout
    assert f"{invoke if invoke.exists() else sys.executable} " in result.stdout
    assert f"PGRUNBOOK_HOME={tmp_path}" in result.stdout
    assert f">> {tmp_path}/backups/prod/cron.log" in result.stdout


needs_root_cron = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("crontab") or not shutil.which("useradd"),
    reason="needs root, Debian's cron (crontab) and useradd",
)


@pytest.fixture
def cron_user():
    name = f"pgrb{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    yield name
    subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
    subprocess.run(["userdel", name], check=True)


def crontab_of(user: str) -> str:
    return subprocess.run(["crontab", "-u", user, "-l"], capture_output=True, text=True, check=True).stdout


@needs_root_cron
def test_install_into_a_real_crontab(tmp_path, cron_user):
    # cron's own syntax check is real: a bad file is refused
    bad = tmp_path / "bad.cron"
    bad.write_text("61 * * * * echo never\n")
    assert subprocess.run(["crontab", "-u", cron_user, str(bad)], capture_output=True).returncode != 0
    subprocess.run(["crontab", "-u", cron_user, "-"], input="15 3 * * * echo keep-me\n", text=True, check=True)

    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    first = cli("crontab", "--env=prod", "--install", f"--user={cron_user}")
    assert first.returncode == 0, first.stderr
    assert "登録しました" in first.stderr
    installed = crontab_of(cron_user)
    printed = cli("crontab", "--env=prod").stdout
    assert "15 3 * * * echo keep-me" in installed
    assert printed.strip() in installed and installed.count("# BEGIN pgrunbook prod") == 1
    assert (tmp_path / "backups" / "prod").is_dir()  # the log's folder exists for cron
    # the installed text is valid for cron: feeding it back is accepted
    assert subprocess.run(["crontab", "-u", cron_user, "-"], input=installed, text=True).returncode == 0

    second = cli("crontab", "--env=prod", "--install", f"--user={cron_user}")
    assert second.returncode == 0 and "変更なし" in second.stderr
    assert crontab_of(cron_user) == installed

    other_mail = cli("crontab", "--env=prod", "--install", f"--user={cron_user}", "--mailto=ops")
    assert other_mail.returncode == 0
    updated = crontab_of(cron_user)
    assert "MAILTO=ops" in updated and "MAILTO=root" not in updated
    assert updated.count("# BEGIN pgrunbook prod") == 1 and "echo keep-me" in updated

    removed = cli("crontab", "--env=prod", "--remove", f"--user={cron_user}")
    assert removed.returncode == 0
    assert crontab_of(cron_user).strip() == "15 3 * * * echo keep-me"


@needs_root_cron
def test_a_broken_block_is_not_touched(tmp_path, cron_user):
    subprocess.run(["crontab", "-u", cron_user, "-"], input="# BEGIN pgrunbook prod\n0 1 * * * true\n",
                   text=True, check=True)
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    result = cli("crontab", "--env=prod", "--install", f"--user={cron_user}")
    assert result.returncode == 1 and "壊れています" in result.stderr
    assert crontab_of(cron_user) == "# BEGIN pgrunbook prod\n0 1 * * * true\n"


def test_offsite_push_follows_the_verified_backup_when_a_bucket_is_set():
    from pgrunbook.monitoring.schedule import Target, render

    plain = "\n".join(render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="l")))
    offsite = "\n".join(render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="l",
                                      offsite=True)))
    assert "offsite-push" not in plain
    assert "inv verify --env=prod && inv offsite-push --env=prod;" in offsite


def test_with_prestage_the_restore_test_follows_every_backup_instead_of_weekly():
    from pgrunbook.monitoring.schedule import Target, render

    plain = render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="l"))
    prestaged = render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="l", offsite=True,
                              prestage=True))
    assert [line for line in plain if line.startswith("0 4 * * 0 ")]
    assert not [line for line in prestaged if "0 4 * * 0" in line]
    [daily] = [line for line in prestaged if line.startswith("0 2 * * * ")]
    # the copy goes offsite first; a failed restore test still fails the job (mail, ping)
    assert ("inv backup --env=prod && inv verify --env=prod && inv offsite-push --env=prod && "
            "inv verify --env=prod --restore-test;") in daily


def test_every_job_creates_its_log_folder_before_appending_to_it():
    # a fresh checkout has no backups/<env>/: `>> backups/prod/cron.log` alone fails every job
    for target in (schedule.example_target(),
                   Target(env="prod", checkout="/srv/kit", invoke="inv", log="/srv/b p/prod/cron.log")):
        jobs = [line for line in schedule.render(target) if line[:1].isdigit() or line.startswith("*")]
        folder = shlex.quote(os.path.dirname(target.log))
        for job in jobs:
            command = job.split(None, 5)[5]
            assert command.index(f"mkdir -p -m 0700 {folder} && ") < command.index(">> "), job


def test_ping_wraps_only_the_daily_backup_and_passes_its_exit_code_on():
    lines = schedule.render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="l", ping=True))
    pinged = [line for line in lines if "inv ping" in line]
    assert len(pinged) == 1 and pinged[0].startswith("0 2 * * * ")
    assert ("since=$(date +\\%s); inv ping --env=prod --start; inv backup --env=prod && inv verify "
            "--env=prod; inv ping --env=prod --exit-code=$? --since=$since; }") in pinged[0]


def test_docker_host_and_an_empty_mailto_are_written_so_cron_accepts_them(tmp_path, monkeypatch):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    printed = cli("crontab", "--env=prod", "--mailto=", env={"DOCKER_HOST": "unix:///run/other.sock"})
    assert printed.returncode == 0, printed.stderr
    assert "DOCKER_HOST=unix:///run/other.sock" in printed.stdout.splitlines()
    assert 'MAILTO=""' in printed.stdout.splitlines()
    if shutil.which("crontab"):
        (tmp_path / "block.cron").write_text(printed.stdout)
        checked = subprocess.run(["crontab", "-n", str(tmp_path / "block.cron")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr  # Debian's own syntax check, nothing installed
    bad = cli("crontab", "--env=prod", env={"DOCKER_HOST": "tcp://h:1 %x"})
    assert bad.returncode == 2 and "DOCKER_HOST" in bad.stderr


# ---- point-in-time recovery (PITR_STANZA) -----------------------------------------------

PITR_SCHEDULE = {  # pgBackRest's user guide: full weekly, differential on the other days
    "30 0 * * 0": "pitr-backup --env=prod --type=full",
    "30 0 * * 1-6": "pitr-backup --env=prod --type=diff",
    "*/5 * * * *": "pitr-status --env=prod --backup-max-age=26h",
    "0 3 1 * *": "pitr-drill --env=prod",
}


def jobs_of(lines: list[str]) -> list[str]:
    return [line for line in lines if line[:1].isdigit() or line.startswith("*")]


def test_pitr_jobs_come_only_with_a_stanza_and_in_the_same_style():
    plain = schedule.render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="/srv/b/prod/cron.log"))
    assert "pitr-" not in "\n".join(plain)
    lines = schedule.render(Target(env="prod", checkout="/srv/kit", invoke="inv",
                                   log="/srv/b/prod/cron.log", pitr=True))
    assert lines[-1] == "# END pgrunbook prod" and lines[:len(plain) - 1] == plain[:-1]
    pitr_jobs = [job for job in jobs_of(lines) if "pitr-" in job]
    assert len(pitr_jobs) == len(PITR_SCHEDULE) and len(jobs_of(lines)) == 4 + len(PITR_SCHEDULE)
    for job, (when, command) in zip(pitr_jobs, PITR_SCHEDULE.items(), strict=True):
        label = command.split()[0]
        assert job == (f"{when} cd /srv/kit && mkdir -p -m 0700 /srv/b/prod && "
                       f"{{ echo \"== $(date '+\\%F \\%T') {label}\"; inv {command}; }} "
                       ">> /srv/b/prod/cron.log 2>&1 || tail -n 20 /srv/b/prod/cron.log"), job
    assert sum(1 for line in lines if "inv ping" in line or "offsite-push" in line) == 0


def test_the_example_carries_the_pitr_jobs_commented_out():
    example = (ROOT / "crontab.example").read_text(encoding="utf-8").splitlines()
    commented = [line[2:] for line in example if line.startswith("# ") and jobs_of([line[2:]])
                 and " cd " in line]
    wanted = [job for job in jobs_of(schedule.render(
        Target(env="prod", checkout=schedule.EXAMPLE_CHECKOUT, invoke=schedule.EXAMPLE_INVOKE,
               log="backups/prod/cron.log", pitr=True))) if "pitr-" in job]
    assert commented == wanted  # removing "# " gives exactly what invoke crontab installs
    assert not any("pitr-" in job for job in jobs_of(example))  # nothing runs without a stanza
    assert any("PITR_STANZA を設定したら" in line for line in example)


def test_printed_schedule_has_the_pitr_jobs_when_the_env_has_a_stanza(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    assert "pitr-" not in cli("crontab", "--env=prod").stdout
    cli.write_env("prod", DB_CONTAINER="knot-db", PITR_STANZA="knot")
    printed = cli("crontab", "--env=prod")
    assert printed.returncode == 0, printed.stderr
    pitr_jobs = [job for job in jobs_of(printed.stdout.splitlines()) if "pitr-" in job]
    assert [job.split(" cd ")[0] for job in pitr_jobs] == list(PITR_SCHEDULE)
    for job, command in zip(pitr_jobs, PITR_SCHEDULE.values(), strict=True):
        assert f" {command}; }} >> {tmp_path}/backups/prod/cron.log 2>&1 || tail -n 20 " in job, job
        assert f"mkdir -p -m 0700 {tmp_path}/backups/prod && " in job
    if shutil.which("crontab"):
        (tmp_path / "block.cron").write_text(printed.stdout)
        checked = subprocess.run(["crontab", "-n", str(tmp_path / "block.cron")],
                                 capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr  # Debian's own syntax check


@needs_root_cron
def test_install_with_pitr_into_a_real_crontab(tmp_path, cron_user):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    assert cli("crontab", "--env=prod", "--install", f"--user={cron_user}").returncode == 0
    assert "pitr-" not in crontab_of(cron_user)
    cli.write_env("prod", DB_CONTAINER="knot-db", PITR_STANZA="knot")
    again = cli("crontab", "--env=prod", "--install", f"--user={cron_user}")
    assert again.returncode == 0 and "登録しました" in again.stderr
    installed = crontab_of(cron_user)
    assert installed.count("# BEGIN pgrunbook prod") == 1
    assert sum(1 for line in installed.splitlines() if " pitr-" in line and line[:1] in "0123*") == 4
