"""pgrunbook: the knot PostgreSQL-in-Docker backup and restore runbook as code."""

from pgrunbook.core.errors import RunbookError

__all__ = ["RunbookError"]
__version__ = "0.1.0"
