"""The invoke tasks, one module per area of the package; ``tasks.py`` puts them all
into one flat namespace (the task names are the runbook's steps, the cron lines
and the doc anchors).

Each module ends with ``TASKS``, its tasks in the runbook's order. A task
parses its arguments, calls the package through a handle of ``common.lazy``
and prints the result; logic lives in ``src/pgrunbook``.
"""
