"""What every area's tasks share: the checkout, the --env help, and the lazy handles.

Every package module a task calls is reached through ``lazy.<area>_<module>``,
imported on first use, so that ``invoke backup`` does not pay for the imports
of offsite, the docs or restore.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pgrunbook.cli import LazyModule

ROOT = Path(__file__).resolve().parents[1]
ENV_HELP = "対象環境（必須）: .env.<env> の <env>。例: prod, dev"

MODULES = (
    "core.durations", "core.worklog",
    "store.drift", "store.inventory",
    "backup.dump", "backup.globals", "backup.marks", "backup.prune", "backup.verify",
    "restore", "restore.drill", "restore.diff", "restore.partial", "restore.rowsource", "restore.undo",
    "offsite.encryption", "offsite.keydrill", "offsite.lock", "offsite.prune", "offsite.pull", "offsite.push",
    "offsite.remote",
    "pitr.backup", "pitr.drill", "pitr.observation", "pitr.scratch", "pitr.setup", "pitr.status",
    "monitoring.check", "monitoring.evidence", "monitoring.metrics", "monitoring.ping", "monitoring.report",
    "monitoring.schedule", "monitoring.status",
    "site.docs",
    "lab.bench", "lab.partial_bench", "lab.sandbox",
)
lazy = SimpleNamespace(**{name.replace(".", "_"): LazyModule(name) for name in MODULES})
