"""Point-in-time recovery with pgBackRest. Uses only core and infra.

* ``pgbackrest``: pgBackRest inside the container, the stanza, the hand commands, shared helpers
* ``setup``: ``pitr-setup``
* ``backup``: ``pitr-backup``
* ``status``: ``pitr-status``
* ``scratch``: ``pitr-restore-scratch`` and ``pitr-scratch-drop``
* ``drill``: ``pitr-drill``
* ``observation``: what pitr-status saw, kept for the metrics
"""
