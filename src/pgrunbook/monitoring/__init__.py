"""Knowing the state. May read every area; no area imports it.

* ``check``: ``check``, the pre-flight screen
* ``status``: ``status``, freshness for monitoring
* ``metrics``: Prometheus textfile (extra ``metrics``)
* ``pitr_metrics``: the PITR gauges
* ``ping``: ``ping``, dead-man's-switch pings
* ``notify``: notifications after each work-log line
* ``report``: ``report``, the HTML history
* ``schedule``: ``crontab`` and crontab.example
* ``evidence_facts``: what the auditor's file says (days, drills, changes, pins, locks, chain)
* ``evidence_page``: the evidence file as printable HTML
* ``evidence``: ``evidence`` / ``evidence-verify``, the file sealed in the work log
"""
