"""The PITR live server for restore-partial --as-of (fixtures in helpers.pitr; a module
that does not ask for them starts none)."""

from helpers.pitr import backed_up, engine, home, live, pitr_image  # noqa: F401
