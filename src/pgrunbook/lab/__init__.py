"""Practice and measurement. Uses only core and infra.

* ``sandbox``: ``sandbox-up`` / ``sandbox-down``
* ``bench``: ``bench``, the kit against the hand procedure
"""
