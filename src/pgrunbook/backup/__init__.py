"""Making and keeping backups.

* ``dump``: ``backup`` / ``backup-sql``: pg_dump streamed, checked, renamed
* ``globals``: ``backup-globals`` (pg_dumpall --globals-only)
* ``verify``: ``verify``: size, format, sha256, manifest, TOC, a full read
* ``prune``: ``prune``: the retention policy (pure) and the deletion
* ``marks``: ``pin`` / ``unpin`` / ``accept-drift``: the operator's marks on a backup's manifest
"""
