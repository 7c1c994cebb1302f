"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations


def test_cpuset_size():
    from pgrunbook.infra.container import cpuset_size

    assert cpuset_size("0") == 1
    assert cpuset_size("0-3") == 4
    assert cpuset_size("0-1,4,6-7") == 5
