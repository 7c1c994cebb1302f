"""pgrunbook: the knot DB backup/restore runbook as invoke tasks.

Thin by design: each task parses its arguments, calls the pgrunbook package
and prints the result. The tasks live by area in ``tasks_by_area/`` (lowest
area first); this file puts them into the one flat namespace whose names are
the runbook's steps, the cron lines and the doc anchors. Run ``invoke --list``
for the tasks, ``invoke --help TASK`` for one task's options.
"""

from __future__ import annotations

from invoke import Collection
from tasks_by_area import backup, lab, monitoring, offsite, pitr, restore, site
from tasks_by_area.common import ROOT

from pgrunbook.cli import install_usage_errors

install_usage_errors(ROOT)  # invoke's own parse errors: one Japanese line, exit 2
namespace = Collection(*backup.TASKS, *restore.TASKS, *offsite.TASKS, *pitr.TASKS, *monitoring.TASKS,
                       *site.TASKS, *lab.TASKS)
