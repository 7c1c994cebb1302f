"""The backups on disk: names, sidecars, what the folder holds, and which to take.

Reads the host's files and the work log only; never the database.

* ``catalog``: file names and sidecars, the backups of a folder
* ``inventory``: each backup with its checksum state, verify, pin and drift verdict
* ``drift``: the content-drift assessment (pure compare, baseline, identity)
* ``pins``: the pure half of pinning (keep dates, labels)
* ``select``: "which backup?" for every task
"""
