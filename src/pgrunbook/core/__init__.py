"""The lowest layer: what every task needs, with no Docker and no database.

* ``errors``: the one exception type for failures an operator can cause or fix
* ``settings``: ``.env`` + ``.env.<env>`` -> one validated, frozen Settings
* ``console``: operator output (Japanese), progress on a terminal, redaction
* ``files``: private folders, atomic 0600 writes, fsync, chunked reads, hashing while sending
* ``durations``: '26h' in, '2日3時間' out
* ``worklog``: the hash-chained work log (JSON Lines) and ``recorded``
* ``journal``: a replace or rollback in progress (what an interrupted run left)
* ``safety``: one writer per env's database (flock)
* ``faults``: the tests' kill points (no-op unless a test sets them)
"""
