"""Practice and measurement. Uses only core and infra.

* ``sandbox``: ``sandbox-up`` / ``sandbox-down``
* ``bench``: ``bench``, the kit against the hand procedure
* ``partial_bench``: ``bench --partial``, 1 % of a table put back against a full replace
"""
