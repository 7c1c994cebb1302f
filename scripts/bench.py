#!/usr/bin/env python3
"""Benchmark the kit against the runbook's hand procedure (see pgrunbook.bench).

    python scripts/bench.py --size-mb 900 --rounds 3
    python scripts/bench.py --size-mb 5 --rounds 1 --output /tmp/bench   # smoke run
"""

from pgrunbook.lab.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
