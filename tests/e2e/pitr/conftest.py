"""The PITR tests' engine and the example set-up they share (one live server per module):
the fixtures live in helpers.pitr (tests/e2e/restore uses them too)."""

from helpers.pitr import backed_up, engine, home, live, pitr_image  # noqa: F401
