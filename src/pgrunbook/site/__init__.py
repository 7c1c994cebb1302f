"""The runbook site's generated parts. May read every area; no area imports it.

* ``docs``: markers expanded at build time (tasks, settings, hand commands, files)
* ``original``: the team's runbook, its sections and code blocks
* ``modules``: the README's table of areas and modules, from the packages' own lists
"""
