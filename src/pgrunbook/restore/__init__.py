"""Restores that are safer than the hand procedure.

The runbook's procedure A drops the live database first and restores after:
a bad archive then leaves nothing. Here every restore goes into a database of
its own first (scratch, staging or verify), is checked, and only a replace
then swaps names in one transaction, keeping the previous database.

Databases the kit creates carry a comment ``pgrunbook:<role>:...``; only
those can be listed, replaced or dropped by the kit. The live database is
never dropped by any code path. A partial restore (``restore-partial``) writes
rows of the live database instead, in one transaction, with an undo file.

* ``source``: the file to restore and what it says of itself
* ``guards``: versions, env rules, confirmation, preflight
* ``databases``: kit-made databases, their names and marks
* ``staging``: the restore itself (pg_restore / psql into a kit database)
* ``sqlfilter``: ``--no-owner`` / ``--no-acl`` for a .sql stream
* ``checks``: after a restore (row counts, Prisma)
* ``privileges``: owners and privileges compared and copied
* ``appcheck``: DATABASE_URL, the host check, masking
* ``apps``: the app containers stopped and started around a swap
* ``swap``: the swap, one script inside the DB container
* ``prestage``: RESTORE_PRESTAGE, the newest backup kept restored
* ``scratch``: ``restore-scratch``
* ``replace``: ``restore-replace``
* ``kitops``: ``restore-rollback``, ``restore-list``, ``restore-drop``
* ``recover``: ``restore-recover``, what an interrupted run left
* ``drill``: ``verify --restore-test`` and its drill record
* ``tables``: the catalog of tables for a partial restore (keys, foreign keys, triggers, sequences)
* ``rowdiff``: rows of a table, backup against live, by key (two sorted streams merged)
* ``rowsource``: where rows come from (a kit database with only some tables, or a PITR copy)
* ``putback``: the writes of a partial restore and its undo (locks, triggers, the undo file)
* ``partial``: ``restore-partial``: rows put back with the app running
* ``undo``: ``restore-partial-undo``
* ``diff``: ``restore-diff``, and the whole-database summary of the replace's banner
"""

from pgrunbook.restore.databases import KitDatabase, kit_name, scratch_name
from pgrunbook.restore.drill import restore_test
from pgrunbook.restore.kitops import drop_database, list_kit_databases, restore_rollback
from pgrunbook.restore.prestage import by_file as prestaged_by_file
from pgrunbook.restore.recover import restore_recover
from pgrunbook.restore.replace import ReplaceRequest, ReplaceResult, restore_replace
from pgrunbook.restore.scratch import ScratchResult, restore_scratch
from pgrunbook.restore.staging import OWNERSHIP, RestoreOptions

__all__ = [
    "OWNERSHIP", "KitDatabase", "ReplaceRequest", "ReplaceResult", "RestoreOptions", "ScratchResult",
    "drop_database",
    "kit_name", "list_kit_databases", "prestaged_by_file", "restore_recover", "restore_replace",
    "restore_rollback", "restore_scratch", "restore_test",
    "scratch_name",
]
