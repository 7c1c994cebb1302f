"""The cron schedule: one template, the example file, and a real install with Debian's crontab."""

from __future__ import annotations

import os
import re
import shlex

from helpers import PITR_SCHEDULE, ROOT, cron_jobs
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



def test_pitr_jobs_come_only_with_a_stanza_and_in_the_same_style():
    plain = schedule.render(Target(env="prod", checkout="/srv/kit", invoke="inv", log="/srv/b/prod/cron.log"))
    assert "pitr-" not in "\n".join(plain)
    lines = schedule.render(Target(env="prod", checkout="/srv/kit", invoke="inv",
                                   log="/srv/b/prod/cron.log", pitr=True))
    assert lines[-1] == "# END pgrunbook prod" and lines[:len(plain) - 1] == plain[:-1]
    pitr_jobs = [job for job in cron_jobs(lines) if "pitr-" in job]
    assert len(pitr_jobs) == len(PITR_SCHEDULE) and len(cron_jobs(lines)) == 4 + len(PITR_SCHEDULE)
    for job, (when, command) in zip(pitr_jobs, PITR_SCHEDULE.items(), strict=True):
        label = command.split()[0]
        assert job == (f"{when} cd /srv/kit && mkdir -p -m 0700 /srv/b/prod && "
                       f"{{ echo \"== $(date '+\\%F \\%T') {label}\"; inv {command}; }} "
                       ">> /srv/b/prod/cron.log 2>&1 || tail -n 20 /srv/b/prod/cron.log"), job
    assert sum(1 for line in lines if "inv ping" in line or "offsite-push" in line) == 0


def test_the_example_carries_the_pitr_jobs_commented_out():
    example = (ROOT / "crontab.example").read_text(encoding="utf-8").splitlines()
    commented = [line[2:] for line in example if line.startswith("# ") and cron_jobs([line[2:]])
                 and " cd " in line]
    wanted = [job for job in cron_jobs(schedule.render(
        Target(env="prod", checkout=schedule.EXAMPLE_CHECKOUT, invoke=schedule.EXAMPLE_INVOKE,
               log="backups/prod/cron.log", pitr=True))) if "pitr-" in job]
    assert commented == wanted  # removing "# " gives exactly what invoke crontab installs
    assert not any("pitr-" in job for job in cron_jobs(example))  # nothing runs without a stanza
    assert any("PITR_STANZA を設定したら" in line for line in example)
