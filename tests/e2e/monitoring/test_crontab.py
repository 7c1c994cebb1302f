"""The cron schedule: one template, the example file, and a real install with Debian's crontab."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import PITR_SCHEDULE, ROOT, Cli, cron_jobs


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



def test_printed_schedule_has_the_pitr_jobs_when_the_env_has_a_stanza(tmp_path):
    cli = Cli(tmp_path)
    cli.write_env("prod", DB_CONTAINER="knot-db")
    assert "pitr-" not in cli("crontab", "--env=prod").stdout
    cli.write_env("prod", DB_CONTAINER="knot-db", PITR_STANZA="knot")
    printed = cli("crontab", "--env=prod")
    assert printed.returncode == 0, printed.stderr
    pitr_jobs = [job for job in cron_jobs(printed.stdout.splitlines()) if "pitr-" in job]
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
