"""Point-in-time recovery with pgBackRest. Uses only core and infra.

* ``pgbackrest``: pgBackRest inside the container, the stanza, the hand commands
"""
